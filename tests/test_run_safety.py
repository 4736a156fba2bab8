"""No silent wrong results during training (issue #12): non-finite values stop the run, --seed seeds everything, a
resume checks its checkpoint's files and settings, checkpoints and the kept adapter appear only when complete, one
run per output directory, and a push uploads only the adapter, its card and metrics, without local paths."""

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from peft_vtg import VTGPromptConfig
from peft_vtg.cli import main
from peft_vtg.data import GroundingCollator
from peft_vtg.training import (
    DamagedCheckpointError,
    NonFiniteError,
    OutputDirInUseError,
    SettingsChangedError,
    VTGTrainingArguments,
    train,
)
from peft_vtg.training.safety import LOCK_FILE
from test_cli_workflow import data_flags, workspace  # noqa: F401  (the fixture: a saved tiny base and videos)
from test_end_to_end import synthetic_set
from tiny_models import tiny_clip, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
KILL_SCRIPT = ROOT / "tests" / "scripts" / "train_kill.py"
HEAD = dict(head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1)


class Crash(RuntimeError):
    pass


def make_run(output_dir, config=None, **overrides):
    """A tiny run whose steps all draw random numbers (dropout, matching negatives); 12 rows, 3 steps per epoch."""
    torch.manual_seed(0)
    config = {**dict(num_video_tokens=2, num_text_tokens=2, vtm_heads=["violet"], video_prompt_dropout=0.1, **HEAD),
              **(config or {})}
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**config))
    rows, videos = synthetic_set(12)
    collate = GroundingCollator(tiny_tokenizer(), videos.__getitem__)
    settings = dict(output_dir=str(output_dir), max_steps=7, per_device_train_batch_size=4, save_steps=2,
                    learning_rate=5e-3, disable_tqdm=True, seed=3)
    settings.update(overrides)
    return model, rows, collate, VTGTrainingArguments(**settings)


def crash_at(step_to_crash):
    def callback(step, logs):
        if step == step_to_crash:
            raise Crash()

    return callback


def adapter(directory):
    return load_file(Path(directory) / "adapter_model.safetensors")


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 7-step run that every resume must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("straight")
    model, rows, collate, args = make_run(out)
    train(model, rows, collate, args)
    return adapter(out)


@pytest.fixture
def crashed(tmp_path):
    """A run killed (an exception) after step 5: checkpoints step-2 and step-4."""
    model, rows, collate, args = make_run(tmp_path / "run")
    with pytest.raises(Crash):
        train(model, rows, collate, args, callbacks=[crash_at(5)])
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["step-2", "step-4"]
    return tmp_path / "run"


def errors(stderr):
    """The lines of stderr that are not progress bars or library warnings: what the user is told."""
    return [line for line in stderr.splitlines() if line.startswith("peft-vtg") or "Traceback" in line]


# ---------------------------------------------------------------- 1. non-finite values
def test_a_nan_input_stops_the_run_at_its_step_naming_the_video_and_saves_nothing_non_finite(tmp_path):
    model, rows, collate, args = make_run(tmp_path / "out", save_steps=1, max_steps=6)

    def nan_collate(batch_rows):
        # A NaN that appears after the data layer's own checks (an augmentation, a cast): the loop must catch it.
        batch = collate(batch_rows)
        if "v5" in batch["video_ids"]:
            batch["pixel_values"][batch["video_ids"].index("v5")] = float("nan")
        return batch

    with pytest.raises(NonFiniteError) as caught:
        train(model, rows, nan_collate, args, eval_dataset=[r for r in rows if r["vid"] != "v5"][:4])
    err = caught.value
    assert err.kind == "loss" and err.processes == [0] and "v5" in err.video_ids and "q5" in err.query_ids
    assert f"at step {err.step} " in str(err) and "'v5'" in str(err) and 1 <= err.step <= 3  # first epoch
    out = tmp_path / "out"
    saved = sorted(os.listdir(out / "checkpoints")) if (out / "checkpoints").exists() else []
    assert saved == [f"step-{s}" for s in range(1, err.step)]  # every step before, none from the bad one on
    for name in saved:
        assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoints" / name / "model.safetensors").values())
    # no evaluation has run before step 3 here, so no adapter may have been kept; the model in memory is unharmed
    assert not (out / "adapter_model.safetensors").exists() and not (out / "metrics.json").exists()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (out / LOCK_FILE).exists()  # released on the error


