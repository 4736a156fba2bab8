#!/usr/bin/env bash
# The equal-compute benchmark of BENCHMARKS.md for one look: every trained method gets the same training time,
# BUDGET seconds at its paced speed on one thread (`synthvtg_benchmark.py pace --threads 1` measures the paces
# first, on an idle machine), picks its learning rate on val from its own grid of two (seed 0), and runs seeds 1
# and 2 at that rate. `run` skips runs already in the results file, so an interrupted benchmark resumes.
#
#     bash benchmarks/run_equal_compute.sh plain 90      # about an hour on one core
#     bash benchmarks/run_equal_compute.sh cluttered 90  # the two looks can run side by side, one core each
set -euo pipefail
look=${1:?usage: run_equal_compute.sh plain|cluttered BUDGET_SECONDS}
budget=${2:?usage: run_equal_compute.sh plain|cluttered BUDGET_SECONDS}
here=$(cd "$(dirname "$0")" && pwd)
python "$here/synthvtg_benchmark.py" run --threads 1 --budget-seconds "$budget" --domain "$look" \
  --methods full-ft head-only-cached vtg-top-cached head-only lora vtg-deep vtg-top2-cached vtg-top head-layers-cached \
  head-layers2-cached
