"""`peft-vtg cache`: the frozen video encoder's hidden states at a layer, stored once per video."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import (
    check_video_ids,
    non_negative_int,
    frame_size,
    positive_float,
    positive_int,
    read_annotations,
    resolve_pretrained,
)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    from ..cache import build_cache
    from ..data.video import VideoFiles
    from ..inference import DEFAULT_NUM_FRAMES
    from ..injection import bind_architecture

    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample each video).")
    if args.layer < 0:
        raise ValueError(f"--layer must be >= 0 (the video layer whose input is cached), got {args.layer}.")
    durations: dict[str, float] = {}
    for path in args.annotations:  # before the model is loaded: a bad file fails fast
        for row in read_annotations(args, path):
            durations.setdefault(row["vid"], float(row["duration"]))
    base_path = resolve_pretrained(args.base_model, f"--base-model {args.base_model}", "config.json")
    model = AutoModel.from_pretrained(base_path)
    bound = bind_architecture(model)
    num_frames = args.num_frames or (None if args.fps else bound.required_num_frames or DEFAULT_NUM_FRAMES)
    image_size = frame_size(args, bound)
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=args.fps, image_size=image_size,
                        suffix=args.video_suffix)
    check_video_ids(source, {"vid": list(durations)})
    manifest = build_cache(model, list(durations), source, args.layer, args.output_dir,
                           feature_layers=args.feature_layers, dtype=args.dtype,
                           batch_size=args.batch_size, base_model_name=args.base_model, durations=durations,
                           num_workers=args.num_workers, disable_tqdm=args.disable_tqdm)
    from accelerate import PartialState  # only after build_cache's Accelerator (see _train)

    if PartialState().is_main_process:
        size = sum(os.path.getsize(os.path.join(args.output_dir, name)) for name in os.listdir(args.output_dir))
        if manifest["layer"] < manifest["num_layers"]:
            what = f"hidden states entering video layer {manifest['layer']} of {manifest['num_layers']}"
        else:
            layers = manifest.get("feature_layers") or 1
            what = (f"final outputs of the last {layers} video layers" if layers > 1 else "final video states") + (
                f", {manifest['tokens']} token(s) per frame")
        print(f"cached {len(manifest['videos'])} videos ({what}, {manifest['dtype']}) in "
              f"{os.path.abspath(args.output_dir)} ({size / 1e6:.2f} MB)")
    return 0



def add_parser(commands: Any) -> None:
    """Add `cache` to the `peft-vtg` subcommands."""
    cache = commands.add_parser(
        "cache", help="store the frozen video encoder's hidden states at a layer, once per video",
        description="Run the frozen video encoder of a base model once over the videos of annotation files, up to "
        "video layer --layer k, and store the hidden states entering layer k (frames, tokens, dim) per video in "
        "safetensors shards with a manifest. `train` / `evaluate --cache-dir` then run only layers k and above "
        "(video prompts must start at layer >= k; k = the number of layers stores the final states, for adapters "
        "without video prompts: only the tokens the encoder pools, e.g. CLIP's CLS, and with --feature-layers m "
        "those of the last m layers, for heads with --head-video-layers m). Resumable: rerun the same command after an interruption. Several processes: "
        "`accelerate launch --num_processes N -m peft_vtg cache ...`.",
    )
    cache.add_argument("--base-model", required=True, help="base model path or Hub id (AutoModel.from_pretrained)")
    cache.add_argument("--annotations", required=True, nargs="+", metavar="FILE",
                       help="annotation file(s) naming the videos (e.g. the train and the test split)")
    cache.add_argument("--format", default=None, choices=["jsonl", "charades_sta", "activitynet_captions", "tacos",
                                                         "qvhighlights"],
                       help="annotation format (default: detected from the file)")
    cache.add_argument("--durations", default=None, help="Charades-STA: the Charades csv with video lengths")
    cache.add_argument("--strict", action="store_true", help="raise on the first bad annotation row")
    cache.add_argument("--video-dir", required=True, help="directory of video files <vid><suffix>, decoded with PyAV")
    cache.add_argument("--video-suffix", default=".mp4", help="video file suffix (default: .mp4)")
    cache.add_argument("--num-frames", type=positive_int, default=None, help="frames sampled per video (default: "
                       "the encoder's fixed count, else 32)")
    cache.add_argument("--fps", type=positive_float, default=None, help="sample at this rate (frames per second) "
                       "instead of --num-frames")
    cache.add_argument("--image-size", type=positive_int, default=None, help="frame size in pixels (default: the "
                       "encoder's)")
    cache.add_argument("--layer", type=int, required=True, help="k: cache the hidden states entering video layer k "
                       "(0 = after the embeddings; the number of layers = the final states)")
    cache.add_argument("--feature-layers", type=positive_int, default=1,
                       help="with --layer L (final states): store the outputs of the last m layers, for adapters "
                       "whose head reads several (--head-video-layers m) (default: 1)")
    cache.add_argument("--output-dir", required=True, help="cache directory (an unfinished cache there is resumed)")
    cache.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                       help="storage dtype (default: fp16; fp32 reproduces the uncached path exactly)")
    cache.add_argument("--batch-size", type=positive_int, default=8, help="videos per forward and per shard "
                       "(default: 8); memory holds one batch")
    cache.add_argument("--num-workers", type=non_negative_int, default=0,
                       help="processes decoding videos ahead (default: 0)")
    cache.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    cache.set_defaults(run=run)
