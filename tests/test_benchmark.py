"""The benchmark script of BENCHMARKS.md at tiny settings: every method builds, trains, is evaluated and reported."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "synthvtg_benchmark.py"
TINY_SETTINGS = dict(steps=2, batch_size=2, train_videos=3, val_videos=2, test_videos=2, frames=8)
TINY = [arg for key, value in TINY_SETTINGS.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("synthvtg_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthvtg_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _main(bench, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    bench.main()


def test_every_method_runs_resumes_and_reports(bench, tmp_path, monkeypatch, capsys):
    results = tmp_path / "runs.jsonl"
    # The caches of the cached methods go under tmp_path: the default (benchmarks/.cache) would keep tiny caches in
    # the checkout, which the next code change to the cache format turns into mismatches.
    cache_root = ["--cache-root", str(tmp_path / "caches")]
    _main(bench, monkeypatch, "run", "--seeds", "2", "--results", str(results), *cache_root, *TINY)
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    trained = [m for m in bench.METHODS.values() if m.build is not None]
    # the grid at seed 0, then one more seed at the chosen rate; zero-shot methods once
    assert len(runs) == sum(len(m.learning_rates) + 1 for m in trained) + len(bench.METHODS) - len(trained)
    by_method = {r["method"]: r for r in runs}
    base = by_method["full-ft"]["base_parameters"]
    assert by_method["full-ft"]["trainable"] > base  # the whole backbone plus the head
    assert 0 < by_method["head-only"]["trainable"] < by_method["vtg-deep"]["trainable"] < base
    assert by_method["lora"]["trainable"] > by_method["head-only"]["trainable"]
    assert by_method["zero-shot"]["trainable"] == 0 and by_method["zero-shot"]["test"]["num_queries"] == 4
    # resuming runs nothing twice
    _main(bench, monkeypatch, "run", "--seeds", "2", "--results", str(results), *cache_root, *TINY)
    assert len(results.read_text().splitlines()) == len(runs)
    capsys.readouterr()
    _main(bench, monkeypatch, "report", "--results", str(results), "--costs", str(tmp_path / "none.json"), *TINY)
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(bench.METHODS)  # one row per method below the header
    # other settings are never mixed into a report
    with pytest.raises(ValueError, match="seed-0 runs"):
        bench._best_lr("lora", bench.Settings(steps=3), runs)


def test_costs_of_one_method(bench, monkeypatch, capsys):
    _main(bench, monkeypatch, "costs", "--one-method", "vtg-deep", "--device", "cpu", *TINY)
    cost = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cost["train_step_seconds"] > 0 and cost["inference_seconds"] > 0 and cost["base_inference_seconds"] > 0
    assert cost["peak_train_memory_bytes"] >= 0


def test_measuring_some_methods_again_keeps_the_others(bench, monkeypatch, tmp_path):
    """`costs --methods X` replaces X's entry and keeps every other method's, when the machine and torch match."""
    import subprocess

    def fake_run(command, **kwargs):  # the per-method subprocess, answered without measuring
        name = command[command.index("--one-method") + 1]
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps({"method": name, "train_step_seconds": 2.0}))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = tmp_path / "costs.json"
    _main(bench, monkeypatch, "costs", "--methods", "head-only", "full-ft", "--device", "cpu", "--costs", str(out))
    first = json.loads(out.read_text())
    first["methods"][0]["train_step_seconds"] = 1.0  # head-only's old measurement
    out.write_text(json.dumps(first))
    _main(bench, monkeypatch, "costs", "--methods", "full-ft", "--device", "cpu", "--costs", str(out))
    methods = {entry["method"]: entry["train_step_seconds"] for entry in json.loads(out.read_text())["methods"]}
    assert methods == {"head-only": 1.0, "full-ft": 2.0}
    # another device's file is not comparable: replaced, not merged
    _main(bench, monkeypatch, "costs", "--methods", "lora", "--device", "cuda", "--costs", str(out))
    assert [entry["method"] for entry in json.loads(out.read_text())["methods"]] == ["lora"]


def test_runs_of_another_domain_are_kept_apart(bench, tmp_path, monkeypatch):
    """A run stored before `Settings.domain` existed counts as "plain"; "cluttered" runs neither resume nor pick from
    it."""
    results = tmp_path / "runs.jsonl"
    _main(bench, monkeypatch, "run", "--methods", "zero-shot", "--results", str(results), *TINY)
    stored = json.loads(results.read_text())
    assert stored["settings"]["domain"] == "plain"
    del stored["settings"]["domain"]  # as written before the field existed
    results.write_text(json.dumps(stored) + "\n")
    _main(bench, monkeypatch, "run", "--methods", "zero-shot", "--results", str(results), *TINY)
    assert len(results.read_text().splitlines()) == 1  # the old run is this plain run: nothing to do
    _main(bench, monkeypatch, "run", "--methods", "zero-shot", "--results", str(results), "--domain", "cluttered", *TINY)
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["settings"].get("domain") for r in runs] == [None, "cluttered"]
    # the same queries in both domains, seen through different pixels
    assert runs[0]["test"]["num_queries"] == runs[1]["test"]["num_queries"]
    plain, cluttered = bench.Settings(**TINY_SETTINGS), bench.Settings(**TINY_SETTINGS, domain="cluttered")
    assert bench._same_settings(runs[0]["settings"], plain) and not bench._same_settings(runs[0]["settings"], cluttered)
