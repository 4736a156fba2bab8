"""Sharing adapters: a model card for a VTG adapter directory, and the push to the Hugging Face Hub."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Optional

from .files import read_json_object, sha256_file, write_text_atomic
from .metrics import IOU_THRESHOLDS, RECALL_AT

RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CARD_FILE = "README.md"
# What a push uploads, and nothing else: no run.json (local paths), checkpoints, lock or temporary files.
UPLOADED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CARD_FILE, METRICS_FILE)


def _read_json(path: str, shown_as: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The JSON object in `path`, None when there is no such file; anything else is a `ValueError` naming the file
    (`shown_as`: its name in messages, when `path` is a private copy)."""
    if not os.path.exists(path):
        return None
    return read_json_object(path, "write it again (save_pretrained, or a training run).", shown_as)


def check_adapter_files(adapter_dir: str, shown_as: Optional[str] = None) -> None:
    """Raise, naming the file, unless `adapter_dir` holds a VTG adapter a push can publish: `adapter_config.json` a
    JSON object with `peft_type` VTG_PROMPT, `adapter_model.safetensors` a readable safetensors file, and
    `metrics.json` / `run.json`, when present, JSON objects (metrics with every R@n IoU@m key, mIoU and num_queries
    when they hold any)."""
    from safetensors import SafetensorError, safe_open

    shown = shown_as or adapter_dir
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not os.path.isfile(os.path.join(adapter_dir, name)):
            raise FileNotFoundError(f"{shown} has no {name}; is it an adapter directory?")
    config = _read_json(os.path.join(adapter_dir, ADAPTER_CONFIG), os.path.join(shown, ADAPTER_CONFIG)) or {}
    if config.get("peft_type") != "VTG_PROMPT":
        raise ValueError(f"{os.path.join(shown, ADAPTER_CONFIG)}: peft_type is {config.get('peft_type')!r}; push "
                         "publishes VTG_PROMPT adapters (made by `peft-vtg train` or get_peft_model(base, "
                         "VTGPromptConfig(...))) under a peft_vtg model card. Push other adapters with "
                         "model.push_to_hub.")
    try:
        with safe_open(os.path.join(adapter_dir, ADAPTER_WEIGHTS), framework="np") as handle:
            list(handle.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{os.path.join(shown, ADAPTER_WEIGHTS)} is not a readable safetensors file ({err}); "
                         "save the adapter again.") from None
    metrics = _read_json(os.path.join(adapter_dir, METRICS_FILE), os.path.join(shown, METRICS_FILE)) or {}
    wanted = [f"R{n}@{m}" for n in RECALL_AT for m in IOU_THRESHOLDS] + ["mIoU", "num_queries"]
    if any(key in metrics for key in wanted):
        missing = [key for key in wanted if not isinstance(metrics.get(key), (int, float))]
        if missing:
            raise ValueError(f"{os.path.join(shown, METRICS_FILE)} lacks {missing} (or they are not numbers); it is "
                             "written by training's evaluation: evaluate again, or remove the file to push without "
                             "results.")
    _read_json(os.path.join(adapter_dir, RUN_INFO_FILE), os.path.join(shown, RUN_INFO_FILE))


def _is_local_path(value: str) -> bool:
    return os.path.isabs(value) or value.startswith(("~", "./", "../")) or os.path.exists(value)


def public_name(value: Optional[str]) -> Optional[str]:
    """`value` as it may appear on the Hub: a Hub id stays, a local path becomes its last component (a model card
    or config must not publish someone's directory layout, home directory or user name)."""
    if not value or not _is_local_path(value):
        return value
    return os.path.basename(os.path.normpath(os.path.expanduser(value))) or value


def _public_source(described: str) -> str:
    """'features: /home/me/feats' -> 'features: feats' (run.json's video_source)."""
    kind, sep, path = described.partition(": ")
    return f"{kind}{sep}{public_name(path)}" if sep else str(public_name(described))