def test_non_finite_weights_before_training_are_refused(tmp_path):
    model, rows, collate, args = make_run(tmp_path / "out", save_steps=None)
    prompts = next(p for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        prompts.view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match="before training") as caught:
        train(model, rows, collate, args)
    assert caught.value.step == 0 and caught.value.kind == "parameters"
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_infinite_learning_rate_is_refused_up_front(workspace, tmp_path, capsys):  # noqa: F811
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        VTGTrainingArguments(learning_rate=float("inf"))
    code = main(["train", "--base-model", str(workspace / "base"), "--train-annotations",
                 str(workspace / "ann.jsonl"), *data_flags(workspace), "--output-dir", str(tmp_path / "out"),
                 "--learning-rate", "inf", "--max-steps", "1"])
    err = errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "learning_rate must be a finite number" in err[0]


def cli_train(workspace, out, *extra):  # noqa: F811
    return main(["train", "--base-model", str(workspace / "base"), "--train-annotations", str(workspace / "ann.jsonl"),
                 *data_flags(workspace), "--output-dir", str(out), "--per-device-train-batch-size", "4",
                 "--num-video-tokens", "2", "--num-text-tokens", "2", "--head-hidden-size", "16",
                 "--head-num-attention-heads", "2", "--head-num-layers", "1", "--disable-tqdm", "true", *extra])


