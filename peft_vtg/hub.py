"""Sharing adapters: a model card for a VTG adapter directory, and the push to the Hugging Face Hub."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from .metrics import IOU_THRESHOLDS, RECALL_AT

RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.json"


def _read_json(path: str) -> Optional[dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


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
    base = run.get("base_model") or config.get("base_model_name_or_path") or "<base model>"
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
                "head_hidden_size", "head_num_layers", "head_temporal_kernel_size", "head_hadamard_fusion", "vtm_heads"):
        if key in config:
            lines.append(f"| `{key}` | `{config[key]}` |")
    lines.append(f"| parameters | {params:,} ({size / 1e6:.2f} MB as safetensors) |")
    lines += ["", "## Training data", ""]
    if run:
        for key in ("train_annotations", "eval_annotations", "format", "video_source"):
            if run.get(key):
                lines.append(f"- {key.replace('_', ' ')}: `{run[key]}`")
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


def push_adapter(
    adapter_dir: str, repo_id: str, private: bool = False, token: Optional[str] = None,
    commit_message: str = "Upload VTG prompt adapter",
) -> str:
    """Write the model card into `adapter_dir` and upload the directory to the Hub repo `repo_id` (created if needed).

    Returns the commit URL. Only the adapter files, the card, `metrics.json` and `run.json` are uploaded (no
    checkpoints).
    """
    from huggingface_hub import HfApi

    card = model_card(adapter_dir, repo_id)
    with open(os.path.join(adapter_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=adapter_dir, commit_message=commit_message,
        allow_patterns=["adapter_config.json", "adapter_model.safetensors", "README.md", METRICS_FILE, RUN_INFO_FILE],
    )
    return str(getattr(commit, "commit_url", commit))
