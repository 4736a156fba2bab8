"""`peft-vtg predict`: moments of a query in a video file, or of many queries in many videos (resumable)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .common import (
    add_model_arguments,
    add_window_arguments,
    check_output_file,
    check_single_process,
    check_queries_fit,
    ensemble_names,
    frame_size,
    iou,
    load_model,
    optional_value,
    positive_float,
    positive_int,
)


def _predict_batch(args: argparse.Namespace) -> int:
    """`predict --videos ... --queries ... --output ...`: many videos and queries, resumable (`batch_predict`)."""
    from ..batch_predict import predict_to_file, read_query_file, video_paths

    given = [flag for flag, value in (("--video", args.video), ("--query", args.query)) if value is not None]
    missing = [flag for flag, value in (("--videos", args.videos), ("--queries", args.queries),
                                        ("--output", args.output)) if value is None]
    if given or missing:
        fix = "missing " + ", ".join(missing) if missing else "drop " + ", ".join(given)
        raise ValueError(f"Batch prediction takes --videos DIR_OR_LIST, --queries FILE and --output FILE (not "
                         f"--video / --query); {fix}.")
    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample the videos).")
    check_single_process("predict", "run it directly (`peft-vtg predict ...`). For several GPUs, split --queries "
                         "into parts and run one predict per GPU (CUDA_VISIBLE_DEVICES=k), each with its own --output.")
    check_output_file(args.output, "--output")
    if os.path.exists(args.output) and os.path.exists(args.queries) and os.path.samefile(args.output, args.queries):
        raise ValueError(f"--output {args.output} is the --queries file; predictions go to a file of their own "
                         "(e.g. preds.jsonl).")
    rows = read_query_file(args.queries, args.format)  # the cheap checks before the model is loaded
    paths = video_paths(args.videos, [row["vid"] for row in rows], args.video_suffix)
    model, tokenizer, _ = load_model(args, trainable=False)
    frame_size(args, model.base_model.model.vtg_prompts.bound)  # a size the encoder cannot take names the flag
    check_queries_fit(args, model, tokenizer, [f"qid {row['qid']}" for row in rows], [row["query"] for row in rows])
    counts = predict_to_file(model, tokenizer, rows, paths, args.output, disable_tqdm=args.disable_tqdm,
                             num_frames=args.num_frames, fps=args.fps, image_size=args.image_size, top_k=args.top_k,
                             nms_threshold=args.nms_threshold, return_saliency=args.saliency,
                             max_text_length=args.max_text_length, window_seconds=args.window_seconds,
                             window_overlap=args.window_overlap,
                             adapter_names=ensemble_names(args), ensemble_fusion=args.ensemble_fusion)
    print(f"wrote {counts['written']} predictions for {counts['videos']} videos to {os.path.abspath(args.output)}"
          + (f" ({counts['resumed']} already there)" if counts["resumed"] else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..inference import ground

    if args.videos is not None or args.queries is not None or args.output is not None:
        return _predict_batch(args)
    if args.video is None or args.query is None:
        raise ValueError("Give --video FILE and --query TEXT (one video), or --videos, --queries and --output "
                         "(batch prediction).")
    if not os.path.isfile(args.video):  # before the model is loaded
        raise FileNotFoundError(f"--video {args.video}: no such file.")
    if not args.query.strip():
        raise ValueError("--query is empty; give the sentence to ground.")
    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample the video).")
    model, tokenizer, _ = load_model(args, trainable=False)
    frame_size(args, model.base_model.model.vtg_prompts.bound)
    check_queries_fit(args, model, tokenizer, ["--query"], [args.query])
    result = ground(model, args.video, args.query, tokenizer=tokenizer, num_frames=args.num_frames, fps=args.fps,
                    image_size=args.image_size, top_k=args.top_k, nms_threshold=args.nms_threshold,
                    max_text_length=args.max_text_length, return_saliency=args.saliency,
                    window_seconds=args.window_seconds,
                    window_overlap=args.window_overlap, adapter_names=ensemble_names(args),
                    ensemble_fusion=args.ensemble_fusion)
    moments = result.moments if args.saliency else result
    as_dicts = [{"start": s, "end": e, "score": p} for s, e, p in moments]
    if args.json:
        output: Any = as_dicts
        if args.saliency:
            clips = [{"start": s, "end": e, "score": p} for s, e, p in result.saliency]
            output = {"moments": as_dicts, "saliency": clips}
        print(json.dumps(output, allow_nan=False))
    else:
        for start, end, score in moments:
            print(f"{start:8.2f} s  {end:8.2f} s  score {score:.3f}")
        if args.saliency:
            print("saliency per clip (logit; higher = more of a highlight):")
            for start, end, score in result.saliency:
                print(f"{start:8.2f} s  {end:8.2f} s  {score:+.3f}")
    return 0



def add_parser(commands: Any) -> None:
    """Add `predict` to the `peft-vtg` subcommands."""
    predict = commands.add_parser(
        "predict", help="moments of a query in a video file, or of many queries in many videos",
        description="Print the moments (start and end in seconds, score) that a query describes in a video file, best "
        "first (--video, --query). Batch mode (--videos, --queries, --output): every query of a JSON-lines file "
        "{\"qid\", \"vid\", \"query\"} grounded in its video, each video decoded and encoded once for all of its "
        "queries, written as QVHighlights submission lines (what `score` reads); rerunning after an interruption "
        "skips the queries already written. Videos of any length: a video longer than 1.5 trained windows is "
        "grounded window by window.")
    add_model_arguments(predict, adapter_required=True, ensemble=True)
    predict.add_argument("--video", default=None, help="video file (decoded with PyAV)")
    predict.add_argument("--query", default=None, help="the sentence to ground")
    predict.add_argument("--videos", default=None, help="batch: a directory of <vid><suffix> video files, or a text "
                         "file listing video paths, relative ones relative to the list file (vid = file name without "
                         "extension)")
    predict.add_argument("--queries", default=None, help="batch: JSON lines {\"qid\", \"vid\", \"query\"} (or an "
                         "annotation file, see --format)")
    predict.add_argument("--output", default=None, help="batch: where the predictions go (JSON lines; resumed)")
    predict.add_argument("--video-suffix", default=".mp4", help="batch: video file suffix (default: .mp4)")
    predict.add_argument("--format", default=None, choices=["jsonl", "charades_sta", "activitynet_captions", "tacos",
                                                           "qvhighlights"],
                         help="batch: format of --queries (default: JSON lines of qid, vid, query)")
    predict.add_argument("--disable-tqdm", action="store_true", help="batch: no progress bar")
    predict.add_argument("--num-frames", type=positive_int, default=None, help="frames sampled (default: the "
                         "encoder's fixed count, else the adapter's trained frames per video, else 32)")
    predict.add_argument("--fps", type=positive_float, default=None, help="sample at this rate (frames per second) "
                         "instead of --num-frames")
    predict.add_argument("--image-size", type=positive_int, default=None, help="frame size in pixels (default: the "
                         "encoder's)")
    predict.add_argument("--max-text-length", type=positive_int, default=None,
                         help="truncate queries to this many tokens (default: none; a query longer than the text "
                         "encoder takes is an error naming it, before any video)")
    predict.add_argument("--top-k", type=positive_int, default=5, help="moments to print (default: 5)")
    predict.add_argument("--nms-threshold", type=optional_value(iou), default=0.5, help="NMS IoU (default: 0.5)")
    add_window_arguments(predict)
    predict.add_argument("--saliency", action="store_true",
                         help="also print the highlight score of every 2-second clip (adapters trained with a "
                         "saliency head); with --json the output becomes {\"moments\": [...], \"saliency\": [...]}")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.set_defaults(run=run)