def test_an_overflowing_learning_rate_exits_non_zero_with_one_line_and_no_adapter(workspace, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    code = cli_train(workspace, out, "--learning-rate", "1e30", "--max-steps", "4", "--warmup-steps", "0",
                     "--lr-scheduler-type", "constant", "--max-grad-norm", "none")
    err = errors(capsys.readouterr().err)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("peft-vtg train: error: Non-finite") and "at step" in err[0], err
    assert not (out / "adapter_model.safetensors").exists() and not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- 2. --seed seeds everything
def test_the_seed_makes_two_cli_runs_bit_identical_from_the_adapter_init_on(workspace, tmp_path, capsys):  # noqa: F811
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        torch.manual_seed(int.from_bytes(name.encode(), "little"))  # whatever state the process happens to be in
        assert cli_train(workspace, tmp_path / name, "--seed", seed, "--max-steps", "2") == 0
    capsys.readouterr()
    assert_same_tensors(adapter(tmp_path / "a"), adapter(tmp_path / "b"))
    assert any(not torch.equal(v, adapter(tmp_path / "c")[k]) for k, v in adapter(tmp_path / "a").items())


# ---------------------------------------------------------------- 3. the resume fingerprint
@pytest.mark.parametrize("change, named", [
    (dict(per_device_train_batch_size=6), "per_device_train_batch_size: 4 -> 6"),
    (dict(learning_rate=1e-2), "learning_rate: 0.005 -> 0.01"),
    (dict(seed=4), "seed: 3 -> 4"),
    (dict(config=dict(num_video_tokens=3)), "adapter.num_video_tokens: 2 -> 3"),
])
def test_a_resume_with_settings_it_cannot_honour_is_refused_even_when_allowed(crashed, change, named):
    change = dict(change)
    for allow in (False, True):
        model, rows, collate, args = make_run(crashed, resume_from_checkpoint="latest", allow_changed_settings=allow,
                                              **change)
        record = (crashed / "run.json").read_text() if (crashed / "run.json").exists() else None
        with pytest.raises(SettingsChangedError, match="can never change") as caught:
            train(model, rows, collate, args, run_info={"train_annotations": "other.jsonl"})
        assert named in str(caught.value) and "step-4" in str(caught.value)
        assert caught.value.never  # names the fields
        # the refused rerun leaves the record of the run in the directory as it was (the model card reads it)
        assert (crashed / "run.json").read_text() == record if record else not (crashed / "run.json").exists()


def test_safe_setting_changes_need_the_flag_and_are_then_noted(crashed, straight, capsys):
    model, rows, collate, args = make_run(crashed, resume_from_checkpoint="latest", logging_steps=3)
    with pytest.raises(SettingsChangedError, match="logging_steps: 10 -> 3.*--allow-changed-settings"):
        train(model, rows, collate, args)
    capsys.readouterr()
    model, rows, collate, args = make_run(crashed, resume_from_checkpoint="latest", logging_steps=3,
                                          allow_changed_settings=True)
    assert train(model, rows, collate, args).global_step == 7
    assert "logging_steps: 10 -> 3" in capsys.readouterr().err
    assert_same_tensors(adapter(crashed), straight)  # logging does not change the result
    # extending the run is allowed too (and the schedule follows the new total, with a note)
    model, rows, collate, args = make_run(crashed, resume_from_checkpoint="latest", max_steps=9,
                                          allow_changed_settings=True)
    assert train(model, rows, collate, args).global_step == 9
    assert "max_steps: 7 -> 9" in capsys.readouterr().err


# ---------------------------------------------------------------- 4. damaged and half-written checkpoints
@pytest.mark.parametrize("damage, file", [("truncate", "random_states_0.pkl"), ("delete", "optimizer.bin"),
                                          ("truncate", "model.safetensors")])
def test_a_damaged_checkpoint_is_refused_by_name_and_skipped_by_latest(crashed, straight, capsys, damage, file):
    target = crashed / "checkpoints" / "step-4" / file
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.unlink()
    model, rows, collate, args = make_run(crashed, resume_from_checkpoint=str(crashed / "checkpoints" / "step-4"))
    with pytest.raises(DamagedCheckpointError, match=f"step-4 is damaged: {file}"):
        train(model, rows, collate, args)
    capsys.readouterr()
    model, rows, collate, args = make_run(crashed, resume_from_checkpoint="latest")
    assert train(model, rows, collate, args).global_step == 7
    err = capsys.readouterr().err
    assert "skipping" in err and "step-4" in err and file in err
    assert_same_tensors(adapter(crashed), straight)  # resumed from step 2 instead, still bit-identical


def test_latest_skips_a_half_written_checkpoint_of_an_older_version(crashed, straight, capsys):
    (crashed / "checkpoints" / "step-6").mkdir()  # what a kill inside save_state left before atomic saves
    (crashed / "checkpoints" / "step-6" / "model.safetensors").write_bytes(b"")
    model, rows, collate, args = make_run(crashed, resume_from_checkpoint="latest")
    train(model, rows, collate, args)
    assert "skipping" in capsys.readouterr().err
    assert_same_tensors(adapter(crashed), straight)


def launch(output_dir, *extra, env=None, **kwargs):
    return subprocess.Popen([sys.executable, str(KILL_SCRIPT), str(output_dir), *extra], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **kwargs)


def finish(process, timeout=180):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_latest_equals_the_uninterrupted_run(tmp_path):
    code, _, err = finish(launch(tmp_path / "straight"))
    assert code == 0, err[-3000:]
    run = tmp_path / "killed"

    def killed_at(where, resume=True):
        code, out, err = finish(launch(run, *(["latest"] if resume else []), env={"KILL_AT": where}))
        assert code == -signal.SIGKILL and "finished" not in out, (where, code, err[-3000:])
        return err

    # Killed while optimizer.bin of step 4 is half written: only the temporary directory exists.
    killed_at("save-write:4", resume=False)
    assert (run / "checkpoints" / ".step-4.tmp").is_dir() and not (run / "checkpoints" / "step-4").exists()
    assert (run / LOCK_FILE).exists()  # the dead run's lock
    # Killed with step 4 complete but not yet renamed; the stale lock is taken over with a note.
    err = killed_at("save-rename:4")
    assert "took over the stale lock" in err and "interrupted" in err
    assert sorted(os.listdir(run / "checkpoints")) == [".step-4.tmp", "step-2"]
    # Killed in the middle of replacing the kept adapter: the next run completes the replacement.
    killed_at("publish")
    assert (run / ".adapter.tmp" / "metrics.json").exists()
    # Killed while removing an old checkpoint: it is out of sight already.
    err = killed_at("rotate")
    assert "completing the replacement of the kept adapter" in err
    assert not (run / "checkpoints" / "step-2").exists() and (run / "checkpoints" / ".step-2.deleting").exists()
    # A few kills at random moments (the seed is in the failure message).
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for _ in range(3):
        process = launch(run, "latest", env={"STEP_SLEEP": "0.1"})
        # Imports done, training begins. (Older tokenizers print a warning on stdout first, hence the loop.)
        for line in process.stdout:
            if line.strip() == "started":
                break
        else:
            raise AssertionError(f"the run ended before it started: {process.communicate(timeout=60)}")
        subprocess.run(["sleep", f"{rng.uniform(0.0, 1.5):.3f}"], check=True)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    code, out, err = finish(launch(run, "latest"))
    assert code == 0 and "finished" in out, (seed, err[-3000:])
    for name in ("adapter_model.safetensors", "final/adapter_model.safetensors"):
        assert_same_tensors(load_file(run / name), load_file(tmp_path / "straight" / name))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "straight" / "metrics.json").read_text()), seed
    assert metrics["adapter_sha256"] == sha256(run / "adapter_model.safetensors")
    assert sorted(os.listdir(run / "checkpoints")) == ["step-10", "step-8"] and not (run / LOCK_FILE).exists()
    assert not (run / ".adapter.tmp").exists()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two(output_dir, *extra, env=None):
    """train_kill.py on 2 CPU processes (gloo DDP)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), str(KILL_SCRIPT), str(output_dir), *extra]
    return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", **(env or {})})


@pytest.mark.slow
def test_two_processes_stop_together_on_a_rank_local_nan_and_resume_bit_identically(tmp_path):
    # A NaN on process 1 only: both processes stop (no deadlock in a collective), naming the process and videos.
    code, _, err = finish(launch_two(tmp_path / "nan", env={"NAN_ON_RANK": "1"}), timeout=240)
    assert code != 0 and "Non-finite training loss" in err and "on process 1" in err and "batch video ids ['v" in err
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists() and not (tmp_path / "nan" / LOCK_FILE).exists()
    # Crash after step 5 and resume from 'latest' on 2 processes (the lock is the main process's alone, so the
    # other process is not refused), then compare with an uninterrupted 2-process run.
    code, _, err = finish(launch_two(tmp_path / "crashed", env={"CRASH_AT": "5"}), timeout=240)
    assert code != 0 and "crash after step 5" in err, err[-3000:]
    manifest = json.loads((tmp_path / "crashed" / "checkpoints" / "step-4" / "progress.json").read_text())["files"]
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "optimizer.bin"} <= set(manifest)
    code, out, err = finish(launch_two(tmp_path / "crashed", "latest"), timeout=240)
    assert code == 0 and "finished" in out, err[-3000:]
    code, out, err = finish(launch_two(tmp_path / "straight"), timeout=240)
    assert code == 0, err[-3000:]
    for name in ("adapter_model.safetensors", "final/adapter_model.safetensors"):
        assert_same_tensors(load_file(tmp_path / "crashed" / name), load_file(tmp_path / "straight" / name))
    assert not (tmp_path / "crashed" / LOCK_FILE).exists()


# ---------------------------------------------------------------- 5. the kept adapter and metrics.json together
def test_metrics_json_names_its_weights_and_push_refuses_a_mismatch(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    model, rows, collate, args = make_run(out, max_steps=1, save_steps=None)
    train(model, rows, collate, args)
    assert json.loads((out / "metrics.json").read_text())["adapter_sha256"] == sha256(out / "adapter_model.safetensors")
    # A second run into the directory crashes between moving its weights and its metrics.json into place.
    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        if str(target).endswith("adapter_model.safetensors"):
            raise Crash("killed mid-swap")

    monkeypatch.setattr(os, "replace", replace)
    model, rows, collate, args = make_run(out, max_steps=2, save_steps=None)
    with pytest.raises(Crash):
        train(model, rows, collate, args)
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads((out / "metrics.json").read_text())["step"] == 1  # the old metrics beside the new weights

    from huggingface_hub import HfApi

    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw) or "url")
    assert main(["push", "--adapter", str(out), "--repo-id", "someone/x"]) == 2
    err = capsys.readouterr().err
    assert "metrics.json (step 1) belongs to other weights" in err and not uploads
    # The next run in the directory completes the interrupted replacement first (then does its own).
    model, rows, collate, args = make_run(out, max_steps=2, save_steps=None)
    train(model, rows, collate, args)
    assert "completing the replacement" in capsys.readouterr().err
    assert main(["push", "--adapter", str(out), "--repo-id", "someone/x"]) == 0 and len(uploads) == 1


# ---------------------------------------------------------------- 6. one run per output directory
def test_a_directory_in_use_is_refused_at_once_naming_the_owner(workspace, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": owner.pid, "hostname": socket.gethostname(),
                                                 "started": "2026-01-01T00:00:00"}))
        model, rows, collate, args = make_run(out)
        with pytest.raises(OutputDirInUseError, match=rf"{out} is in use by another training run \(pid {owner.pid}"):
            train(model, rows, collate, args)
        assert sorted(os.listdir(out)) == [LOCK_FILE]  # nothing written
        code = cli_train(workspace, out, "--max-steps", "1")
        err = errors(capsys.readouterr().err)
        assert code == 2 and len(err) == 1 and f"pid {owner.pid}" in err[0] and str(out) in err[0]
    finally:
        owner.kill()
        owner.wait()
    # Now the owner is dead: its lock is stale, taken over with a note, and released at the end.
    model, rows, collate, args = make_run(out, max_steps=1, save_steps=None)
    train(model, rows, collate, args)
    err = capsys.readouterr().err
    assert f"stale lock {out / LOCK_FILE}" in err and f"pid {owner.pid}" in err
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_noted_when_stale_and_released_after_an_error(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "hostname": socket.gethostname()}))
    model, rows, collate, args = make_run(out, max_steps=3, save_steps=None)
    with pytest.raises(Crash):
        train(model, rows, collate, args, callbacks=[crash_at(1)])
    err = capsys.readouterr().err
    assert "took over the stale lock" in err and f"pid {int(dead.stdout)}" in err
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("content", ['{"pid": 12345}', '{"pid": 12345, "hostname": 7}', "[1, 2]", ""])
def test_a_lock_file_without_its_fields_counts_as_unreadable(tmp_path, capsys, content):
    """A lock without a pid and a hostname cannot be judged live: once old enough it is taken over with a note
    (not a KeyError)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(content)
    old = time.time() - 60
    os.utime(out / LOCK_FILE, (old, old))
    model, rows, collate, args = make_run(out, max_steps=1, save_steps=None)
    train(model, rows, collate, args)
    assert "it is empty or unreadable" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- 7. what a push uploads
