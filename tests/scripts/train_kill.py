"""Train a tiny CLIP grounding adapter with checkpoints and evaluation, and optionally SIGKILL itself at a chosen
moment of a save; run by tests/test_run_safety.py to check that a killed run resumes to the uninterrupted result.

    python tests/scripts/train_kill.py OUTPUT_DIR [latest]

Environment:
    KILL_AT: where to kill this process (default: nowhere):
        save-write:N   while writing optimizer.bin of checkpoint step N (half the file is on disk)
        save-rename:N  with checkpoint step N complete in its temporary directory, before it is renamed into place
        publish        in the middle of replacing the kept adapter (weights moved, metrics.json not yet)
        rotate         in the middle of removing an old checkpoint (one file gone)
    STEP_SLEEP: seconds to sleep after each optimizer step (gives random-time kills something to hit).
    NAN_ON_RANK: on this process only, the second training batch gets NaN frames.
    CRASH_AT: raise (on every process) after this optimizer step.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from peft import get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the tiny models

import accelerate.checkpointing  # noqa: E402

from peft_vtg import VTGPromptConfig  # noqa: E402
from peft_vtg.data import GroundingCollator  # noqa: E402
from peft_vtg.training import VTGTrainingArguments, train  # noqa: E402
from test_end_to_end import synthetic_set  # noqa: E402
from tiny_models import tiny_clip, tiny_tokenizer  # noqa: E402

# Dropout and matching negatives: every step draws random numbers, so a resume must restore the RNG exactly.
CONFIG = dict(num_video_tokens=2, num_text_tokens=2, vtm_heads=["violet"], video_prompt_dropout=0.1,
              head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1)


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(kill_at: str) -> None:
    kind, _, step = kill_at.partition(":")
    if kind == "save-write":
        real_save = accelerate.checkpointing.save

        def save(obj, path, *args, **kwargs):
            real_save(obj, path, *args, **kwargs)
            if str(path).endswith(os.path.join(f".step-{step}.tmp", "optimizer.bin")):
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)
                die()

        accelerate.checkpointing.save = save
    elif kind == "save-rename":
        real_rename = os.rename

        def rename(source, target, *args, **kwargs):
            if str(source).endswith(f".step-{step}.tmp"):
                die()
            return real_rename(source, target, *args, **kwargs)

        os.rename = rename
    elif kind == "publish":
        real_replace = os.replace

        def replace(source, target, *args, **kwargs):
            real_replace(source, target, *args, **kwargs)
            if str(target).endswith("adapter_model.safetensors") and ".adapter.tmp" in str(source):
                die()

        os.replace = replace
    elif kind == "rotate":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if str(path).endswith(".deleting") and os.path.isdir(path):
                os.remove(os.path.join(path, sorted(os.listdir(path))[0]))
                die()
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif kind:
        raise SystemExit(f"unknown KILL_AT={kill_at!r}")


def main() -> None:
    output_dir = sys.argv[1]
    resume = sys.argv[2] if len(sys.argv) > 2 else None
    install_kill(os.environ.get("KILL_AT", ""))
    pause = float(os.environ.get("STEP_SLEEP", "0"))
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    rows, videos = synthetic_set(12)
    collate = GroundingCollator(tiny_tokenizer(), videos.__getitem__)
    nan_rank = os.environ.get("NAN_ON_RANK")
    # RANK (set by the launcher), not PartialState(): that must not exist before train()'s Accelerator.
    if nan_rank is not None and int(os.environ.get("RANK", "0")) == int(nan_rank):
        calls = []
        plain_collate = collate

        def collate(batch_rows):
            batch = plain_collate(batch_rows)
            calls.append(1)
            if len(calls) == 2:
                batch["pixel_values"][0] = float("nan")
            return batch

    crash_at = int(os.environ.get("CRASH_AT", "0"))

    def step_done(step, logs):
        time.sleep(pause)
        if step == crash_at:
            raise RuntimeError(f"crash after step {step}")

    args = VTGTrainingArguments(output_dir=output_dir, max_steps=10, per_device_train_batch_size=4, save_steps=2,
                                save_total_limit=2, eval_steps=3, per_device_eval_batch_size=4, learning_rate=5e-3,
                                logging_steps=1, disable_tqdm=True, seed=3, resume_from_checkpoint=resume)
    print("started", flush=True)
    train(model, rows, collate, args, eval_dataset=rows[:4], callbacks=[step_done])
    if PartialState().is_main_process:
        model.save_pretrained(f"{output_dir}/final")  # the last weights (output_dir holds the best ones)
    print("finished", flush=True)


if __name__ == "__main__":
    main()
