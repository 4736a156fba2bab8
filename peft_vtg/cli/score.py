"""`peft-vtg score`: metrics of a predictions file against ground truth."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..metrics import evaluate_moments, format_table
from ..submission import read_submission
from .common import (
    iou,
    read_annotations,
)


def read_predictions(path: str) -> dict[str, list[list[float]]]:
    """qid -> windows `[start_s, end_s, score]` of a prediction file (`peft_vtg.submission.read_submission`, which
    also reads the saliency scores)."""
    return read_submission(path).windows


def run(args: argparse.Namespace) -> int:
    from ..data.annotations import read_report
    from ..moment_detr_eval import brief, evaluate_highlights, evaluate_moment_retrieval
    from ..training.evaluation import clip_length_of, highlight_truth

    if args.rank_as_listed and args.nms_threshold is not None:
        raise ValueError("--rank-as-listed scores the windows in the order given; --nms-threshold ranks them by score. "
                         "Give one of the two.")
    ground_truth = read_annotations(args, args.ground_truth)
    submission = read_submission(args.predictions)
    has_windows = bool(submission.windows)  # before the dropped rows' predictions are set aside
    # Rows the ground-truth reader dropped (dirty annotations) are not scored; their predictions are set aside.
    predicted = set(submission.windows) | set(submission.saliency)
    dropped = set(read_report(ground_truth).get("dropped_qids", [])) & predicted
    if dropped:
        print(f"note: ignoring the predictions of {len(dropped)} queries whose ground-truth rows were dropped: "
              f"{sorted(dropped)[:10]}{' ...' if len(dropped) > 10 else ''}", file=sys.stderr)
        submission = submission.without(dropped)
    truth = {row["qid"]: row["windows"] for row in ground_truth}
    unlabelled = [qid for qid, windows in truth.items() if not windows]
    if unlabelled:
        raise ValueError(f"{args.ground_truth} has no ground-truth windows for {len(unlabelled)} queries, e.g. qids "
                         f"{unlabelled[:5]}: it reads as queries to predict, not ground truth; give each line its "
                         "windows under 'relevant_windows' or 'windows'.")
    metrics: dict[str, Any] = {}
    if has_windows:  # all of them set aside: evaluate_moments names the kept queries without predictions
        metrics = evaluate_moments(submission.windows, truth, nms_threshold=args.nms_threshold,
                                   rank_by_score=not args.rank_as_listed, strict_iou=args.strict_iou)
        metrics.update(brief(evaluate_moment_retrieval(submission.windows, truth)))
    if submission.saliency:
        highlights = highlight_truth(ground_truth)
        if not highlights:
            print("note: the predictions have saliency scores but the ground truth has no highlight labels "
                  "(relevant_clip_ids, saliency_scores); they are not scored.", file=sys.stderr)
        else:
            extra = sorted(set(submission.saliency) - set(truth), key=str)
            if extra:
                raise ValueError(f"Saliency scores for unknown qids {extra[:10]} ({len(extra)}).")
            metrics.update(brief(evaluate_highlights(submission.saliency, highlights, clip_length_of(ground_truth))))
            metrics["HL-num_queries"] = len(highlights)
    if not metrics:
        raise ValueError(f"Nothing to score: {args.predictions} holds saliency scores only, and {args.ground_truth} "
                         "has no highlight labels (relevant_clip_ids, saliency_scores) to score them against; give "
                         "predicted windows (pred_relevant_windows), or ground truth with highlight labels.")
    # allow_nan=False: NaN is not JSON; a metric that cannot be computed raises above instead of printing NaN.
    print(json.dumps(metrics, allow_nan=False) if args.json else format_table(metrics))
    return 0



def add_parser(commands: Any) -> None:
    """Add `score` to the `peft-vtg` subcommands."""
    score = commands.add_parser(
        "score",
        help="R@n IoU@m, mIoU, mAP and highlight metrics (percent) of predictions against ground truth.",
        description="Score moment (and highlight) predictions: R@1/R@5 at IoU 0.1/0.3/0.5/0.7 and mIoU, and "
        "Moment-DETR's standalone_eval keys (MR-full-mAP, MR-full-mAP@0.5/0.75, MR-short/middle/long-mAP, "
        "MR-full-R1@0.5/0.7, and with highlight labels HL-min-Fair/Good/VeryGood-mAP/Hit1). Predictions: the "
        "QVHighlights submission format that Moment-DETR and lighthouse write, JSON lines {\"qid\", "
        "\"pred_relevant_windows\": [[start, end, score], ...] (scores optional: then ranked as listed), "
        "\"pred_saliency_scores\": [one per 2-s clip] (optional)}; peft_vtg's older \"pred_windows\" works too. "
        "Ground truth: JSON lines {\"qid\", \"duration\", \"windows\"}, QVHighlights files "
        "(highlight_val_release.jsonl, highlight_test_with_gt.jsonl), or a native annotation file (Charades-STA .txt with --durations, ActivityNet "
        "Captions / TACoS .json); native files get qids '<vid>_<k>' (k = the pair's index within its video). "
        "Predictions for rows the ground-truth reader drops are set aside with a note.",
    )
    score.add_argument("--predictions", required=True, help="predictions, JSON lines")
    score.add_argument("--ground-truth", required=True, help="ground truth: JSON lines or a native annotation file")
    score.add_argument("--format", default=None,
                       choices=["jsonl", "charades_sta", "activitynet_captions", "tacos", "qvhighlights"],
                       help="ground-truth format (default: detected from the file)")
    score.add_argument("--durations", default=None, help="Charades-STA only: the Charades csv with video lengths")
    score.add_argument("--nms-threshold", type=iou, default=None,
                       help="apply temporal NMS at this IoU before taking the top n (default: none)")
    score.add_argument("--rank-as-listed", action="store_true",
                       help="R@n takes the windows in the order given instead of ranking them by score (the first "
                       "listed is the top-1): then R1@m equals Moment-DETR's MR-full-R1@m")
    score.add_argument("--strict-iou", action="store_true",
                       help="R@n counts a window when its IoU is above m, as 2D-TAN's evaluation code does (default: "
                       "IoU >= m, as VSLNet, Moment-DETR and lighthouse count; the two differ only on an IoU of "
                       "exactly m)")
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    score.set_defaults(run=run)