def test_push_uploads_only_the_adapter_card_and_metrics_without_local_paths(workspace, tmp_path, monkeypatch,  # noqa: F811
                                                                           capsys):
    out = tmp_path / "out"
    assert cli_train(workspace, out, "--max-steps", "2", "--save-steps", "1", "--eval-annotations",
                     str(workspace / "ann.jsonl")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["base_model"] == str(workspace / "base")  # the local record keeps the path...
    from huggingface_hub import HfApi

    uploaded = {}

    def upload_folder(self, folder_path, allow_patterns, **kwargs):
        for name in os.listdir(folder_path):
            if any(name == pattern for pattern in allow_patterns):
                uploaded[name] = Path(folder_path, name).read_bytes()
        return "url"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert main(["push", "--adapter", str(out), "--repo-id", "someone/tiny"]) == 0
    # ...but what leaves the machine has no run.json, checkpoints or lock, and no local path anywhere
    assert sorted(uploaded) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "metrics.json"]
    for name, content in uploaded.items():
        if name != "adapter_model.safetensors":
            text = content.decode()
            assert str(tmp_path) not in text and str(workspace) not in text and os.path.expanduser("~") + "/" not in text, name
    assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] == "base"
    assert uploaded["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()


def test_push_refuses_a_directory_it_cannot_publish_naming_the_file(tmp_path, monkeypatch, capsys):
    import shutil

    from huggingface_hub import HfApi

    out = tmp_path / "out"
    model, rows, collate, args = make_run(out, max_steps=1, save_steps=None)
    train(model, rows, collate, args, run_info={"base_model": "tiny"})
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw) or "url")
    config = json.loads((out / "adapter_config.json").read_text())
    cases = {  # file -> (content, what the one error line says)
        "adapter_config.json": [("[1]", "adapter_config.json must hold a JSON object, got list"),
                                (json.dumps({**config, "peft_type": "LORA"}), "peft_type is 'LORA'; push publishes "
                                 "VTG_PROMPT adapters"),
                                ('{"peft_type": ', "adapter_config.json is not readable JSON"),
                                ("[" * 100_000, "adapter_config.json is not readable JSON (nested too deeply")],
        "adapter_model.safetensors": [("", "adapter_model.safetensors is not a readable safetensors file"),
                                      ("garbage bytes", "adapter_model.safetensors is not a readable safetensors")],
        "run.json": [("[1]", "run.json must hold a JSON object")],
        "metrics.json": [('{"R1@0.5": 30}', "metrics.json lacks ['R1@0.1'"),
                         ("{", "metrics.json is not readable JSON"),
                         ('{"R1@0.5": ' + "9" * 5000 + "}", "metrics.json is not readable JSON (Exceeds the limit")],
    }
    for name, variants in cases.items():
        for content, message in variants:
            case = tmp_path / "case"
            shutil.rmtree(case, ignore_errors=True)
            shutil.copytree(out, case)
            (case / name).write_text(content)
            before = {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()}
            assert main(["push", "--adapter", str(case), "--repo-id", "someone/x"]) == 2, (name, content)
            err = errors(capsys.readouterr().err)
            assert len(err) == 1 and message in err[0] and str(case / name) in err[0], (name, err)
            assert "peft-vtg-push-" not in err[0] and not uploads  # named in the adapter directory; nothing sent
            assert {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()} == before  # no card written
    assert main(["push", "--adapter", str(out), "--repo-id", "someone/x"]) == 0 and len(uploads) == 1


