"""`peft-vtg demo`: prompt-tune the shipped backbone on SynthVTG, evaluate on its test split, report.

The whole workflow of the library on its embedded default, offline: generate data, get_peft_model with a
VTGPromptConfig, train with the accelerate loop (best adapter on val), reload the saved adapter, evaluate on test.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .data.collate import GroundingCollator
from .synth.backbone import load_backbone
from .synth.dataset import FrameSource, SynthVTG
from .training import GroundingModule, VTGTrainingArguments, evaluate_grounding, release_process_group, train
from .vtg_prompt.config import VTGPromptConfig

DEMO_FRAMES = 16


@dataclass
class DemoResult:
    """What the demo measured."""

    metrics: dict[str, float]
    held_out_metrics: Optional[dict[str, float]]
    trainable_parameters: int
    base_parameters: int
    adapter_bytes: int
    adapter_dir: str
    history: list[dict[str, float]] = field(default_factory=list)


def demo_config() -> VTGPromptConfig:
    """The demo's adapter, the benchmark's `vtg-video` (its best VTG variant, see BENCHMARKS.md): 8 video prompt
    tokens in every layer of the vision tower (3), and a 2-layer head of width 64 with a temporal convolution of 3
    frames and Hadamard fusion. Text prompts are off: at the demo's budget they add training time but no accuracy
    on this backbone (`vtg-deep` in BENCHMARKS.md)."""
    return VTGPromptConfig(num_video_tokens=8, num_text_tokens=0, video_prompt_depth=3,
                           head_hidden_size=64, head_num_layers=2, head_num_attention_heads=4, head_dropout=0.1,
                           head_temporal_kernel_size=3, head_hadamard_fusion=True, boundary_smoothing=1.0)


def run_demo(
    output_dir: str = "vtg-demo-adapter",
    train_videos: int = 1500,
    val_videos: int = 150,
    test_videos: int = 300,
    max_steps: int = 400,
    batch_size: int = 32,
    learning_rate: float = 3e-2,
    head_learning_rate: Optional[float] = 3e-3,
    seed: int = 0,
    domain: str = "plain",
    config: Optional[VTGPromptConfig] = None,
    disable_tqdm: bool = False,
    highlights: bool = False,
) -> DemoResult:
    """Run the demo and return its numbers; the adapter (best on val R1@0.5) is saved in `output_dir`.

    `learning_rate` is the prompts' peak rate and `head_learning_rate` the head's (None: the same), the rates the
    benchmark chose on val for `vtg-video`. `domain` is how the SynthVTG videos look: "plain", as in the backbone's
    pre-training, or "cluttered", a domain shift (see `peft_vtg.synth.generator.DOMAINS`). `highlights` also
    trains a saliency head on SynthVTG's highlight labels (`predict_saliency=True`), and the metrics then include
    highlight detection; without it the labels are dropped from the rows.
    """
    from peft import PeftModel, get_peft_model

    torch.manual_seed(seed)
    base, tokenizer = load_backbone()
    base_parameters = sum(p.numel() for p in base.parameters())
    data = SynthVTG(seed=seed, domain=domain,
                    num_videos={"train": train_videos, "val": val_videos, "test": test_videos})
    splits, videos = data.splits()
    if not highlights:
        splits = {name: rows.remove_columns(["relevant_clip_ids", "saliency_scores", "clip_length"])
                  for name, rows in splits.items()}
    collator = GroundingCollator(tokenizer, FrameSource(videos, num_frames=DEMO_FRAMES))

    config = config or demo_config()
    if highlights:
        config = dataclasses.replace(config, predict_saliency=True)
    model = get_peft_model(base, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = VTGTrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=32, learning_rate=learning_rate,
        head_learning_rate=head_learning_rate, warmup_ratio=0.05, eval_steps=max(1, max_steps // 3),
        metric_for_best_model="R1@0.5", seed=seed, disable_tqdm=disable_tqdm, logging_steps=max(1, max_steps // 10),
    )
    result = train(model, splits["train"], collator, args, eval_dataset=splits["val"])

    # Test the adapter as a user would get it: reloaded from disk onto a fresh backbone.
    reloaded = PeftModel.from_pretrained(load_backbone()[0], output_dir)
    test_rows = splits["test"]
    loader = torch.utils.data.DataLoader(test_rows, batch_size=32, collate_fn=collator)
    metrics, predictions = evaluate_grounding(GroundingModule(reloaded), loader, test_rows, disable_tqdm=disable_tqdm)
    held_out = test_rows.filter(lambda row: row["held_out"])
    held_out_metrics = None
    if len(held_out):
        from .metrics import evaluate_moments

        held_out_metrics = evaluate_moments({q: predictions[q] for q in held_out["qid"]},
                                            {row["qid"]: row["windows"] for row in held_out})
    adapter_bytes = os.path.getsize(os.path.join(output_dir, "adapter_model.safetensors"))
    return DemoResult(metrics, held_out_metrics, trainable, base_parameters, adapter_bytes,
                      os.path.abspath(output_dir), result.history)


def report(result: DemoResult) -> str:
    """The demo's printed summary."""
    from .metrics import format_table

    lines = ["", "SynthVTG test split (adapter reloaded from disk):", format_table(result.metrics)]
    if result.held_out_metrics:
        m = result.held_out_metrics
        lines.append(f"held-out attribute combinations ({m['num_queries']} queries): R1@0.5 {m['R1@0.5']:.2f}, "
                     f"mIoU {m['mIoU']:.2f}")
    share = 100.0 * result.trainable_parameters / result.base_parameters
    lines += [
        f"trainable parameters: {result.trainable_parameters:,} ({share:.2f}% of the {result.base_parameters:,} "
        "base parameters)",
        f"adapter: {result.adapter_bytes / 1024:.1f} KiB, saved to {result.adapter_dir}",
    ]
    return "\n".join(lines)


def demo_main(args: Any) -> int:
    """`peft-vtg demo` (see `cli.py` for the flags)."""
    import json

    result = run_demo(output_dir=args.output_dir, train_videos=args.train_videos, val_videos=args.val_videos,
                      test_videos=args.test_videos, max_steps=args.max_steps, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, head_learning_rate=args.head_learning_rate, seed=args.seed,
                      domain=args.domain, disable_tqdm=args.json, highlights=args.highlights)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under a multi-process launch, one report
        print(json.dumps(result.metrics) if args.json else report(result))
    release_process_group()  # train() leaves the process group to its caller
    return 0
