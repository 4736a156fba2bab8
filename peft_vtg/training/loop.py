"""The training loop: one code path for a CPU, one GPU or many (`accelerate launch`), with checkpoint and resume.

Run safety (docs/design.md, "Run safety"): one run per output directory (a lock file), a stop at the first
non-finite loss, gradient or weight, checkpoints and the kept adapter made visible only when complete, and a resume
that refuses damaged checkpoints and changed settings.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, TypeVar

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, gather_object, is_tensorboard_available, set_seed
from safetensors import safe_open
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .arguments import VTGTrainingArguments
from .checkpoints import (
    CHECKPOINT_DIR,
    clean_interrupted,
    compare_fingerprints,
    finalize_checkpoint,
    resolve_resume,
    rotate_checkpoints,
    run_fingerprint,
    tmp_name,
)
from .evaluation import evaluate_grounding
from .module import GroundingModule
from ..data.collate import has_highlight_labels, median_duration, row_column
from ..moment_detr_eval import LENGTH_BUCKETS
from ..files import fsync_path, fsync_tree, sha256_file, write_json_atomic
from .safety import NonFiniteError, RunLock, note

METRICS_FILE = "metrics.json"
RUN_INFO_FILE = "run.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The kept adapter and its metrics are written here first, then moved into output_dir (see _publish_adapter).
ADAPTER_STAGING = ".adapter.tmp"

# (global_step, logs) -> None; raise to stop the run (as a crash would).
StepCallback = Callable[[int, dict[str, float]], None]
_T = TypeVar("_T")


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


def _on_main(accelerator: Accelerator, function: Callable[[], _T]) -> _T:
    """Run `function` on the main process only and hand its result, or its exception, to every process.

    Decisions that must be taken once (the lock, which checkpoint to resume, renames) go through here, so that an
    error on the main process stops every process instead of leaving the others waiting in a collective.
    """
    result: Any = None
    error: Optional[BaseException] = None
    if accelerator.is_main_process:
        try:
            result = function()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every process
            error = err
    if accelerator.num_processes > 1:
        shipped: Any = error
        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:  # noqa: BLE001 - an exception that cannot travel is sent as its text
                shipped = RuntimeError(f"{type(error).__name__}: {error}")
        box = [(result, shipped)]
        broadcast_object_list(box, from_process=0)
        if not accelerator.is_main_process:
            result, error = box[0]
    if error is not None:
        raise error
    return result


def _start_run(lock: RunLock, args: VTGTrainingArguments) -> None:
    """Main process, before anything is written: take the lock, then clean up after an interrupted run."""
    lock.acquire()
    clean_interrupted(args.output_dir)
    _recover_staged_adapter(args.output_dir)


def train(
    model: torch.nn.Module,
    train_dataset: Sequence[dict],
    collator: Callable[[list[dict]], dict[str, Any]],
    args: VTGTrainingArguments,
    eval_dataset: Optional[Sequence[dict]] = None,
    callbacks: Sequence[StepCallback] = (),
    *,
    run_info: Optional[Mapping[str, Any]] = None,
    data_fingerprint: Optional[Mapping[str, Any]] = None,
) -> TrainResult:
    """Train the adapter of a VTG `PeftModel` on `train_dataset` (rows of the common schema).

    Runs unchanged under `python` (one process) and `accelerate launch --num_processes N` (DDP). Only the adapter's
    trainable parameters reach the optimizer. With `eval_dataset`, evaluates every `eval_steps` (else each epoch) and
    keeps the adapter with the best `metric_for_best_model` in `output_dir`, beside `metrics.json`; without, the last
    adapter is kept. `save_steps` writes resumable checkpoints to `output_dir/checkpoints/step-N`.

    `args.seed` seeds data order, dropout and sampling from the start of this call; the adapter's initial weights
    are drawn when the model is built, so seed before building it (`accelerate.utils.set_seed`), as the CLI does.

    Args:
        model: a `PeftModel` with a VTG adapter that has a grounding head (trainable).
        collator: e.g. `GroundingCollator`; its batches must hold span labels, and the `video_ids` / `qid` it passes
            along name the samples in a `NonFiniteError`.
        callbacks: called after each optimizer step with the step and its logs.
        run_info: written with the training arguments to `output_dir/run.json` once the run (or its resume) is
            accepted (e.g. the base model and data files, for the model card).
        data_fingerprint: the caller's description of its data (file paths, sizes, mtimes), stored in each
            checkpoint's settings fingerprint; a resume where it differs needs `allow_changed_settings`.

    Raises:
        OutputDirInUseError: another live run holds `output_dir`.
        NonFiniteError: a loss, gradient or weight became NaN/inf; nothing of that step was saved.
        SettingsChangedError: the resumed checkpoint was written with other settings.
        DamagedCheckpointError: the checkpoint to resume is incomplete or damaged.
    """
    if args.report_to == "tensorboard" and not is_tensorboard_available():
        raise ValueError("report_to='tensorboard' needs tensorboard: pip install tensorboard (or report_to='none').")
    _check_before_the_run(model, train_dataset, eval_dataset, args)
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
    # Only the main process holds the lock: the other processes of the same launch write into the directory too.
    lock = RunLock(args.output_dir)
    try:
        _on_main(accelerator, lambda: _start_run(lock, args))
        return _train(accelerator, model, train_dataset, collator, args, eval_dataset, callbacks, data_fingerprint,
                      run_info)
    finally:
        lock.release()


def trained_window(rows: Sequence[Mapping[str, Any]], collator: Any) -> tuple[int, float]:
    """(frames, seconds) of the window an adapter is trained on: the median duration of `rows`' videos, and the frames
    per video the collator gives (its fixed count, its video source's, the source's fps x that duration, or the first
    row's video's)."""
    seconds = median_duration(rows)
    source = getattr(collator, "video_source", None)
    frames = getattr(collator, "num_frames", None) or getattr(source, "num_frames", None)
    fps = getattr(source, "fps", None)
    if frames is None and fps:
        frames = max(1, int(round(seconds * fps)))
    if frames is None:
        frames = int(collator([rows[0]])["frame_mask"].sum())
    return int(frames), seconds


def record_trained_window(peft_model: Any, rows: Sequence[Mapping[str, Any]], collator: Any) -> None:
    """Store `trained_window` in the config of every adapter being trained (saved with it), for long-video
    inference (`peft_vtg.inference.ground`)."""
    frames, seconds = trained_window(rows, collator)
    for name in getattr(peft_model, "active_adapters", [peft_model.active_adapter]):
        config = peft_model.peft_config[name]
        config.trained_window_frames, config.trained_window_seconds = frames, seconds


def _check_before_the_run(model: torch.nn.Module, train_dataset: Sequence[dict],
                          eval_dataset: Optional[Sequence[dict]], args: VTGTrainingArguments) -> None:
    """What would otherwise fail only after steps were trained (at the first forward, or the first evaluation): an
    adapter without a grounding head, a best-model metric the evaluation set cannot give (highlight metrics without
    highlight labels or a saliency head; a Moment-DETR length bucket that no ground-truth window falls in), and
    warnings for a saliency head without labels to train it, or highlight labels without a head to learn them (any
    row's labels count, not a sample's)."""
    configs = getattr(model, "peft_config", {})
    active = list(getattr(model, "active_adapters", None) or [getattr(model, "active_adapter", "default")])
    for name in active:
        if getattr(configs.get(name), "grounding_head", True) is False:
            raise ValueError(f"Adapter {name!r} has no grounding head (grounding_head=False), and training trains "
                             "the grounding head with the prompts; create the adapter with grounding_head=True.")
    saliency = any(getattr(configs.get(name), "predict_saliency", False) for name in active)
    labelled = _any_highlight_labels(train_dataset)
    if labelled and not saliency:
        warnings.warn("The training rows have highlight labels (relevant_clip_ids / saliency_scores), but the adapter "
                      "has no saliency head, so highlight detection is not learnt. Create the adapter with "
                      "VTGPromptConfig(predict_saliency=True) to train it (peft-vtg train does so by default).",
                      stacklevel=3)
    if saliency and not labelled:
        warnings.warn("The adapter has a saliency head (predict_saliency=True), but no training row has highlight "
                      "labels (relevant_clip_ids / saliency_scores): the head is not trained, and its scores mean "
                      "nothing. Train on QVHighlights-style rows, or create the adapter with predict_saliency=False.",
                      stacklevel=3)
    metric = args.metric_for_best_model
    if eval_dataset is None:
        return
    eval_windows = row_column(eval_dataset, "windows")
    unlabelled = [qid for qid, windows in zip(row_column(eval_dataset, "qid"), eval_windows) if not windows]
    if unlabelled:  # the first evaluation would fail on them, after the steps before it were trained
        raise ValueError(f"{len(unlabelled)} evaluation row(s) have no ground-truth window (qids "
                         f"{unlabelled[:5]}{' ...' if len(unlabelled) > 5 else ''}); evaluation scores labelled "
                         "queries. Leave them out of eval_dataset (a test split without labels is for predict).")
    if metric.startswith("HL-"):
        eval_labelled = _any_highlight_labels(eval_dataset)
        if not (eval_labelled and saliency):
            why = ("the evaluation rows have no highlight labels" if not eval_labelled
                   else "the adapter has no saliency head")
            raise ValueError(f"metric_for_best_model={metric!r} is a highlight metric, but {why}; choose a moment "
                             "metric such as 'R1@0.5' or 'MR-full-mAP'.")
    for bucket, low, high in LENGTH_BUCKETS:
        if metric.startswith(f"MR-{bucket}-"):
            lengths = [end - start for windows in eval_windows for start, end in windows]
            if not any(low < length <= high for length in lengths):
                raise ValueError(f"metric_for_best_model={metric!r} scores ground-truth windows of {low:g}-{high:g} s, "
                                 "and the evaluation rows have none, so the evaluation cannot return it; choose "
                                 "'MR-full-mAP' or 'R1@0.5'.")


def _any_highlight_labels(rows: Any) -> bool:
    """Whether any row has highlight labels: a `datasets.Dataset`'s `relevant_clip_ids` column, or the mappings of a
    list of rows, some of which may lack it (a labelled set concatenated with an unlabelled one)."""
    if hasattr(rows, "column_names"):
        return "relevant_clip_ids" in rows.column_names and any(rows["relevant_clip_ids"])
    return any(isinstance(row, Mapping) and has_highlight_labels(row) for row in rows)


def _train(
    accelerator: Accelerator,
    model: torch.nn.Module,
    train_dataset: Sequence[dict],
    collator: Callable[[list[dict]], dict[str, Any]],
    args: VTGTrainingArguments,
    eval_dataset: Optional[Sequence[dict]],
    callbacks: Sequence[StepCallback],
    data_fingerprint: Optional[Mapping[str, Any]],
    run_info: Optional[Mapping[str, Any]],
) -> TrainResult:
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
        # A collator that draws training clips (LongVideoWindowCollator) evaluates on the whole videos.
        eval_collator = collator.for_evaluation() if hasattr(collator, "for_evaluation") else collator
        eval_loader = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size, shuffle=False,
                                 collate_fn=eval_collator, num_workers=args.dataloader_num_workers)
    module, optimizer, train_loader = accelerator.prepare(module, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
    total_steps = args.max_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = args.warmup_steps or int(args.warmup_ratio * total_steps)
    # Stepped once per optimizer step by this loop (not prepared: accelerate would step it once per process).
    # transformers' "constant" ignores the warm-up; ours is "constant after warm-up", as its help says.
    schedule = "constant_with_warmup" if args.lr_scheduler_type == "constant" and warmup else args.lr_scheduler_type
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    unwrapped = accelerator.unwrap_model(module)
    trainable = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    parameters = [p for p in unwrapped.parameters() if p.requires_grad]

    def keep_adapter_weights_only(models, weights, output_dir):
        # Checkpoints hold the adapter, not the frozen base (which would be the whole model, every time).
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in trainable}

    accelerator.register_save_state_pre_hook(keep_adapter_weights_only)
    trainable_count, total_count = unwrapped.peft_model.get_nb_trainable_parameters()
    if accelerator.is_main_process:  # on stderr, with the progress bar: stdout is the caller's (demo --json)
        print(f"trainable parameters: {trainable_count:,} of {total_count:,} "
              f"({100 * trainable_count / total_count:.3f}%); {accelerator.num_processes} process(es)", file=sys.stderr)
    if args.report_to != "none":
        accelerator.init_trackers("peft_vtg", config={k: v for k, v in asdict(args).items() if v is not None})

    # Before the fingerprint, so that a resume (which records it again from the same rows) compares equal.
    record_trained_window(unwrapped.peft_model, train_dataset, collator)
    fingerprint = run_fingerprint(unwrapped.peft_model, args, accelerator.num_processes, total_steps, train_dataset,
                                  eval_dataset, data_fingerprint)

    def choose_checkpoint() -> tuple[Optional[str], Optional[dict[str, Any]]]:
        directory, saved, notes = resolve_resume(args)
        if directory is not None:
            # Before any tensor is loaded: changed shapes get this error, not a torch traceback.
            notes += compare_fingerprints(directory, saved.get("settings"), fingerprint, args.allow_changed_settings)
        for text in notes:
            note(text)
        return directory, saved

    progress: dict[str, Any] = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "best_metric": None,
                                "history": []}
    resume_dir, saved = _on_main(accelerator, choose_checkpoint)
    if run_info is not None:
        # Only once the resume is accepted: a refused rerun must not rewrite the record of the run in this directory
        # (the model card of a finished adapter reads it).
        _on_main(accelerator, lambda: write_json_atomic(os.path.join(args.output_dir, RUN_INFO_FILE),
                                                        {**run_info, "training_arguments": asdict(args)}))
    if resume_dir is not None:
        accelerator.load_state(resume_dir, strict=False)
        _check_restored(resume_dir, trainable)
        progress = {k: v for k, v in saved.items() if k not in ("files", "settings")}
        scheduler.load_state_dict(progress.pop("scheduler"))

    best_metric = progress["best_metric"]
    history: list[dict[str, float]] = progress["history"]
    best_metrics: dict[str, float] = progress.get("best_metrics", {})
    global_step = progress["global_step"]
    # The weights we start from (a given adapter, a checkpoint) must be finite, or every step would be wasted.
    _require_finite_parameters(accelerator, parameters, global_step, "before training")
    # With fp16 the grad scaler produces inf gradients on purpose and skips those steps, so only the loss and the
    # weights are checked there.
    check_gradients = accelerator.scaler is None
    bar = tqdm(total=total_steps, initial=global_step, desc="training",
               disable=args.disable_tqdm or not accelerator.is_local_main_process)
    running_loss, running_count = 0.0, 0
    window_ids: list[tuple[list[str], list[str]]] = []  # the samples of this accumulation window, this process
    done = global_step >= total_steps
    for epoch in range(progress["epoch"], num_epochs):
        if done:
            break
        train_loader.set_epoch(epoch)
        if hasattr(collator, "set_epoch"):  # a collator that draws per epoch (LongVideoWindowCollator)
            collator.set_epoch(epoch)
        skip = progress["batches_in_epoch"] if epoch == progress["epoch"] else 0
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        batches_in_epoch = skip
        module.train()
        for batch in batches:
            window_ids.append((list(batch.get("video_ids", [])), [str(q) for q in batch.get("qid", [])]))
            with accelerator.accumulate(module):
                loss = module(**batch).loss
                accelerator.backward(loss)
                loss_bad = ~torch.isfinite(loss.detach())
                grad_bad = torch.zeros_like(loss_bad)
                if accelerator.sync_gradients and check_gradients:
                    grad_bad = ~_all_finite(p.grad for p in parameters if p.grad is not None)
                # One reduction per batch (as for the logged loss before): every process learns whether any
                # process saw a non-finite value, so all stop together instead of some waiting in a collective.
                local = torch.stack([loss.detach().float(), loss_bad.float(), grad_bad.float()])
                # .tolist(): one wait for the device per batch, not one per comparison.
                loss_sum, losses_bad, grads_bad = accelerator.reduce(local, reduction="sum").tolist()
                if losses_bad > 0 or grads_bad > 0:
                    _raise_non_finite(accelerator, global_step + 1, "loss" if losses_bad > 0 else "gradient",
                                      bool(loss_bad) if losses_bad > 0 else bool(grad_bad),
                                      window_ids[-1:] if losses_bad > 0 else window_ids, loss.detach())
                if accelerator.sync_gradients and args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(module.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            batches_in_epoch += 1
            running_loss += loss_sum / accelerator.num_processes
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            window_ids = []
            _require_finite_parameters(accelerator, parameters, global_step + 1, "after the optimizer step")
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
                    _publish_adapter(accelerator, module, parameters, args.output_dir, metrics, global_step)
            if logs:
                history.append(logs)
                accelerator.log({k: v for k, v in logs.items() if k != "step"}, step=global_step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "eval/" + args.metric_for_best_model)})
            if args.save_steps and global_step % args.save_steps == 0:
                state = {"global_step": global_step, "epoch": epoch if not end_of_epoch else epoch + 1,
                         "batches_in_epoch": 0 if end_of_epoch else batches_in_epoch, "best_metric": best_metric,
                         "best_metrics": best_metrics, "history": history, "scheduler": scheduler.state_dict()}
                _save_checkpoint(accelerator, parameters, args, state, fingerprint)
            for callback in callbacks:
                callback(global_step, logs)
            if global_step >= total_steps:
                done = True
                break
    bar.close()
    if eval_loader is None:
        _publish_adapter(accelerator, module, parameters, args.output_dir, {}, global_step)
    accelerator.wait_for_everyone()
    # The trackers only: accelerate's end_training also destroys the process group, which the caller may still use
    # (evaluation after training, a second run in one launch), and with DDP's wrapper still alive its destructor then
    # deadlocks with gloo's thread now and then, leaving the main process hung after the adapter is saved.
    for tracker in accelerator.trackers:
        tracker.finish()
    return TrainResult(global_step=global_step, best_metric=best_metric, metrics=best_metrics, history=history,
                       output_dir=args.output_dir)


def release_process_group() -> None:
    """Destroy the process group of a multi-process launch, at the end of a program that trained with `train()`.

    `train()` leaves the group to its caller (evaluation or a second run may follow in the same launch); a script
    calls this once it is done, as the `peft-vtg` commands do. Objects still holding the group (DDP's wrapper) are
    collected first: destroying it under a live wrapper deadlocks the wrapper's destructor with gloo's thread now and
    then. Does nothing in a single process."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


# ---------------------------------------------------------------- non-finite values
def _all_finite(tensors: Any) -> torch.Tensor:
    """A bool tensor: every element of every tensor is finite (no host sync until someone reads it)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def _require_finite_parameters(accelerator: Accelerator, parameters: Sequence[torch.nn.Parameter], step: int,
                               when: str) -> None:
    """Raise `NonFiniteError` on every process if any process's adapter weights are NaN/inf."""
    bad = (~_all_finite(p.detach() for p in parameters)).float().reshape(1).to(accelerator.device)
    if accelerator.reduce(bad, reduction="sum").item() == 0:
        return
    if when == "before training":
        message = (f"The adapter's weights are non-finite (NaN/inf) {when} (at step {step}): the adapter or "
                   "checkpoint it was loaded from is damaged. Nothing was trained or saved; start from another "
                   "adapter or checkpoint.")
    else:
        message = (f"Non-finite (NaN/inf) adapter weights {when} {step}: the update overflowed (learning rate too "
                   "large?). Nothing of this step was saved. Train again with a lower learning rate (a new run: a "
                   "resume cannot change it) or with max_grad_norm set.")
    raise NonFiniteError(message, step=step, kind="parameters",
                         processes=list(range(accelerator.num_processes)))


def _raise_non_finite(accelerator: Accelerator, step: int, kind: str, local_bad: bool,
                      samples: Sequence[tuple[list[str], list[str]]], loss: torch.Tensor) -> None:
    """Collect which processes and samples were involved, then raise the same `NonFiniteError` everywhere."""
    video_ids = [v for vids, _ in samples for v in vids]
    query_ids = [q for _, qids in samples for q in qids]
    reports = gather_object([(accelerator.process_index, local_bad, float(loss), video_ids, query_ids)])
    involved = [r for r in reports if r[1]] or list(reports)
    processes = [r[0] for r in involved]
    videos = [v for r in involved for v in r[3]]
    queries = [q for r in involved for q in r[4]]
    where = f"process {processes[0]}" if len(processes) == 1 else f"processes {processes}"
    if kind == "loss":
        values = ", ".join(f"{r[2]}" for r in involved)
        message = (f"Non-finite training loss ({values}) at step {step} on {where}; batch video ids "
                   f"{_ids(videos)}, query ids {_ids(queries)}. Nothing of this step was applied or saved. Check "
                   "these videos' inputs for NaN/inf (and the learning rate if the loss grew before).")
    else:
        message = (f"Non-finite gradient at step {step} (after averaging over {accelerator.num_processes} "
                   f"process(es)); the step's batches held video ids {_ids(videos)}, query ids {_ids(queries)}. "
                   "Nothing of this step was applied or saved. Check these inputs for NaN/inf or lower the learning "
                   "rate / set max_grad_norm.")
    raise NonFiniteError(message, step=step, kind=kind, processes=processes, video_ids=videos, query_ids=queries)


def _ids(ids: Sequence[str], limit: int = 16) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"[{shown}{f', ... ({len(ids)} in all)' if len(ids) > limit else ''}]" if ids else "(unknown)"


def _allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state; a second `train()` in the same single process (a notebook) with
    another precision would be refused by it, so that state is reset. Multi-process runs are left alone."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        if PartialState().num_processes == 1:
            AcceleratorState._reset_state(reset_partial_state=True)


# ---------------------------------------------------------------- checkpoints and the kept adapter
def _save_checkpoint(accelerator: Accelerator, parameters: Sequence[torch.nn.Parameter], args: VTGTrainingArguments,
                     progress: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Write `checkpoints/step-N` so that it appears only when complete (see `checkpoints.py`)."""
    step = progress["global_step"]
    _require_finite_parameters(accelerator, parameters, step, "when saving the checkpoint of step")
    root = os.path.join(args.output_dir, CHECKPOINT_DIR)
    tmp, final = os.path.join(root, tmp_name(step)), os.path.join(root, f"step-{step}")

    def prepare() -> None:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)

    _on_main(accelerator, prepare)
    accelerator.save_state(tmp)
    # After this barrier every process has written its files (each writes its own RNG state); then only the main
    # process publishes, and the others wait for it (_on_main is a collective) so none runs ahead of a failed save.
    accelerator.wait_for_everyone()

    def publish() -> None:
        finalize_checkpoint(tmp, final, {**progress, "settings": fingerprint})
        rotate_checkpoints(args.output_dir, args.save_total_limit)

    _on_main(accelerator, publish)


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


def _publish_adapter(accelerator: Accelerator, module: torch.nn.Module, parameters: Sequence[torch.nn.Parameter],
                     output_dir: str, metrics: dict[str, float], step: int) -> None:
    """Replace the kept adapter and `metrics.json` in `output_dir` together (main process writes).

    Everything is written to `output_dir/.adapter.tmp` first, with `metrics.json` (which records the sha256 of the
    weights it belongs to) written last, so a complete staging directory is one that has `metrics.json`.
    """
    accelerator.wait_for_everyone()
    _require_finite_parameters(accelerator, parameters, step, "when saving the adapter of step")
    peft_model = accelerator.unwrap_model(module).peft_model

    def write() -> None:
        staging = os.path.join(output_dir, ADAPTER_STAGING)
        if os.path.exists(staging):
            shutil.rmtree(staging)
        peft_model.save_pretrained(staging)
        record = {"step": step, **metrics, "adapter_sha256": sha256_file(os.path.join(staging, ADAPTER_WEIGHTS))}
        with open(os.path.join(staging, METRICS_FILE), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_tree(staging)
        _swap_in(staging, output_dir)

    _on_main(accelerator, write)


def _swap_in(staging: str, output_dir: str) -> None:
    """Move every entry of a complete staging directory into `output_dir`, `metrics.json` last, then remove it.

    POSIX has no rename of several files at once, and output_dir itself cannot be swapped (it also holds the
    checkpoints, run.json and the lock). Each file is replaced atomically (os.replace), so a reader sees whole files;
    the residual window is between the first and the last replace, where it can see the new weights with the old
    metrics.json. metrics.json records the sha256 of its weights, so `push` detects that (and refuses), and a crash
    in the window is completed by the next run in this directory (`_recover_staged_adapter`).
    """
    names = sorted(n for n in os.listdir(staging) if n != METRICS_FILE)
    names += [METRICS_FILE] if os.path.exists(os.path.join(staging, METRICS_FILE)) else []
    for name in names:
        source, target = os.path.join(staging, name), os.path.join(output_dir, name)
        if os.path.isdir(source):  # adapters other than "default" are saved in subdirectories
            if os.path.exists(target):
                aside = os.path.join(output_dir, f".{name}.replaced")
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(target, aside)
                os.rename(source, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(source, target)
        else:
            os.replace(source, target)
    fsync_path(output_dir)
    os.rmdir(staging)


def _recover_staged_adapter(output_dir: str) -> None:
    """Complete (roll forward) an adapter publish that a crash interrupted, or drop an incomplete staging copy."""
    staging = os.path.join(output_dir, ADAPTER_STAGING)
    if not os.path.isdir(staging):
        return
    if os.path.isfile(os.path.join(staging, METRICS_FILE)):
        note(f"completing the replacement of the kept adapter in {output_dir}, which a crash interrupted.")
        _swap_in(staging, output_dir)
    else:
        shutil.rmtree(staging, ignore_errors=True)
