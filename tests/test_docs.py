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


def test_readme_your_own_videos_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """The "Your own videos" commands, run as written in a directory where the names they use exist: a tiny CLIP
    saved as `openai/clip-vit-base-patch32`, coloured-light videos in `my-videos/` (and a 64-s one), annotations."""
    import json
    import shlex

    import numpy as np
    import pytest

    pytest.importorskip("av")
    from peft_vtg.cli import main
    from tiny_models import tiny_clip, write_light_workspace, write_video

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own videos", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 9
    write_light_workspace(tmp_path, tiny_clip(), num_videos=6)
    (tmp_path / "openai").mkdir()
    (tmp_path / "base").rename(tmp_path / "openai" / "clip-vit-base-patch32")
    (tmp_path / "videos").rename(tmp_path / "my-videos")
    write_video(tmp_path / "my-videos" / "my-long-video.mp4", np.full((64, 32, 32, 3), 96, np.uint8), fps=1)
    rows = [json.loads(line) for line in (tmp_path / "ann.jsonl").read_text().splitlines()]
    (tmp_path / "my-train.jsonl").write_text((tmp_path / "ann.jsonl").read_text())
    (tmp_path / "my-test.jsonl").write_text((tmp_path / "ann.jsonl").read_text())
    (tmp_path / "my-queries.jsonl").write_text("".join(
        json.dumps({"qid": row["qid"], "vid": row["vid"], "query": row["query"]}) + "\n" for row in rows))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "peft-vtg"
        assert main(argv[1:]) == 0, (command, capsys.readouterr().err[-2000:])
    out = capsys.readouterr().out
    assert len((tmp_path / "my-predictions.jsonl").read_text().splitlines()) == 6
    for adapter in ("my-adapter", "my-long-video-adapter"):
        assert json.loads((tmp_path / adapter / "adapter_config.json").read_text())["trained_window_seconds"] == 8.0
    assert " s  " in out.splitlines()[-1]  # the long video's moments were printed
