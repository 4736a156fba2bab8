"""`VTGTrainingArguments`: every setting of the training loop, validated, with help text (used by the CLI too)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from ..metrics import IOU_THRESHOLDS, RECALL_AT
from ..moment_detr_eval import BRIEF_KEYS
from ..vtg_prompt.config import check_field_types

# What `metric_for_best_model` may name (higher is better): the metrics every evaluation returns, Moment-DETR's
# moment-retrieval keys (a bucket without queries is absent), and the highlight keys (with highlight labels and a
# saliency head).
METRIC_NAMES = (tuple(f"R{n}@{m}" for n in RECALL_AT for m in IOU_THRESHOLDS) + ("mIoU",)
                + BRIEF_KEYS)

SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = ("none", "tensorboard", "all")


@dataclass
class VTGTrainingArguments:
    """Settings of `peft_vtg.training.train`. Step counts are optimizer steps (after gradient accumulation)."""

    output_dir: str = field(
        default="vtg-adapter",
        metadata={"help": "Where the adapter (best on the eval metric, else the last), metrics.json and checkpoints/ "
                  "are written."},
    )
    num_train_epochs: int = field(default=3, metadata={"help": "Passes over the training set (unless max_steps)."})
    max_steps: Optional[int] = field(
        default=None, metadata={"help": "Stop after this many optimizer steps; overrides num_train_epochs."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training pairs per process per step."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Evaluation pairs per process per batch."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients are summed before each optimizer step."}
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate of AdamW (prompt tuning likes larger rates than full "
                                "fine-tuning)."}
    )
    head_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Peak learning rate of the task heads (grounding and matching), when it should differ from "
                  "learning_rate, e.g. a fresh head next to a fully fine-tuned backbone. None = learning_rate."},
    )
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": f"Decay after warm-up: one of {', '.join(SCHEDULERS)}."}
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps spent warming up linearly."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps; when > 0 it overrides warmup_ratio."})
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay, on weight matrices only (not biases, norms, prompt tokens)."},
    )
    max_grad_norm: Optional[float] = field(
        default=1.0, metadata={"help": "Clip the gradient norm to this value; None disables clipping."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of every random generator (data order, init, dropout)."})
    mixed_precision: str = field(
        default="no", metadata={"help": f"Autocast through accelerate: one of {', '.join(PRECISIONS)}."}
    )
    eval_steps: Optional[int] = field(
        default=None, metadata={"help": "Evaluate every N steps; None evaluates at the end of each epoch."}
    )
    metric_for_best_model: str = field(
        default="R1@0.5",
        metadata={"help": "Metric (higher is better) that picks the adapter kept in output_dir, e.g. R1@0.7, mIoU."},
    )
    save_steps: Optional[int] = field(
        default=None, metadata={"help": "Save a resumable checkpoint (accelerate state) every N steps; None = never."}
    )
    save_total_limit: Optional[int] = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (oldest removed); None keeps all."}
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "Resume from a checkpoint directory, or 'latest' for the newest complete one in "
                  "output_dir/checkpoints. The checkpoint's files are verified and its settings must match this run's "
                  "(see allow_changed_settings). Only resume your own checkpoints: accelerate's optimizer/RNG state "
                  "files are pickles."},
    )
    allow_changed_settings: bool = field(
        default=False,
        metadata={"help": "When resuming, accept changed settings that a resume honours (max_steps/num_train_epochs, "
                  "logging/eval/save frequency, output_dir, workers, eval batch size, max_grad_norm, mixed "
                  "precision, data file paths/dates). Settings the restored state would contradict (model, adapter "
                  "config, batch size, accumulation, processes, seed, learning rates, schedule, weight decay, number "
                  "of training rows, eval set and metric) are refused even with it."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the loss and learning rate every N steps."})
    report_to: str = field(
        default="none",
        metadata={"help": f"accelerate trackers: one of {', '.join(TRACKERS)} ('all' = every installed tracker)."},
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    train_base_model_modes: bool = field(
        default=False,
        metadata={"help": "Let the frozen base model's dropout/batch-norm run in training mode. Default: the base "
                  "stays in eval mode and only the adapter (prompts, heads) trains."},
    )
    top_k: int = field(default=5, metadata={"help": "Moments kept per query when evaluating (R@5 needs 5)."})
    nms_threshold: Optional[float] = field(
        default=0.5, metadata={"help": "Temporal NMS IoU threshold of the decoded moments; None disables NMS."}
    )
    max_span_seconds: Optional[float] = field(
        default=None, metadata={"help": "Longest moment the decoder may return, in seconds; None = no limit."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bars."})

    def __post_init__(self) -> None:
        for name in ("output_dir", "resume_from_checkpoint"):  # pathlib.Path, as everywhere else in the API
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        check_field_types(self, [f.name for f in dataclasses.fields(self)])
        if self.resume_from_checkpoint is not None and not self.resume_from_checkpoint.strip():
            raise ValueError("resume_from_checkpoint is empty; give a checkpoint directory, 'latest', or leave it out "
                             "(None) to start a new run.")
        positive = ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "logging_steps", "top_k")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        for name in ("max_steps", "eval_steps", "save_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"head_learning_rate must be > 0 or None (= learning_rate), got {self.head_learning_rate!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.dataloader_num_workers < 0:
            raise ValueError("warmup_steps, weight_decay and dataloader_num_workers must be >= 0.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}.")
        for name, allowed in (("lr_scheduler_type", SCHEDULERS), ("mixed_precision", PRECISIONS),
                              ("report_to", TRACKERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; choose one of {list(allowed)}.")
        if self.nms_threshold is not None and not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1] or None, got {self.nms_threshold!r}.")
        if not self.output_dir.strip():
            raise ValueError("output_dir is empty; give the directory the adapter is written to.")
        if not 0 <= self.seed < 2**32:  # what numpy's and torch's seeding accept
            raise ValueError(f"seed must be a whole number in [0, 2**32 - 1], got {self.seed!r}.")
        if self.max_span_seconds is not None and not self.max_span_seconds > 0:
            raise ValueError(f"max_span_seconds must be > 0 (seconds) or None (no limit), got {self.max_span_seconds!r}.")
        if self.metric_for_best_model not in METRIC_NAMES:
            # Checked here, not at the first evaluation: a typo would otherwise fail only after the first epoch.
            raise ValueError(f"metric_for_best_model={self.metric_for_best_model!r} is not a metric the evaluation "
                             f"returns; choose one of {list(METRIC_NAMES)}.")