def check_metrics_match(adapter_dir: str, shown_as: Optional[str] = None) -> None:
    """Raise `ValueError` if `metrics.json` was written for other weights than `adapter_model.safetensors`.

    Training records the weights' sha256 in `metrics.json` (`adapter_sha256`); a mismatch means the directory was
    read while a run replaced its adapter, a crash interrupted that replacement, or a file was edited by hand.
    Directories without the record (older runs, hand-made) are accepted.
    """
    shown = shown_as or adapter_dir
    metrics = _read_json(os.path.join(adapter_dir, METRICS_FILE), os.path.join(shown, METRICS_FILE))
    if not metrics or "adapter_sha256" not in metrics:
        return
    actual = sha256_file(os.path.join(adapter_dir, ADAPTER_WEIGHTS))
    if actual != metrics["adapter_sha256"]:
        raise ValueError(
            f"{shown}: {METRICS_FILE} (step {metrics.get('step', '?')}) belongs to other weights than "
            f"{ADAPTER_WEIGHTS} (sha256 {metrics['adapter_sha256'][:12]}... recorded, {actual[:12]}... found). A "
            "training run is replacing the adapter, or one was interrupted while it did. Wait for the run to finish "
            "(or resume it with --resume-from-checkpoint latest, which completes the replacement) and push again."
        )


def _adapter_size(adapter_dir: str) -> tuple[int, int]:
    """(number of parameters, bytes) of the adapter weights file."""
    from safetensors import safe_open

    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    count = 0
    with safe_open(path, framework="np") as handle:
        for key in handle.keys():
            count += math.prod(handle.get_slice(key).get_shape())
    return count, os.path.getsize(path)


def model_card(adapter_dir: str, repo_id: Optional[str] = None) -> str:
    """A model card (README.md text) for a VTG adapter directory: base model, adapter config, training data, the
    metrics of `metrics.json`, and how to load it. Reads `adapter_config.json`, and `metrics.json` / `run.json`
    when the training wrote them."""
    config = _read_json(os.path.join(adapter_dir, "adapter_config.json"))
    if config is None:
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json; is it an adapter directory?")
    metrics = _read_json(os.path.join(adapter_dir, METRICS_FILE)) or {}
    run = _read_json(os.path.join(adapter_dir, RUN_INFO_FILE)) or {}
    recorded_base = run.get("base_model") or config.get("base_model_name_or_path") or "<base model>"
    base = public_name(recorded_base)
    name = repo_id or os.path.basename(os.path.abspath(adapter_dir))
    params, size = _adapter_size(adapter_dir)
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base}",
        "tags:",
        "- peft",
        "- peft-vtg",
        "- vtg_prompt",
        "- video-temporal-grounding",
        "- moment-retrieval",
        "---",
        "",
        f"# {name}",
        "",
        f"A [peft_vtg](https://pypi.org/project/peft-vtg/) VTG prompt adapter for `{base}`: learned prompt tokens in "
        "the video and text streams of the frozen encoder, plus a grounding head, for video temporal grounding "
        "(given a video and a sentence, the moment in seconds that the sentence describes).",
        "",
        "## Adapter",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("base_architecture", "num_video_tokens", "num_text_tokens", "video_prompt_depth", "text_prompt_depth",
                "keep_text_positions", "prompt_start_layer", "couple_video_to_text", "grounding_head",
                "head_hidden_size", "head_num_layers", "head_temporal_kernel_size", "head_hadamard_fusion",
                "head_video_layers", "predict_saliency", "vtm_heads"):
        if key in config:
            lines.append(f"| `{key}` | `{config[key]}` |")
    lines.append(f"| parameters | {params:,} ({size / 1e6:.2f} MB as safetensors) |")
    lines += ["", "## Training data", ""]
    if run:
        for key in ("train_annotations", "eval_annotations", "format", "video_source"):
            if run.get(key):
                value = _public_source(run[key]) if key == "video_source" else public_name(str(run[key]))
                lines.append(f"- {key.replace('_', ' ')}: `{value}`")
    else:
        lines.append("Not recorded.")
    lines += ["", "## Results", ""]
    if any(f"R1@{m}" in metrics for m in IOU_THRESHOLDS):
        lines.append("| | " + " | ".join(f"IoU={m}" for m in IOU_THRESHOLDS) + " |")
        lines.append("|---|" + "---|" * len(IOU_THRESHOLDS))
        for n in RECALL_AT:
            lines.append(f"| R@{n} | " + " | ".join(f"{metrics[f'R{n}@{m}']:.2f}" for m in IOU_THRESHOLDS) + " |")
        lines += ["", f"mIoU {metrics['mIoU']:.2f} over {metrics['num_queries']} queries"
                  + (f" (step {metrics['step']})." if "step" in metrics else ".")]
    else:
        lines.append("No evaluation was recorded.")
    lines += [
        "",
        "## How to load",
        "",
        *([f"The base model was a local directory (`{base}`); load the matching model in its place.", ""]
          if base != recorded_base else []),
        "```python",
        "import peft_vtg  # registers the method with peft",
        "from peft import PeftModel",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'base = AutoModel.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        'moments = peft_vtg.ground(model, "video.mp4", "a person opens the door", tokenizer=tokenizer)',
        "# [(start_s, end_s, score), ...], best first",
        "```",
        "",
    ]
    return "\n".join(lines)


