"""`peft-vtg demo`: the embedded default, prompt-tuning the shipped backbone on SynthVTG."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    check_output_dir,
    positive_float,
    positive_int,
    seed,
)


def run(args: argparse.Namespace) -> int:
    from ..demo import demo_main

    check_output_dir(args.output_dir, "--output-dir")
    return demo_main(args)



def add_parser(commands: Any) -> None:
    """Add `demo` to the `peft-vtg` subcommands."""
    demo = commands.add_parser(
        "demo", help="the embedded default: prompt-tune the shipped backbone on SynthVTG and evaluate",
        description="Prompt-tune the shipped SynthVTG backbone (a small pre-trained CLIP) with VTG prompts and a "
        "grounding head on SynthVTG's train split, keep the best adapter on val, reload it and evaluate on test. "
        "Prints the metrics, the trainable parameters (count and share of the base) and the adapter size. Offline; "
        "a few minutes on 2 CPU cores with the defaults.",
    )
    demo.add_argument("--output-dir", default="vtg-demo-adapter", help="where the adapter is saved")
    # The same defaults as peft_vtg.demo.run_demo (a test keeps them equal; importing it here would slow --help).
    demo.add_argument("--train-videos", type=positive_int, default=1500, help="SynthVTG train videos (2 queries each)")
    demo.add_argument("--val-videos", type=positive_int, default=150, help="validation videos")
    demo.add_argument("--test-videos", type=positive_int, default=300, help="test videos")
    demo.add_argument("--max-steps", type=positive_int, default=400, help="optimizer steps")
    demo.add_argument("--batch-size", type=positive_int, default=32, help="training pairs per step")
    demo.add_argument("--learning-rate", type=positive_float, default=3e-2, help="peak learning rate of the prompts")
    demo.add_argument("--head-learning-rate", type=positive_float, default=3e-3, help="peak learning rate of the head")
    demo.add_argument("--seed", type=seed, default=0, help="seed of the data and the training")
    demo.add_argument("--domain", default="plain", choices=("cluttered", "plain"),
                      help="how the videos look: plain (as in the backbone's pre-training) or cluttered (a domain "
                           "shift: busy coloured backgrounds, stronger noise)")
    demo.add_argument("--highlights", action="store_true",
                      help="also train a saliency head on SynthVTG's highlight labels and report highlight detection "
                      "(HL-mAP, HL-Hit1); it costs 1-3 points of R1@0.5 at this budget (BENCHMARKS.md)")
    demo.add_argument("--json", action="store_true", help="print only the test metrics, as one JSON object")
    demo.set_defaults(run=run)
