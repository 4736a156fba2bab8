"""The accelerate training loop: DDP on 2 CPU processes equals 1 process, kill-and-resume equals uninterrupted,
uneven evaluation batches count each query once, the frozen base stays in eval mode."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_vtg import VTGPromptConfig
from peft_vtg.data import GroundingCollator
from peft_vtg.training import GroundingModule, VTGTrainingArguments, train
from test_end_to_end import synthetic_set
from tiny_models import FRAMES, tiny_clip, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_tiny.py"
HEAD = dict(head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1)


def run(command, **env):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def probabilities(adapter_dir, rows, videos):
    """Span probabilities of an adapter on `rows`: what decoding reads, free of the logits' softmax gauge."""
    torch.manual_seed(0)
    model = PeftModel.from_pretrained(tiny_clip(), adapter_dir)
    batch = GroundingCollator(tiny_tokenizer(), videos.__getitem__)(rows)
    with torch.no_grad():
        out = model.forward_grounding(**{k: v for k, v in batch.items() if k not in ("start_frames", "end_frames")})
    return torch.cat([out.start_logits.softmax(-1), out.end_logits.softmax(-1), out.inside_logits.sigmoid()], dim=1)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # accelerate 1.15 runs CPU DDP (gloo) through its multi-process launcher with ACCELERATE_USE_CPU=1; a plain
    # `accelerate launch --cpu --num_processes 2` starts only one process.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]  # not 29500: another run on this machine may hold it
    run(launch + [str(SCRIPT), str(tmp_path / "two"), "4"], ACCELERATE_USE_CPU="1")
    run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "8"])
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    assert [h["step"] for h in two] == [h["step"] for h in one]
    assert len(one) == 4 and all("loss" in h for h in one)  # logging_steps=1
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    evaluations = [(a, b) for a, b in zip(one, two) if "eval/num_queries" in a]
    assert [a["step"] for a, _ in evaluations] == [2, 4]  # each epoch (2 steps of 8 pairs)
    for a, b in evaluations:
        assert b["eval/num_queries"] == a["eval/num_queries"] == 7  # 7 queries, uneven last batch: each once
        assert {k: v for k, v in b.items() if k.startswith("eval/")} == pytest.approx(
            {k: v for k, v in a.items() if k.startswith("eval/")})
    # Adam turns float noise into full-size steps for parameters whose true gradient is 0 (attention key biases,
    # a constant added to all start logits), so the adapters are compared by the function they compute.
    rows, videos = synthetic_set(16)
    assert torch.allclose(probabilities(tmp_path / "one" / "final", rows, videos),
                          probabilities(tmp_path / "two" / "final", rows, videos), atol=1e-4)
    assert (tmp_path / "two" / "metrics.json").exists() and (tmp_path / "two" / "adapter_model.safetensors").exists()


class Crash(RuntimeError):
    pass


def make_run(output_dir, windows=False, **overrides):
    torch.manual_seed(0)
    # Dropout and matching negatives make every step draw random numbers: resume must restore the RNG too.
    model = get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2, vtm_heads=["violet"],
                                                        video_prompt_dropout=0.1, **HEAD))
    rows, videos = synthetic_set(12)
    collate = GroundingCollator(tiny_tokenizer(), videos.__getitem__)
    if windows:  # the window draws come from torch's generator too
        from peft_vtg.data import LongVideoWindowCollator

        collate = LongVideoWindowCollator(tiny_tokenizer(), videos.__getitem__, rows, window_frames=FRAMES)
    settings = dict(output_dir=str(output_dir), max_steps=7, per_device_train_batch_size=4, save_steps=2,
                    learning_rate=5e-3, gradient_accumulation_steps=1, disable_tqdm=True, seed=3)
    settings.update(overrides)
    return model, rows, collate, VTGTrainingArguments(**settings)


