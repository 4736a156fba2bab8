"""The training loop: one code path for a CPU, one GPU or many (`accelerate launch`), with checkpoint and resume."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import is_tensorboard_available, set_seed
from safetensors import safe_open
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .arguments import VTGTrainingArguments
from .evaluation import evaluate_grounding
from .module import GroundingModule

CHECKPOINT_DIR = "checkpoints"
PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.json"

# (global_step, logs) -> None; raise to stop the run (as a crash would).
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What `train` returns."""

    global_step: int
    best_metric: Optional[float]
    metrics: dict[str, float] = field(default_factory=dict)
    """Evaluation metrics of the saved adapter (empty without an eval set)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Logged training losses and evaluations, in order."""
    output_dir: str = ""


def _parameter_groups(
    model: torch.nn.Module, weight_decay: float, head_learning_rate: Optional[float] = None
) -> list[dict[str, Any]]:
    """Trainable parameters; decay only weight matrices, not biases, norms, prompt tokens or the [CLS] slot. With
    `head_learning_rate`, the task heads' parameters get their own groups at that rate."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.dim() < 2 or "prompts" in name.rsplit(".", 1)[-1] or name.endswith("cls_token")
        head = head_learning_rate is not None and "vtg_prompt_heads" in name
        groups.setdefault((head, exempt), []).append(param)
    if not groups:
        raise ValueError("The model has no trainable parameters; load the adapter with is_trainable=True.")
    result = []
    for (head, exempt), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if exempt else weight_decay}
        if head:
            group["lr"] = head_learning_rate
        result.append(group)
    return result


def _checkpoints(output_dir: str) -> list[str]:
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, n)) for n in os.listdir(root) if (m := re.fullmatch(r"step-(\d+)", n))]
    return [path for _, path in sorted(found)]


def _resolve_resume(args: VTGTrainingArguments) -> Optional[str]:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        found = _checkpoints(args.output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint='latest' but {args.output_dir}/{CHECKPOINT_DIR} holds none.")
        return found[-1]
    if not os.path.isfile(os.path.join(args.resume_from_checkpoint, PROGRESS_FILE)):
        raise FileNotFoundError(f"{args.resume_from_checkpoint} is not a peft_vtg checkpoint (no {PROGRESS_FILE}).")
    return args.resume_from_checkpoint


def train(
    model: torch.nn.Module,
    train_dataset: Sequence[dict],
    collator: Callable[[list[dict]], dict[str, Any]],
    args: VTGTrainingArguments,
    eval_dataset: Optional[Sequence[dict]] = None,
    callbacks: Sequence[StepCallback] = (),
) -> TrainResult:
    """Train the adapter of a VTG `PeftModel` on `train_dataset` (rows of the common schema).

    Runs unchanged under `python` (one process) and `accelerate launch --num_processes N` (DDP). Only the adapter's
    trainable parameters reach the optimizer. With `eval_dataset`, evaluates every `eval_steps` (else each epoch) and
    keeps the adapter with the best `metric_for_best_model` in `output_dir`, beside `metrics.json`; without, the last
    adapter is kept. `save_steps` writes resumable checkpoints to `output_dir/checkpoints/step-N`.

    Args:
        model: a `PeftModel` with a VTG adapter that has a grounding head (trainable).
        collator: e.g. `GroundingCollator`; its batches must hold span labels.
        callbacks: called after each optimizer step with the step and its logs.
    """
    if args.report_to == "tensorboard" and not is_tensorboard_available():
        raise ValueError("report_to='tensorboard' needs tensorboard: pip install tensorboard (or report_to='none').")
    _allow_new_precision(args.mixed_precision)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]  # matching heads may skip a batch
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=handlers,
    )
    set_seed(args.seed)
    module = GroundingModule(model, train_base_model_modes=args.train_base_model_modes)
    optimizer = torch.optim.AdamW(_parameter_groups(model, args.weight_decay, args.head_learning_rate),
                                  lr=args.learning_rate)
    train_loader = DataLoader(
        train_dataset, batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collator,
        num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = None
    if eval_dataset is not None:
        eval_loader = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size, shuffle=False,
                                 collate_fn=collator, num_workers=args.dataloader_num_workers)
    module, optimizer, train_loader = accelerator.prepare(module, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
    total_steps = args.max_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = args.warmup_steps or int(args.warmup_ratio * total_steps)
    # Stepped once per optimizer step by this loop (not prepared: accelerate would step it once per process).
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    trainable = {n for n, p in accelerator.unwrap_model(module).named_parameters() if p.requires_grad}

    def keep_adapter_weights_only(models, weights, output_dir):
        # Checkpoints hold the adapter, not the frozen base (which would be the whole model, every time).
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in trainable}

    accelerator.register_save_state_pre_hook(keep_adapter_weights_only)
    trainable_count, total_count = accelerator.unwrap_model(module).peft_model.get_nb_trainable_parameters()
    accelerator.print(f"trainable parameters: {trainable_count:,} of {total_count:,} "
                      f"({100 * trainable_count / total_count:.3f}%); {accelerator.num_processes} process(es)")
    if args.report_to != "none":
        accelerator.init_trackers("peft_vtg", config={k: v for k, v in asdict(args).items() if v is not None})

    progress = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "best_metric": None, "history": []}
    resume_dir = _resolve_resume(args)
    if resume_dir is not None:
        accelerator.load_state(resume_dir, strict=False)
        _check_restored(resume_dir, trainable)
        with open(os.path.join(resume_dir, PROGRESS_FILE)) as handle:
            progress = json.load(handle)
        scheduler.load_state_dict(progress.pop("scheduler"))

    best_metric = progress["best_metric"]
    history: list[dict[str, float]] = progress["history"]
    best_metrics: dict[str, float] = progress.get("best_metrics", {})
    global_step = progress["global_step"]
    bar = tqdm(total=total_steps, initial=global_step, desc="training",
               disable=args.disable_tqdm or not accelerator.is_local_main_process)
    running_loss, running_count = 0.0, 0
    done = global_step >= total_steps
    for epoch in range(progress["epoch"], num_epochs):
        if done:
            break
        train_loader.set_epoch(epoch)
        skip = progress["batches_in_epoch"] if epoch == progress["epoch"] else 0
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        batches_in_epoch = skip
        module.train()
        for batch in batches:
            with accelerator.accumulate(module):
                loss = module(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(module.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            batches_in_epoch += 1
            running_loss += accelerator.reduce(loss.detach().float(), reduction="mean").item()
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            global_step += 1
            bar.update(1)
            logs: dict[str, float] = {}
            if global_step % args.logging_steps == 0 or global_step == total_steps:
                logs = {"step": global_step, "loss": running_loss / running_count, "lr": scheduler.get_last_lr()[0]}
                running_loss, running_count = 0.0, 0
            end_of_epoch = batches_in_epoch == len(train_loader)
            evaluate_now = eval_loader is not None and (
                (args.eval_steps and global_step % args.eval_steps == 0)
                or (not args.eval_steps and end_of_epoch)
                or global_step == total_steps
            )
            if evaluate_now:
                metrics, _ = evaluate_grounding(
                    module, eval_loader, eval_dataset, accelerator, top_k=args.top_k,
                    nms_threshold=args.nms_threshold, max_span_seconds=args.max_span_seconds,
                    disable_tqdm=args.disable_tqdm,
                )
                module.train()
                logs.update({f"eval/{k}": v for k, v in metrics.items()}, step=global_step)
                if args.metric_for_best_model not in metrics:
                    raise ValueError(f"metric_for_best_model={args.metric_for_best_model!r} is not one of "
                                     f"{sorted(metrics)}.")
                score = metrics[args.metric_for_best_model]
                if best_metric is None or score > best_metric:
                    best_metric, best_metrics = score, metrics
                    _save_adapter(accelerator, module, args.output_dir, metrics, global_step)
            if logs:
                history.append(logs)
                accelerator.log({k: v for k, v in logs.items() if k != "step"}, step=global_step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "eval/" + args.metric_for_best_model)})
            if args.save_steps and global_step % args.save_steps == 0:
                state = {"global_step": global_step, "epoch": epoch if not end_of_epoch else epoch + 1,
                         "batches_in_epoch": 0 if end_of_epoch else batches_in_epoch, "best_metric": best_metric,
                         "best_metrics": best_metrics, "history": history, "scheduler": scheduler.state_dict()}
                _save_checkpoint(accelerator, args, state)
            for callback in callbacks:
                callback(global_step, logs)
            if global_step >= total_steps:
                done = True
                break
    bar.close()
    if eval_loader is None:
        _save_adapter(accelerator, module, args.output_dir, {}, global_step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(global_step=global_step, best_metric=best_metric, metrics=best_metrics, history=history,
                       output_dir=args.output_dir)


def _allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state; a second `train()` in the same single process (a notebook) with
    another precision would be refused by it, so that state is reset. Multi-process runs are left alone."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        if PartialState().num_processes == 1:
            AcceleratorState._reset_state(reset_partial_state=True)


def _check_restored(resume_dir: str, trainable: set[str]) -> None:
    """accelerate loads the checkpoint with strict=False (it holds only the adapter); make sure all of it is there."""
    weights = os.path.join(resume_dir, "model.safetensors")
    with safe_open(weights, framework="pt") as handle:
        saved = set(handle.keys())
    if saved != trainable:
        raise ValueError(
            f"{resume_dir} does not match this model's adapter: {len(trainable - saved)} trainable tensors missing, "
            f"{len(saved - trainable)} unexpected. Resume with the same base model and adapter config."
        )


def _save_checkpoint(accelerator: Accelerator, args: VTGTrainingArguments, progress: dict[str, Any]) -> None:
    directory = os.path.join(args.output_dir, CHECKPOINT_DIR, f"step-{progress['global_step']}")
    accelerator.save_state(directory)
    if accelerator.is_main_process:
        with open(os.path.join(directory, PROGRESS_FILE), "w") as handle:
            json.dump(progress, handle)
        if args.save_total_limit is not None:
            for old in _checkpoints(args.output_dir)[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_adapter(accelerator: Accelerator, module: torch.nn.Module, output_dir: str, metrics: dict[str, float],
                  step: int) -> None:
    """The adapter `PeftModel.from_pretrained` needs, plus `metrics.json`, written by the main process."""
    accelerator.wait_for_everyone()
    peft_model = accelerator.unwrap_model(module).peft_model
    peft_model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process)
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, METRICS_FILE), "w") as handle:
            json.dump({"step": step, **metrics}, handle, indent=2)
    accelerator.wait_for_everyone()