def test_what_would_fail_only_after_training_steps_is_refused_before_the_run(tmp_path):
    model, rows, collate, args = make_run(tmp_path / "a", config=dict(grounding_head=False, vtm_heads=[],
                                                                      predict_saliency=False))
    with pytest.raises(ValueError, match=r"Adapter 'default' has no grounding head \(grounding_head=False\)"):
        train(model, rows, collate, args, run_info={})
    assert not (tmp_path / "a").exists()  # refused before the directory was made
    # A best-model metric the evaluation rows cannot give: highlight metrics without labels, a length bucket that no
    # ground-truth window falls in (the synthetic videos last 16 s).
    assert all(end - start <= 30 for row in rows for start, end in row["windows"])
    for metric, message in (("HL-min-Fair-mAP", "the evaluation rows have no highlight labels"),
                            ("MR-long-mAP", "scores ground-truth windows of 30-150 s, and the evaluation rows have "
                                            "none")):
        model, rows, collate, args = make_run(tmp_path / "b", metric_for_best_model=metric)
        with pytest.raises(ValueError, match=message):
            train(model, rows, collate, args, eval_dataset=rows[:4], run_info={})
        assert not (tmp_path / "b").exists()
    # evaluation rows without a ground-truth window failed at the first evaluation, after training up to it
    model, rows, collate, args = make_run(tmp_path / "e")
    unlabelled = [{**row, "windows": None if i % 2 else []} for i, row in enumerate(rows[:3])]
    with pytest.raises(ValueError, match=r"3 evaluation row\(s\) have no ground-truth window .*Leave them out"):
        train(model, rows, collate, args, eval_dataset=rows[3:6] + unlabelled, run_info={})
    assert not (tmp_path / "e").exists()
    # a saliency head with nothing to learn from is worth a warning, not an error
    model, rows, collate, args = make_run(tmp_path / "c", config=dict(predict_saliency=True), max_steps=1,
                                          save_steps=None)
    with pytest.warns(UserWarning, match="saliency head .* but no training row has highlight labels"):
        train(model, rows, collate, args)
    # ... as are highlight labels no head learns, wherever in the rows they are (a sample of the first 100 missed a
    # labelled set concatenated after an unlabelled one)
    model, rows, collate, args = make_run(tmp_path / "d", max_steps=1, save_steps=None)
    mixed = [dict(row) for row in rows * 9] + [{**rows[0], "relevant_clip_ids": [0], "saliency_scores": [[1, 1, 1]]}]
    with pytest.warns(UserWarning, match="highlight labels .* but the adapter has no saliency head"):
        train(model, mixed, collate, args)


def test_a_new_run_is_refused_among_an_earlier_runs_checkpoints(crashed):
    # Rotation keeps the highest step numbers: a new run's own early checkpoints would be deleted as it saved them,
    # and `latest` would then find the earlier run's.
    before = sorted(os.listdir(crashed / "checkpoints"))
    model, rows, collate, args = make_run(crashed, learning_rate=1e-2)
    with pytest.raises(ValueError, match=r"checkpoints holds checkpoints of an earlier run \(step-2, step-4\).*"
                                         r"--resume-from-checkpoint latest"):
        train(model, rows, collate, args, run_info={})
    assert sorted(os.listdir(crashed / "checkpoints")) == before and not (crashed / "run.json").exists()