@pytest.mark.parametrize("windows", [False, True], ids=["whole-videos", "long-video-windows"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, windows):
    model, rows, collate, args = make_run(tmp_path / "straight", windows)
    train(model, rows, collate, args)
    expected = load_file(tmp_path / "straight" / "adapter_model.safetensors")

    def crash_at_5(step, logs):
        if step == 5:
            raise Crash()

    model, rows, collate, args = make_run(tmp_path / "crashed", windows)
    with pytest.raises(Crash):
        train(model, rows, collate, args, callbacks=[crash_at_5])
    assert sorted(os.listdir(tmp_path / "crashed" / "checkpoints")) == ["step-2", "step-4"]
    checkpoint = load_file(tmp_path / "crashed" / "checkpoints" / "step-4" / "model.safetensors")
    assert checkpoint and all("vtg_prompt" in k for k in checkpoint)  # the adapter only, not the frozen base
    # a new "process": fresh model, resumed from the latest checkpoint (step 4; epochs have 3 steps, so mid-epoch)
    model, rows, collate, args = make_run(tmp_path / "crashed", windows, resume_from_checkpoint="latest")
    result = train(model, rows, collate, args)
    assert result.global_step == 7
    resumed = load_file(tmp_path / "crashed" / "adapter_model.safetensors")
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key


def test_resume_errors(tmp_path):
    model, rows, collate, args = make_run(tmp_path / "none", resume_from_checkpoint="latest")
    with pytest.raises(FileNotFoundError, match="holds none"):
        train(model, rows, collate, args)
    model, rows, collate, args = make_run(tmp_path / "other", resume_from_checkpoint=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a peft_vtg checkpoint"):
        train(model, rows, collate, args)


def test_training_keeps_the_frozen_base_in_eval_mode_and_optimises_only_the_adapter(tmp_path):
    model, rows, collate, args = make_run(tmp_path / "modes", max_steps=1, save_steps=None)
    GroundingModule(model).train()
    base = model.get_base_model()
    assert not base.vision_model.training and not base.text_model.training
    assert base.vtg_prompts.training and base.vtg_prompts.vtg_prompt_heads["default"].training
    assert GroundingModule(model, train_base_model_modes=True).train().peft_model.get_base_model().vision_model.training
    frozen = {k: v.clone() for k, v in base.state_dict().items() if "vtg_prompt" not in k}
    train(model, rows, collate, args)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())
    metrics = json.loads((tmp_path / "modes" / "metrics.json").read_text())
    # no eval set: the step, and the sha256 of the weights these metrics belong to
    assert metrics == {"step": 1, "adapter_sha256": metrics["adapter_sha256"]} and len(metrics["adapter_sha256"]) == 64


def test_head_learning_rate_gets_its_own_parameter_groups(tmp_path):
    from peft_vtg.training.loop import _parameter_groups

    model, rows, collate, args = make_run(tmp_path / "rates", max_steps=1, save_steps=None)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("lr" not in g for g in _parameter_groups(model, 0.01))  # one rate for all by default
    groups = _parameter_groups(model, 0.01, head_learning_rate=0.5)
    for group in groups:
        heads = {"vtg_prompt_heads" in names[id(p)] for p in group["params"]}
        assert heads == ({True} if group.get("lr") == 0.5 else {False}), group
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
    assert any(g.get("lr") == 0.5 and g["weight_decay"] == 0.01 for g in groups)  # head weights still decay
    with pytest.raises(ValueError, match="head_learning_rate"):
        VTGTrainingArguments(head_learning_rate=0.0)


@pytest.mark.parametrize("schedule, warmup, expected", [
    ("constant", 2, [0.005, 0.01, 0.01, 0.01]),  # the warm-up is kept (transformers' "constant" would drop it)
    ("constant", 0, [0.01] * 4),
    ("linear", 2, [0.005, 0.01, 0.005, 0.0]),
])
def test_every_schedule_warms_up_then_follows_its_shape(tmp_path, schedule, warmup, expected):
    model, rows, collate, args = make_run(tmp_path / schedule, max_steps=4, save_steps=None, learning_rate=0.01,
                                          lr_scheduler_type=schedule, warmup_steps=warmup, warmup_ratio=0.0,
                                          logging_steps=1)
    rates = []
    train(model, rows, collate, args, callbacks=[lambda step, logs: rates.append(logs["lr"]) if "lr" in logs else None])
    assert rates == pytest.approx(expected)


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="lr_scheduler_type='step' is not valid"):
        VTGTrainingArguments(lr_scheduler_type="step")
    with pytest.raises(ValueError, match="per_device_train_batch_size must be an integer >= 1"):
        VTGTrainingArguments(per_device_train_batch_size=0)
    with pytest.raises(ValueError, match="mixed_precision"):
        VTGTrainingArguments(mixed_precision="fp8")


def test_hugging_face_trainer_trains_and_saves_the_adapter(tmp_path):
    from transformers import TrainingArguments

    from peft_vtg.training import GroundingTrainer

    model, rows, collate, _ = make_run(tmp_path)
    base = model.get_base_model()
    frozen = {k: v.clone() for k, v in base.state_dict().items() if "vtg_prompt" not in k}
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        GroundingTrainer(model=model, args=TrainingArguments(str(tmp_path / "hf")), train_dataset=rows,
                         data_collator=collate)
    args = TrainingArguments(str(tmp_path / "hf"), remove_unused_columns=False, per_device_train_batch_size=4,
                             max_steps=12, learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True)
    trainer = GroundingTrainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    trainer.save_model(str(tmp_path / "hf" / "adapter"))
    assert sorted(os.listdir(tmp_path / "hf" / "adapter"))[:2] == ["README.md", "adapter_config.json"]
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path / "hf" / "adapter")
    trained = model.get_base_model().vtg_prompts.vtg_prompt_heads["default"].grounding.span_head[0].weight
    assert torch.equal(reloaded.get_base_model().vtg_prompts.vtg_prompt_heads["default"].grounding.span_head[0].weight,
                       trained.detach())


