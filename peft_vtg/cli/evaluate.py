"""`peft-vtg evaluate`: the metrics of an adapter (or a prompt ensemble) on an annotation file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..files import write_text_atomic
from ..metrics import format_table
from ..submission import submission_lines
from .common import (
    add_data_arguments,
    add_model_arguments,
    add_window_arguments,
    check_output_file,
    check_queries_fit,
    check_video_ids,
    ensemble_names,
    iou,
    load_model,
    optional_value,
    positive_int,
    read_annotations,
    video_setup,
)


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from ..data.collate import GroundingCollator
    from ..batch_predict import ground_rows_by_video
    from ..data.video import VideoFiles
    from ..inference import LONG_VIDEO_FACTOR, long_video_window_seconds, predicts_saliency
    from ..training import EnsembleGroundingModule, GroundingModule, grounding_metrics, predict_grounding
    from ..training.evaluation import GroundingPredictions, clip_length_of

    # The cheap checks first: a bad annotation file or output path fails before the model is loaded.
    check_output_file(args.predictions_out, "--predictions-out")
    rows = read_annotations(args, args.annotations)
    model, tokenizer, _ = load_model(args, trainable=False)
    source, num_frames, _ = video_setup(args, model)
    check_video_ids(source, rows)
    check_queries_fit(args, model, tokenizer, [f"qid {qid}" for qid in rows["qid"]], rows["query"])
    names = ensemble_names(args)
    accelerator = Accelerator()
    # Video files longer than 1.5 of the adapter's trained windows go window by window (`ground_queries`, as
    # `predict` does); the rest, and all feature or cache inputs, through the batched single pass.
    long_rows: list[int] = []
    window = long_video_window_seconds(model, args.window_seconds, names) if isinstance(source, VideoFiles) else None
    if window is not None:
        long_rows = [i for i, row in enumerate(rows) if row["duration"] > LONG_VIDEO_FACTOR * window]
    short = rows.select([i for i in range(len(rows)) if i not in set(long_rows)]) if long_rows else rows
    predictions = GroundingPredictions(moments={}, clip_length=clip_length_of(rows))
    if len(short):
        collator = GroundingCollator(tokenizer, source, num_frames=num_frames, max_text_length=args.max_text_length)
        wrapped = (GroundingModule(model) if names is None
                   else EnsembleGroundingModule(model, names, args.ensemble_fusion))
        # Only the loader is prepared (sharded over processes): a frozen adapter has nothing to synchronise, and
        # DDP refuses a module without trainable parameters.
        loader = accelerator.prepare(DataLoader(short, batch_size=args.batch_size, collate_fn=collator))
        predictions = predict_grounding(wrapped.to(accelerator.device), loader, accelerator, top_k=args.top_k,
                                        nms_threshold=args.nms_threshold, clip_length=clip_length_of(rows))
    if long_rows:
        selected = [rows[i] for i in long_rows]
        saliency = predicts_saliency(model, names)
        items = ground_rows_by_video(
            model, tokenizer, selected, {row["vid"]: source.path(row["vid"]) for row in selected},
            process_index=accelerator.process_index, num_processes=accelerator.num_processes,
            disable_tqdm=not accelerator.is_local_main_process, num_frames=args.num_frames, fps=args.fps,
            image_size=args.image_size, top_k=args.top_k, nms_threshold=args.nms_threshold,
            max_text_length=args.max_text_length, return_saliency=saliency, clip_length=clip_length_of(rows),
            window_seconds=args.window_seconds, window_overlap=args.window_overlap, adapter_names=names,
            ensemble_fusion=args.ensemble_fusion)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            items = gather_object(items)
        for qid, moments, clip_scores in items:
            predictions.moments[qid] = moments
            if clip_scores is not None:
                predictions.saliency[qid] = clip_scores
    metrics = grounding_metrics(predictions, rows)
    if accelerator.is_main_process:
        if args.predictions_out:
            # The QVHighlights submission format (peft_vtg.submission); a NaN score (a broken model) raises instead
            # of writing a file no evaluator can read.
            lines = submission_lines(predictions.moments, predictions.saliency, rows)
            write_text_atomic(args.predictions_out, "".join(lines))
        print(json.dumps(metrics, allow_nan=False) if args.json else format_table(metrics))
    return 0



def add_parser(commands: Any) -> None:
    """Add `evaluate` to the `peft-vtg` subcommands."""
    evaluate = commands.add_parser("evaluate", help="metrics of an adapter on an annotation file",
                                   description="Evaluate an adapter: R@1/R@5 at IoU 0.1/0.3/0.5/0.7 and mIoU.")
    add_model_arguments(evaluate, adapter_required=True, ensemble=True)
    add_data_arguments(evaluate, "--annotations", required=True)
    evaluate.add_argument("--batch-size", type=positive_int, default=16, help="pairs per batch (default: 16)")
    evaluate.add_argument("--top-k", type=positive_int, default=10,
                          help="moments per query (default: 10, as Moment-DETR submissions; R@1 and R@5 read the "
                          "first 1 and 5, which do not depend on it)")
    evaluate.add_argument("--nms-threshold", type=optional_value(iou), default=0.5, help="NMS IoU (default: 0.5)")
    evaluate.add_argument("--predictions-out", default=None,
                          help="also write the predictions in QVHighlights' submission format (JSON lines: qid, "
                          "query, vid, pred_relevant_windows, pred_saliency_scores), which `score` and Moment-DETR's "
                          "evaluator read")
    add_window_arguments(evaluate, "with --video-dir: ")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(run=run)
