"""`peft-vtg extract`: per-frame features of your own videos, for --features-dir or Moment-DETR-family tools."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import (
    check_single_process,
    frame_size,
    positive_float,
    positive_int,
    resolve_pretrained,
)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    from ..data.video import VideoFiles
    from ..extract import MOMENT_DETR_FPS, extract_features
    from ..inference import DEFAULT_NUM_FRAMES
    from ..injection import bind_architecture

    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample each video).")
    fps = args.fps
    if args.format == "moment_detr":
        if args.num_frames is not None or (fps is not None and fps != MOMENT_DETR_FPS):
            raise ValueError(f"--format moment_detr writes one feature per 2-second clip (--fps {MOMENT_DETR_FPS}); "
                             "drop --num-frames / --fps.")
        fps = MOMENT_DETR_FPS
    check_single_process("extract", "run it directly (`peft-vtg extract ...`), or build a frozen-prefix cache "
                         "(`peft-vtg cache`), which several processes share.")
    if not os.path.isdir(args.video_dir):
        raise FileNotFoundError(f"--video-dir {args.video_dir}: no such directory.")
    if not args.video_suffix.strip(".") or os.sep in args.video_suffix:
        raise ValueError(f"--video-suffix {args.video_suffix!r} is not a file suffix; give one such as .mp4.")
    vids = sorted(name[: -len(args.video_suffix)] for name in os.listdir(args.video_dir)
                  if name.endswith(args.video_suffix) and len(name) > len(args.video_suffix)
                  and os.path.isfile(os.path.join(args.video_dir, name)))  # not a folder named x.mp4
    if not vids:
        raise ValueError(f"--video-dir {args.video_dir} has no {args.video_suffix} files (see --video-suffix).")
    base_path = resolve_pretrained(args.base_model, f"--base-model {args.base_model}", "config.json")
    model = AutoModel.from_pretrained(base_path)
    bound = bind_architecture(model)
    num_frames = args.num_frames or (None if fps else bound.required_num_frames or DEFAULT_NUM_FRAMES)
    image_size = frame_size(args, bound)
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=fps, image_size=image_size,
                        suffix=args.video_suffix)
    manifest = extract_features(model, vids, source, args.output_dir, file_format=args.format, dtype=args.dtype,
                                base_model_name=args.base_model, disable_tqdm=args.disable_tqdm)
    print(f"features of {len(manifest['videos'])} videos ({manifest['feature_size']} values per frame, "
          f"{args.format}) in {os.path.abspath(args.output_dir)}")
    return 0



def add_parser(commands: Any) -> None:
    """Add `extract` to the `peft-vtg` subcommands."""
    extract = commands.add_parser(
        "extract", help="per-frame features of your own videos, for --features-dir",
        description="Run the frozen video encoder of a base model over every video file of a directory and write "
        "per-video per-frame features (what the grounding head reads; equal to encode_video) with a manifest of how "
        "they were made: <vid>.npy by default, .safetensors / .h5 on request, or --format moment_detr: <vid>.npz "
        "with a 'features' array at one row per 2-second clip, as Moment-DETR-family tools read them. Resumable.")
    extract.add_argument("--base-model", required=True, help="base model path or Hub id (AutoModel.from_pretrained)")
    extract.add_argument("--video-dir", required=True, help="directory of video files <vid><suffix>")
    extract.add_argument("--video-suffix", default=".mp4", help="video file suffix (default: .mp4)")
    extract.add_argument("--num-frames", type=positive_int, default=None, help="frames sampled per video (default: "
                         "the encoder's fixed count, else 32)")
    extract.add_argument("--fps", type=positive_float, default=None, help="sample at this rate (frames per second) "
                         "instead of --num-frames")
    extract.add_argument("--image-size", type=positive_int, default=None, help="frame size in pixels (default: the "
                         "encoder's)")
    extract.add_argument("--output-dir", required=True, help="feature directory (an unfinished one is resumed)")
    extract.add_argument("--format", default="npy", choices=["npy", "safetensors", "h5", "moment_detr"],
                         help="file format (default: npy)")
    extract.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="storage dtype (default: fp32)")
    extract.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    extract.set_defaults(run=run)
