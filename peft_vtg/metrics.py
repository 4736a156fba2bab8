"""Moment-retrieval metrics, as the VTG literature reports them: R@n IoU@m and mIoU, in percent.

Definitions (as in 2D-TAN / Moment-DETR evaluation code):

- temporal IoU of two windows [s1, e1], [s2, e2] in seconds: intersection / union with
  intersection = max(0, min(e1, e2) - max(s1, s2)) and union = max(e1, e2) - min(s1, s2) (the span of the two, as
  those evaluators compute it: equal to the sum of lengths minus the intersection for overlapping windows, and
  rounded like theirs, so an IoU of exactly a threshold is decided as they decide it); two zero-length windows have
  IoU 0 unless they coincide, which gives 1.
- with several ground-truth windows (QVHighlights), a prediction's IoU is its best IoU over the windows.
- R@n IoU@m: percentage of queries for which at least one of the n highest-scored predictions (after temporal NMS,
  when a threshold is given) has IoU >= m (VSLNet, Moment-DETR, lighthouse; `strict_iou=True`: IoU > m, as 2D-TAN's
  code counts). Ties in score keep the order in which the predictions were given.
- mIoU: mean over queries of the IoU of the top-1 prediction, in percent.

Predictions are scored as given: they are not clipped to the video, so a window beyond the duration simply overlaps
less. A window with end < start, or a start, end or score that is not a finite number (NaN, Inf), is an error naming
the query: a NaN would otherwise rank arbitrarily and turn the metrics into NaN. Every metric returned is a finite
number; with no query to average over there is no metric, and that is an error too.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Optional

from .moment_detr_eval import BRIEF_KEYS
from .timeline import Window, check_nms_threshold, check_windows, rank_windows, temporal_iou, temporal_nms

# Re-exported: the metrics API is where users look for them.
__all__ = ["IOU_THRESHOLDS", "RECALL_AT", "best_iou", "check_windows", "evaluate_moments", "format_table",
           "rank_predictions", "temporal_iou", "temporal_nms"]

rank_predictions = rank_windows

RECALL_AT = (1, 5)
IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def _as_list(windows: object) -> object:
    tolist = getattr(windows, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(windows, (str, bytes, Sequence)) else windows


def best_iou(prediction: Window, ground_truth: Sequence[Window]) -> float:
    """The prediction's IoU with the best-matching ground-truth window."""
    if not ground_truth:
        raise ValueError("A query needs at least one ground-truth window.")
    return max(temporal_iou(prediction, window) for window in ground_truth)


