"""Checkpoints on disk: atomic publication, integrity checks, which one `latest` means, and the settings fingerprint
that decides whether a resume may continue a run.

Layout: `output_dir/checkpoints/step-N/` holds accelerate's state (`model.safetensors` with the adapter tensors,
`optimizer.bin`, `random_states_<rank>.pkl`, ...) and `progress.json`. `progress.json` is written last and holds the
loop's position, the scheduler state, a manifest (size and sha256 of every other file) and the run's settings
fingerprint. A checkpoint is built in `checkpoints/.step-N.tmp/` and renamed to `step-N` only when complete, so a
directory named `step-N` is complete unless something damaged it afterwards; the manifest catches that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Optional

from .arguments import VTGTrainingArguments
from ..files import fsync_path, fsync_tree, remove_tree_atomically, sha256_file
from .safety import note

CHECKPOINT_DIR = "checkpoints"
PROGRESS_FILE = "progress.json"
FINGERPRINT_VERSION = 1
_PROGRESS_KEYS = ("global_step", "epoch", "batches_in_epoch", "scheduler", "history")
# What a checkpoint written before manifests existed must hold at least.
_LEGACY_REQUIRED = ("model.safetensors", "optimizer.bin", "random_states_0.pkl")

# ---------------------------------------------------------------- the settings fingerprint
# Settings that do not affect what the run computes, never compared.
IGNORED_SETTINGS = frozenset({"resume_from_checkpoint", "allow_changed_settings", "disable_tqdm"})
# Settings a resume honours from the resume point on (a changed value is used, nothing restored contradicts it):
# refused by default so that nothing changes by accident, allowed with allow_changed_settings=True. Keys starting
# with "data." (the caller's description of its data files) are in this class too.
SAFE_TO_CHANGE = frozenset({
    "base_model",  # the name or path only; the base's class and config are compared separately
    "output_dir", "logging_steps", "eval_steps", "save_steps", "save_total_limit", "report_to",
    "dataloader_num_workers", "per_device_eval_batch_size",
    "max_steps", "num_train_epochs", "total_steps",  # extend or shorten the run; the schedule follows the new total
    "max_grad_norm", "mixed_precision", "train_base_model_modes",
    "train_data_sha256",  # e.g. a fixed annotation row; the number of rows must stay (data position)
})
# Everything else can never change, even with allow_changed_settings: the restored state would silently win
# (learning rates, weight decay and warm-up live in the restored optimizer/scheduler), the data position would mean
# other samples (batch size, accumulation, processes, seed, number of rows), the tensors would not fit (base model,
# adapter config), or the best metric kept so far would be compared with a differently computed one (eval set,
# metric, decoding).


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def _rows_digest(rows: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=repr).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def run_fingerprint(
    peft_model: Any,
    args: VTGTrainingArguments,
    num_processes: int,
    total_steps: int,
    train_dataset: Sequence[Any],
    eval_dataset: Optional[Sequence[Any]] = None,
    data_fingerprint: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """A flat, JSON-serialisable record of everything that decides what a run computes.

    `data_fingerprint` is the caller's description of its data files (paths, sizes, mtimes); its keys are stored as
    `data.<key>` and count as safe to change (the rows themselves are hashed here).
    """
    base = peft_model.get_base_model()
    adapter_config = peft_model.peft_config[peft_model.active_adapter].to_dict()
    base_name = adapter_config.get("base_model_name_or_path") or getattr(base.config, "_name_or_path", "") or ""
    base_config = {k: v for k, v in base.config.to_dict().items()
                   if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")}
    fingerprint: dict[str, Any] = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "base_model": str(base_name),
        "base_model_class": type(base).__name__,
        "base_model_config_sha256": _digest(base_config),
    }
    for key, value in sorted(adapter_config.items()):
        if key in ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping"):
            continue
        fingerprint[f"adapter.{key}"] = json.loads(json.dumps(value, default=str))
    trainable = sorted((n, list(p.shape), str(p.dtype)) for n, p in peft_model.named_parameters() if p.requires_grad)
    fingerprint["adapter_tensors_sha256"] = _digest(trainable)
    fingerprint["train_examples"] = len(train_dataset)
    fingerprint["train_data_sha256"] = _rows_digest(train_dataset)
    fingerprint["eval_examples"] = None if eval_dataset is None else len(eval_dataset)
    fingerprint["eval_data_sha256"] = None if eval_dataset is None else _rows_digest(eval_dataset)
    for key, value in asdict(args).items():
        if key not in IGNORED_SETTINGS:
            fingerprint[key] = value
    fingerprint["num_processes"] = num_processes
    fingerprint["total_steps"] = total_steps
    for key, value in (data_fingerprint or {}).items():
        fingerprint[f"data.{key}"] = json.loads(json.dumps(value, default=str))
    return fingerprint


def _is_safe(key: str) -> bool:
    return key in SAFE_TO_CHANGE or key.startswith("data.")


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return True
    return old == new


class SettingsChangedError(ValueError):
    """A resume's settings differ from those of the run that wrote the checkpoint.

    Attributes:
        changes: key -> (value in the checkpoint, value now) of every difference.
        never: the keys among them that can never change.
    """

    def __init__(self, message: str, *, changes: Optional[dict[str, tuple[Any, Any]]] = None,
                 never: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.changes = dict(changes or {})
        self.never = list(never)


_MISSING = "<not recorded>"


def compare_fingerprints(checkpoint: str, old: Optional[Mapping[str, Any]], new: Mapping[str, Any],
                         allow_changed_settings: bool) -> list[str]:
    """Refuse (`SettingsChangedError`) a resume whose settings differ; return notes on the allowed differences."""
    if old is None:
        return [f"{checkpoint} has no settings fingerprint (written by an older peft_vtg); its settings cannot be "
                "checked against this run's."]
    changes = {key: (old.get(key, _MISSING), new.get(key, _MISSING)) for key in sorted(set(old) | set(new))
               if key != "fingerprint_version" and not _same(old.get(key, _MISSING), new.get(key, _MISSING))}
    if not changes:
        return []

    def describe(keys: Sequence[str]) -> str:
        return "; ".join(f"{key}: {_short(changes[key][0])} -> {_short(changes[key][1])}" for key in keys)

    never = [k for k in changes if not _is_safe(k)]
    safe = [k for k in changes if _is_safe(k)]
    if never:
        message = (f"Cannot resume from {checkpoint}: settings that a resume can never change differ from the run "
                   f"that wrote it (checkpoint -> now): {describe(never)}.")
        if safe:
            message += f" Also changed (allowed with --allow-changed-settings): {describe(safe)}."
        message += " Resume with the original settings, or start a new run in a new output_dir."
        raise SettingsChangedError(message, changes=changes, never=never)
    if not allow_changed_settings:
        raise SettingsChangedError(
            f"Cannot resume from {checkpoint}: settings differ from the run that wrote it (checkpoint -> now): "
            f"{describe(safe)}. Resume with the same settings, or pass --allow-changed-settings "
            "(allow_changed_settings=True) to continue with the new values.", changes=changes)
    notes = [f"resuming {checkpoint} with changed settings (checkpoint -> now): {describe(safe)}."]
    if "total_steps" in changes and new.get("lr_scheduler_type") != "constant":
        notes.append("the learning-rate schedule is recomputed for the new number of steps, so the rate jumps to "
                     "where the new schedule is at this step.")
    return notes


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:64] + "..." + text[-12:]


# ---------------------------------------------------------------- writing
def tmp_name(step: int) -> str:
    return f".step-{step}.tmp"


def finalize_checkpoint(tmp_dir: str, final_dir: str, progress: dict[str, Any]) -> None:
    """Record the manifest in `progress.json`, flush everything, rename `tmp_dir` to `final_dir` (main process).

    Every process's files must be complete (the caller waits for all of them first).
    """
    files = {}
    for name in sorted(os.listdir(tmp_dir)):
        path = os.path.join(tmp_dir, name)
        if os.path.isfile(path) and name != PROGRESS_FILE:
            files[name] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
    with open(os.path.join(tmp_dir, PROGRESS_FILE), "w", encoding="utf-8") as handle:
        json.dump({**progress, "files": files}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_tree(tmp_dir)
    if os.path.exists(final_dir):  # a checkpoint of this step from before a resume (e.g. a damaged one skipped)
        remove_tree_atomically(final_dir, f".{os.path.basename(final_dir)}.replaced")
    os.rename(tmp_dir, final_dir)
    fsync_path(os.path.dirname(final_dir))


def rotate_checkpoints(output_dir: str, keep: Optional[int]) -> None:
    """Remove all but the newest `keep` checkpoints, each out of sight first (see `remove_tree_atomically`)."""
    if keep is None:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        remove_tree_atomically(old, f".{os.path.basename(old)}.deleting")


def clean_interrupted(output_dir: str) -> None:
    """Remove what an interrupted save or removal left in `checkpoints/` (main process, under the run lock)."""
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return
    for name in sorted(os.listdir(root)):
        if re.fullmatch(r"\.step-\d+\.(tmp|deleting|replaced)", name):
            if name.endswith(".tmp"):
                note(f"removing {os.path.join(root, name)}: a checkpoint whose save was interrupted.")
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


# ---------------------------------------------------------------- reading
class DamagedCheckpointError(ValueError):
    """A checkpoint is incomplete or damaged; the message names the file and what is wrong with it."""


def list_checkpoints(output_dir: str) -> list[str]:
    """`output_dir/checkpoints/step-N` directories, oldest first (temporary and half-removed ones excluded)."""
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, n)) for n in os.listdir(root)
             if (m := re.fullmatch(r"step-(\d+)", n)) and os.path.isdir(os.path.join(root, n))]
    return [path for _, path in sorted(found)]


def validate_checkpoint(directory: str) -> dict[str, Any]:
    """`progress.json` of a complete, undamaged checkpoint; `DamagedCheckpointError` naming the bad file otherwise."""
    progress_path = os.path.join(directory, PROGRESS_FILE)
    if not os.path.isfile(progress_path):
        raise DamagedCheckpointError(f"{directory} is incomplete: {PROGRESS_FILE} is missing (the save did not "
                                     "finish, or this is not a peft_vtg checkpoint).")
    try:
        with open(progress_path, encoding="utf-8") as handle:
            progress = json.load(handle)
    except (OSError, ValueError) as err:
        raise DamagedCheckpointError(f"{progress_path} is damaged: it does not parse as JSON ({err}).") from None
    missing = [k for k in _PROGRESS_KEYS if not isinstance(progress, dict) or k not in progress]
    if missing:
        raise DamagedCheckpointError(f"{progress_path} is damaged: it lacks {missing}.")
    files = progress.get("files")
    if files is None:  # written before manifests: check what can be checked
        for name in _LEGACY_REQUIRED:
            if not os.path.isfile(os.path.join(directory, name)):
                raise DamagedCheckpointError(f"{directory} is incomplete: {name} is missing.")
        return progress
    for name, expected in files.items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise DamagedCheckpointError(f"{directory} is damaged: {name} is missing.")
        size = os.path.getsize(path)
        if size != expected["size"]:
            raise DamagedCheckpointError(f"{directory} is damaged: {name} has {size} bytes, {expected['size']} were "
                                         "written (truncated or overwritten).")
        if sha256_file(path) != expected["sha256"]:
            raise DamagedCheckpointError(f"{directory} is damaged: the content of {name} differs from what was "
                                         "written (sha256 mismatch).")
    return progress


def resolve_resume(args: VTGTrainingArguments) -> tuple[Optional[str], Optional[dict[str, Any]], list[str]]:
    """(checkpoint directory, its validated progress, notes) for `args.resume_from_checkpoint`.

    An explicitly named checkpoint must be complete and undamaged. `"latest"` takes the newest one that is, and notes
    every newer one it skipped and why.
    """
    if args.resume_from_checkpoint is None:
        earlier = list_checkpoints(args.output_dir)
        if earlier:
            # A new run among them would lose its own: rotation keeps the highest steps, the earlier run's.
            names = ", ".join(os.path.basename(path) for path in earlier[-3:])
            raise ValueError(
                f"{os.path.join(args.output_dir, CHECKPOINT_DIR)} holds checkpoints of an earlier run ({names}); a new "
                "run there would mix its checkpoints with them. Resume that run (--resume-from-checkpoint latest), "
                "give another --output-dir, or delete that checkpoints directory to start over."
            )
        return None, None, []
    if args.resume_from_checkpoint != "latest":
        directory = args.resume_from_checkpoint
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"resume_from_checkpoint={directory!r} is not a directory.")
        if not os.path.isfile(os.path.join(directory, PROGRESS_FILE)) and not any(
                os.path.exists(os.path.join(directory, n)) for n in _LEGACY_REQUIRED):
            raise FileNotFoundError(f"{directory} is not a peft_vtg checkpoint (no {PROGRESS_FILE}).")
        return directory, validate_checkpoint(directory), []
    found = list_checkpoints(args.output_dir)
    if not found:
        raise FileNotFoundError(f"resume_from_checkpoint='latest' but {args.output_dir}/{CHECKPOINT_DIR} holds none.")
    notes = []
    for directory in reversed(found):
        try:
            progress = validate_checkpoint(directory)
        except DamagedCheckpointError as err:
            notes.append(f"skipping {directory} for 'latest': {err}")
            continue
        return directory, progress, notes
    raise DamagedCheckpointError(f"resume_from_checkpoint='latest': no checkpoint in {args.output_dir}/"
                                 f"{CHECKPOINT_DIR} is complete. " + " ".join(notes))
