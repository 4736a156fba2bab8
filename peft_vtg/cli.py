"""The `peft-vtg` command line (also `python -m peft_vtg`).

Subcommands:

- `score`: R@n IoU@m and mIoU of a predictions file against ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Optional

from .data.annotations import iter_json_lines, load_annotations
from .metrics import IOU_THRESHOLDS, RECALL_AT, evaluate_moments


def read_predictions(path: str) -> dict[str, list[list[float]]]:
    """JSON lines `{"qid": ..., "pred_windows": [[start_s, end_s, score], ...]}` -> qid (as a string) -> windows."""
    predictions: dict[str, list[list[float]]] = {}
    duplicates = []
    for number, entry in iter_json_lines(path):
        if "qid" not in entry or "pred_windows" not in entry:
            raise ValueError(f"{path}, line {number}: needs 'qid' and 'pred_windows', got keys {sorted(entry)}.")
        windows = entry["pred_windows"]
        if not isinstance(windows, list) or not all(isinstance(w, list) and len(w) in (2, 3) for w in windows):
            raise ValueError(f"{path}, line {number}: 'pred_windows' must be a list of [start, end, score].")
        qid = str(entry["qid"])
        if qid in predictions:
            duplicates.append(qid)
        predictions[qid] = windows
    if duplicates:
        raise ValueError(f"{path}: duplicate qids {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''} "
                         f"({len(duplicates)}); give each query one line.")
    return predictions


def format_table(metrics: dict[str, float]) -> str:
    """The metrics as a small text table, rows R@1 / R@5, columns IoU thresholds, then mIoU."""
    header = "      " + "".join(f"IoU={m:<6}" for m in IOU_THRESHOLDS)
    rows = [header]
    for n in RECALL_AT:
        rows.append(f"R@{n:<3} " + "".join(f"{metrics[f'R{n}@{m}']:<10.2f}" for m in IOU_THRESHOLDS))
    rows.append(f"mIoU  {metrics['mIoU']:.2f}    ({metrics['num_queries']} queries)")
    return "\n".join(rows)


def _score(args: argparse.Namespace) -> int:
    kwargs = {"durations": args.durations} if args.durations else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ground_truth = load_annotations(args.ground_truth, format=args.format, **kwargs)
    for warning in caught:
        print(f"note: {warning.message}", file=sys.stderr)
    predictions = read_predictions(args.predictions)
    metrics = evaluate_moments(
        predictions,
        {row["qid"]: row["windows"] for row in ground_truth},
        nms_threshold=args.nms_threshold,
    )
    print(json.dumps(metrics) if args.json else format_table(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-vtg", description="Parameter-efficient video temporal grounding.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="R@1/R@5 at IoU 0.1/0.3/0.5/0.7 and mIoU (percent) of predictions against ground truth.",
        description="Score moment predictions. Predictions: JSON lines {\"qid\", \"pred_windows\": [[start, end, "
        "score], ...]} in seconds. Ground truth: JSON lines {\"qid\", \"duration\", \"windows\": [[start, end], ...]}, "
        "or a native annotation file (Charades-STA .txt with --durations, ActivityNet Captions / TACoS .json, "
        "QVHighlights .jsonl); native files get qids '<vid>_<k>' (k = the pair's index within its video).",
    )
    score.add_argument("--predictions", required=True, help="predictions, JSON lines")
    score.add_argument("--ground-truth", required=True, help="ground truth: JSON lines or a native annotation file")
    score.add_argument("--format", default=None,
                       choices=["jsonl", "charades_sta", "activitynet_captions", "tacos", "qvhighlights"],
                       help="ground-truth format (default: detected from the file)")
    score.add_argument("--durations", default=None, help="Charades-STA only: the Charades csv with video lengths")
    score.add_argument("--nms-threshold", type=float, default=None,
                       help="apply temporal NMS at this IoU before taking the top n (default: none)")
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    score.set_defaults(run=_score)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"peft-vtg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