def _note_if_public(api: Any, repo_id: str) -> None:
    """`create_repo(private=True, exist_ok=True)` leaves an existing public repository public: say so."""
    try:
        public = getattr(api.repo_info(repo_id), "private", None) is False
    except Exception:  # noqa: BLE001 - only a note; the upload itself reports real errors
        return
    if public:
        print(f"note: {repo_id} already exists and is public; --private (private=True) applies only when the "
              "repository is created. Change its visibility in its settings on the Hub (or with "
              "HfApi.update_repo_settings(repo_id, private=True)).", file=sys.stderr)


def push_adapter(
    adapter_dir: str, repo_id: str, private: bool = False, token: Optional[str] = None,
    commit_message: str = "Upload VTG prompt adapter",
) -> str:
    """Write the model card into `adapter_dir` and upload the adapter to the Hub repo `repo_id` (created if needed).

    Returns the commit URL. Exactly `UPLOADED_FILES` are uploaded: the adapter's config and weights, the card and
    `metrics.json`; never `run.json`, checkpoints, the run lock or temporary files. They are copied to a private
    snapshot first and checked there (`check_metrics_match`), so a training run that replaces the adapter during the
    upload cannot mix two steps. Local paths are reduced to their last component in the card and in the uploaded
    `adapter_config.json` (`base_model_name_or_path`).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # before anything is written
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"--repo-id {repo_id!r} is not a Hub repository id ({err}); give 'namespace/name' (or 'name'), "
                         "e.g. 'user/xclip-charades-vtg'.") from None
    check_adapter_files(adapter_dir)
    with tempfile.TemporaryDirectory(prefix="peft-vtg-push-") as snapshot:
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, METRICS_FILE, RUN_INFO_FILE):
            if os.path.isfile(os.path.join(adapter_dir, name)):
                shutil.copyfile(os.path.join(adapter_dir, name), os.path.join(snapshot, name))
        # Checked again on the copy that is uploaded (a run may have replaced files since); messages name the
        # adapter directory, not the temporary copy.
        check_adapter_files(snapshot, shown_as=adapter_dir)
        check_metrics_match(snapshot, shown_as=adapter_dir)
        card = model_card(snapshot, repo_id)
        if os.path.exists(os.path.join(snapshot, RUN_INFO_FILE)):  # read by the card, never uploaded
            os.remove(os.path.join(snapshot, RUN_INFO_FILE))
        config_path = os.path.join(snapshot, ADAPTER_CONFIG)
        config = _read_json(config_path) or {}
        if config.get("base_model_name_or_path"):
            config["base_model_name_or_path"] = public_name(config["base_model_name_or_path"])
            with open(config_path, "w", encoding="utf-8") as handle:
                json.dump(config, handle, indent=2, sort_keys=True)
        with open(os.path.join(snapshot, CARD_FILE), "w", encoding="utf-8") as handle:  # a private copy
            handle.write(card)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private:
            _note_if_public(api, repo_id)
        commit = api.upload_folder(repo_id=repo_id, folder_path=snapshot, commit_message=commit_message,
                                   allow_patterns=list(UPLOADED_FILES))
    # Only once uploaded: a failed push (offline, a refused token) leaves the adapter directory as it was.
    write_text_atomic(os.path.join(adapter_dir, CARD_FILE), card)
    return str(getattr(commit, "commit_url", commit))
