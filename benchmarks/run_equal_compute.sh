#!/usr/bin/env bash
# The equal-compute benchmark of BENCHMARKS.md for one look: every method gets the same training time (BUDGET
# seconds at its paced speed on one thread; `synthvtg_benchmark.py pace` measures the paces first, on an idle
# machine). Methods that had a learning rate chosen on val at a step budget keep it; the new (cached) variants pick
# theirs from a grid of two on val, and the uncached twin of the best cached one uses that one's rate.
#
#     bash benchmarks/run_equal_compute.sh plain 90      # about 50 minutes on one core
#     bash benchmarks/run_equal_compute.sh cluttered 90  # the two looks can run side by side, one core each
set -euo pipefail
look=${1:?usage: run_equal_compute.sh plain|cluttered BUDGET_SECONDS}
budget=${2:?usage: run_equal_compute.sh plain|cluttered BUDGET_SECONDS}
here=$(cd "$(dirname "$0")" && pwd)
run=(python "$here/synthvtg_benchmark.py" run --threads 1 --budget-seconds "$budget" --domain "$look")
# The rates each method chose on val in BENCHMARKS.md's step-budget tables of this look (plain: 400 steps,
# cluttered: 1,200 steps).
if [ "$look" = plain ]; then
  chosen=(full-ft=3e-5 head-only=0.003 lora=0.003 vtg-deep=0.003)
else
  chosen=(full-ft=3e-4 head-only=0.003 lora=3e-4 vtg-deep=0.003)
fi
"${run[@]}" --methods full-ft head-only-cached vtg-top-cached head-only lora vtg-deep vtg-top2-cached \
  --method-lr "${chosen[@]}"
best=$(python - "$here" "$look" "$budget" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from synthvtg_benchmark import RESULTS, Settings, _best_lr, _load_runs
settings = Settings(domain=sys.argv[2], budget_seconds=float(sys.argv[3]))
print(_best_lr("vtg-top-cached", settings, _load_runs(RESULTS / "runs.jsonl")))
PY
)
"${run[@]}" --methods vtg-top --method-lr "vtg-top=$best"
