"""Train the demo's adapter recipe on long-video windows (issue 15), for `benchmarks/long_video.py`.

    python benchmarks/train_window_adapter.py --output-dir demo-windows --max-steps 1200 --window-fraction 0.7
    python benchmarks/train_window_adapter.py --output-dir demo-1200 --max-steps 1200 --window-fraction 0   # control
    python benchmarks/long_video.py --adapter demo-windows --skip-memory --results benchmarks/results/long_video_windows.json

The demo's data (SynthVTG plain, seed 0, 1,500 training videos), config and learning rates; only the collator differs:
`LongVideoWindowCollator` gives `--window-fraction` of the rows a 74.8-s window (the median duration, 16 frames) of
the training videos put one after another, `--absent-fraction` of those windows without the row's moment (trained
as "not here"). Validation and the printed test numbers use whole videos, as the demo does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=1200)
    parser.add_argument("--window-fraction", type=float, default=0.7)
    parser.add_argument("--absent-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vtm-heads", nargs="*", default=[], help="matching heads (e.g. violet): a window without "
                        "the moment is their mismatched pair, and their match probability scales windows in `ground`")
    parser.add_argument("--inside-loss-weight", type=float, default=None, help="default: the config's (1.0)")
    parser.add_argument("--presence-contrast-weight", type=float, default=0.0,
                        help="presence_contrast_loss_weight (default 0: off)")
    parser.add_argument("--presence-contrast-negatives", type=int, default=None,
                        help="presence_contrast_negatives (default: the config's, 7)")
    args = parser.parse_args()

    from peft import PeftModel, get_peft_model

    from peft_vtg.data import GroundingCollator, LongVideoWindowCollator
    from peft_vtg.demo import DEMO_FRAMES, demo_config
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.synth.dataset import FrameSource, SynthVTG
    from peft_vtg.training import GroundingModule, VTGTrainingArguments, evaluate_grounding, train

    torch.manual_seed(args.seed)
    base, tokenizer = load_backbone()
    splits, videos = SynthVTG(seed=args.seed, num_videos={"train": 1500, "val": 150, "test": 300}).splits()
    splits = {name: rows.remove_columns(["relevant_clip_ids", "saliency_scores", "clip_length"])
              for name, rows in splits.items()}
    collator = LongVideoWindowCollator(tokenizer, FrameSource(videos), splits["train"], DEMO_FRAMES,
                                       window_fraction=args.window_fraction, absent_fraction=args.absent_fraction,
                                       seed=args.seed)
    config = dataclasses.replace(demo_config(), vtm_heads=list(args.vtm_heads),
                                 presence_contrast_loss_weight=args.presence_contrast_weight)
    if args.presence_contrast_negatives is not None:
        config = dataclasses.replace(config, presence_contrast_negatives=args.presence_contrast_negatives)
    if args.inside_loss_weight is not None:
        config = dataclasses.replace(config, inside_loss_weight=args.inside_loss_weight)
    model = get_peft_model(base, config)
    training = VTGTrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=32,
        per_device_eval_batch_size=32, learning_rate=3e-2, head_learning_rate=3e-3, warmup_ratio=0.05,
        eval_steps=max(1, args.max_steps // 3), metric_for_best_model="R1@0.5", seed=args.seed, disable_tqdm=True,
        logging_steps=max(1, args.max_steps // 10),
    )
    started = time.perf_counter()
    train(model, splits["train"], collator, training, eval_dataset=splits["val"])
    seconds = time.perf_counter() - started
    reloaded = PeftModel.from_pretrained(load_backbone()[0], args.output_dir)
    whole = GroundingCollator(tokenizer, FrameSource(videos, num_frames=DEMO_FRAMES))
    loader = torch.utils.data.DataLoader(splits["test"], batch_size=32, collate_fn=whole)
    metrics, _ = evaluate_grounding(GroundingModule(reloaded), loader, splits["test"], disable_tqdm=True)
    print(json.dumps({"training_seconds": round(seconds, 1), "test": {k: round(v, 2) for k, v in metrics.items()
                                                                      if k.startswith(("R1@", "R5@", "mIoU"))}}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