def test_hugging_face_trainer_evaluates_resumes_and_keeps_the_best_adapter_as_the_own_loop_does(tmp_path):
    import shutil

    from safetensors.torch import load_file
    from transformers import TrainingArguments

    from peft_vtg.data import LongVideoWindowCollator
    from peft_vtg.training import GroundingTrainer, evaluate_grounding

    def trainer(output, collate=None, **overrides):
        model, rows, plain, _ = make_run(tmp_path / "unused")
        settings = dict(remove_unused_columns=False, per_device_train_batch_size=4, max_steps=4, learning_rate=5e-3,
                        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, save_strategy="steps", save_steps=2,
                        eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
        settings.update(overrides)
        return GroundingTrainer(model=model, args=TrainingArguments(str(tmp_path / output), **settings),
                                train_dataset=rows, eval_dataset=rows[:6], data_collator=collate or plain), rows

    # evaluation reports the grounding metrics (only Trainer's speed figures before), usable as the best metric
    first, rows = trainer("a", load_best_model_at_end=True, metric_for_best_model="R1@0.5")
    first.train()
    metrics = first.evaluate()
    module = GroundingModule(first.peft_model)
    loader = torch.utils.data.DataLoader(rows[:6], batch_size=4, collate_fn=first.data_collator)
    assert {f"eval_{k}": v for k, v in evaluate_grounding(module, loader, rows[:6])[0].items()}.items() <= \
        metrics.items() and metrics["eval_num_queries"] == 6 and "eval_loss" in metrics
    from peft import get_peft_model_state_dict

    best = first.state.best_model_checkpoint  # loaded at the end (a FileNotFoundError for pytorch_model.bin before)
    saved, current = load_file(os.path.join(best, "adapter_model.safetensors")), get_peft_model_state_dict(
        first.peft_model)
    assert best.endswith("checkpoint-2") or best.endswith("checkpoint-4")
    assert saved.keys() == current.keys() and all(torch.equal(saved[k], current[k].cpu()) for k in saved)
    assert first.peft_model.peft_config["default"].trained_window_frames is not None  # recorded, as the loop does

    # resuming from the step-2 checkpoint gives the uninterrupted run's step-4 adapter
    straight, _ = trainer("b")
    straight.train()
    expected = load_file(tmp_path / "b" / "checkpoint-4" / "adapter_model.safetensors")
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    resumed, _ = trainer("b")
    resumed.train(resume_from_checkpoint=True)  # "Can't find a checkpoint index" before
    got = load_file(tmp_path / "b" / "checkpoint-4" / "adapter_model.safetensors")
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)

    # a collator that draws windows per epoch is told the epoch, and evaluation reads whole videos
    rows, videos = synthetic_set(12)
    windows = LongVideoWindowCollator(tiny_tokenizer(), videos.__getitem__, rows, window_frames=FRAMES)
    epochs = []
    windows.set_epoch = epochs.append
    drawn, _ = trainer("c", collate=windows, max_steps=6, save_strategy="no", eval_strategy="no")
    drawn.train()
    assert epochs == [0, 1] and type(drawn.get_eval_dataloader(rows[:4]).collate_fn) is not LongVideoWindowCollator
    assert GroundingTrainer(model=make_run(tmp_path / "unused")[0]).args.remove_unused_columns is False


def test_bf16_autocast_after_a_full_precision_run_and_a_clear_tracker_error(tmp_path, monkeypatch):
    model, rows, collate, args = make_run(tmp_path / "fp32", max_steps=1, save_steps=None)
    train(model, rows, collate, args)
    model, rows, collate, args = make_run(tmp_path / "bf16", max_steps=2, save_steps=None, mixed_precision="bf16")
    result = train(model, rows, collate, args, eval_dataset=rows[:4])  # same process, another precision
    assert result.metrics["num_queries"] == 4
    import peft_vtg.training.loop as loop

    monkeypatch.setattr(loop, "is_tensorboard_available", lambda: False)
    model, rows, collate, args = make_run(tmp_path / "tb", max_steps=1, save_steps=None, report_to="tensorboard")
    with pytest.raises(ValueError, match="pip install tensorboard"):
        train(model, rows, collate, args)