def evaluate_moments(
    predictions: Mapping[str, Sequence[Window]],
    ground_truth: Mapping[str, Sequence[Window]],
    recall_at: Sequence[int] = RECALL_AT,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    nms_threshold: Optional[float] = None,
    rank_by_score: bool = True,
    strict_iou: bool = False,
) -> dict[str, float]:
    """R@n IoU@m for every n and m, and mIoU, in percent, over the queries of `ground_truth`.

    Args:
        predictions: qid -> predicted windows `[start_s, end_s, score]` (any order; ranked by score here).
        ground_truth: qid -> ground-truth windows `[start_s, end_s]` (one or several).
        nms_threshold: if given, temporal NMS at this IoU is applied before taking the top n.
        rank_by_score: False takes the windows in the order given (the first is the top-1) instead of ranking them
            by score: Moment-DETR's definition of R1 (`peft_vtg.moment_detr_eval`). Not with `nms_threshold`.
        strict_iou: count a window when its IoU is above m (`IoU > m`, as 2D-TAN's evaluation code counts) instead
            of at least m (`IoU >= m`: VSLNet, Moment-DETR, lighthouse). The two differ only on an IoU of exactly m.

    Returns:
        `{"R1@0.1": ..., "R5@0.7": ..., "mIoU": ..., "num_queries": N}`.

    Raises:
        ValueError: a qid of the ground truth has no prediction, a predicted qid is not in the ground truth, a
            query has no predicted window, or a window is malformed or not finite (see `check_windows`); the message
            names the qids.
    """
    for name, value in (("predictions", predictions), ("ground_truth", ground_truth)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping qid -> windows (a dict), got {type(value).__name__}.")
    # Arrays (numpy, torch) of windows are read as the lists they hold.
    predictions, ground_truth = ({qid: _as_list(windows) for qid, windows in value.items()}
                                 for value in (predictions, ground_truth))
    for name, values in (("recall_at", recall_at), ("iou_thresholds", iou_thresholds)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{name} must be a non-empty list, got {values!r}.")
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in recall_at):
        raise ValueError(f"recall_at must hold whole numbers >= 1 (R@n ranks), got {list(recall_at)!r}.")
    if not all(isinstance(m, numbers.Real) and not isinstance(m, bool) and 0.0 < m <= 1.0 for m in iou_thresholds):
        raise ValueError(f"iou_thresholds must hold IoUs in (0, 1], got {list(iou_thresholds)!r}.")
    check_nms_threshold(nms_threshold)
    for name, flag in (("rank_by_score", rank_by_score), ("strict_iou", strict_iou)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}.")
    if not rank_by_score and nms_threshold is not None:
        raise ValueError("rank_by_score=False scores the windows in the order given; temporal NMS ranks them by "
                         "score. Give one of the two (nms_threshold=None, or rank_by_score=True).")
    missing = sorted(set(ground_truth) - set(predictions), key=str)
    extra = sorted(set(predictions) - set(ground_truth), key=str)
    if missing or extra:
        # No qid in common is a naming convention, not missing work: say so, with an example of each side.
        hint = (f" No predicted qid is a ground-truth qid: the two name queries differently (e.g. {extra[0]!r} "
                f"against {missing[0]!r}). Native annotation files get '<vid>_<k>' qids (k: the pair's index within "
                "its video), while released JSON lines number their queries; score against the file the predictions "
                "were made from." if missing and extra and not set(predictions) & set(ground_truth) else "")
        raise ValueError(
            f"Predictions and ground truth must cover the same queries: missing predictions for {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} ({len(missing)}), predictions for unknown qids {extra[:10]}"
            f"{' ...' if len(extra) > 10 else ''} ({len(extra)}).{hint}"
        )
    if not ground_truth:
        raise ValueError("No queries to evaluate: the metrics are undefined without at least one query.")
    for qid, windows in predictions.items():
        check_windows(windows, f"predictions for query {qid!r}", with_score=True)
    for qid, windows in ground_truth.items():
        check_windows(windows, f"ground truth of query {qid!r}", with_score=False)
    hits = {(n, m): 0 for n in recall_at for m in iou_thresholds}
    iou_sum = 0.0
    for qid, windows in ground_truth.items():
        if not windows:
            raise ValueError(f"Query {qid!r} has no ground-truth window; a query to score needs at least one.")
        if not rank_by_score:
            ranked = list(predictions[qid])
        elif nms_threshold is not None:
            ranked = temporal_nms(predictions[qid], nms_threshold)
        else:
            ranked = rank_predictions(predictions[qid])
        if not ranked:
            raise ValueError(f"Query {qid!r} has no predicted window.")
        ious = [best_iou(window, windows) for window in ranked[: max(recall_at)]]
        iou_sum += ious[0]
        for n in recall_at:
            top = max(ious[:n])
            for m in iou_thresholds:
                hits[(n, m)] += top > m if strict_iou else top >= m
    count = len(ground_truth)
    result = {f"R{n}@{m}": 100.0 * hits[(n, m)] / count for n in recall_at for m in iou_thresholds}
    result["mIoU"] = 100.0 * iou_sum / count
    result["num_queries"] = count
    return result


def format_table(metrics: dict[str, float]) -> str:
    """The metrics as a small text table, rows R@1 / R@5, columns IoU thresholds, then mIoU; below it Moment-DETR's
    headline keys (`peft_vtg.moment_detr_eval.BRIEF_KEYS`) that are present, e.g. mAP and the highlight metrics."""
    needed = [f"R{n}@{m}" for n in RECALL_AT for m in IOU_THRESHOLDS] + ["mIoU", "num_queries"]
    absent = [name for name in needed if name not in metrics]
    extra = [key for key in BRIEF_KEYS if key in metrics]
    if absent and (len(absent) < len(needed) or not extra):
        raise ValueError(f"format_table needs the metrics of evaluate_moments with the default recall_at and "
                         f"iou_thresholds; missing {absent}.")
    rows = []
    if not absent:
        rows.append("      " + "".join(f"IoU={m:<6}" for m in IOU_THRESHOLDS))
        for n in RECALL_AT:
            rows.append(f"R@{n:<3} " + "".join(f"{metrics[f'R{n}@{m}']:<10.2f}" for m in IOU_THRESHOLDS))
        rows.append(f"mIoU  {metrics['mIoU']:.2f}    ({metrics['num_queries']} queries)")
    groups = [[key for key in extra if key.startswith("MR-")], [key for key in extra if key.startswith("HL-")]]
    for group in groups:
        for start in range(0, len(group), 3):
            rows.append("  ".join(f"{key} {metrics[key]:.2f}" for key in group[start:start + 3]))
    return "\n".join(rows)
