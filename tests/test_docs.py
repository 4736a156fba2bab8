"""The README quickstart and the example script run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block runs; ```py blocks need the user's data files and are shown, not run."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python quickstart"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").exists()


def test_readme_main_job_is_the_demo():
    readme = (ROOT / "README.md").read_text()
    assert "python -m pip install torch==2.13.0 -e . && peft-vtg demo" in readme


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = 'python -m pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q'
    assert test_command in readme and test_command in ci


def test_quickstart_example_runs(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "5", "--output-dir", str(tmp_path / "a")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reloaded adapter reproduces the outputs exactly" in result.stdout
    assert "query 0: true moment" in result.stdout


def _floors(lines: list[str]) -> dict[str, str]:
    """{normalised package name: version} of `name>=version` / `name==version` requirement lines."""
    found = {}
    for line in lines:
        match = re.fullmatch(r'\s*"?([A-Za-z0-9_.-]+)\s*(?:>=|==)\s*([0-9][^",;\s]*)"?,?\s*', line.split("#")[0])
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_ci_minimum_versions_are_the_declared_floors():
    """CI's second step installs .ci/minimum-versions.txt: each pin there must be pyproject's floor, and every
    Hugging Face dependency's floor must be pinned, or that step tests some other stack than the one declared."""
    pins = _floors((ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines())
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, flags=re.S | re.M).group(1)
    floors = _floors(dependencies.splitlines())
    stack = {"transformers", "peft", "accelerate", "datasets", "safetensors", "huggingface-hub"}
    assert stack <= set(pins), sorted(stack - set(pins))
    assert {name: Version(floors[name]) if name in floors else None for name in pins} == \
        {name: Version(version) for name, version in pins.items()}
