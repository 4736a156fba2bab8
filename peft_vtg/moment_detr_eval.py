"""The QVHighlights metrics of Moment-DETR's `standalone_eval/eval.py` (which lighthouse, QD-DETR, CG-DETR and UniVTG
reuse), written anew and checked against it: moment-retrieval mAP by window length and its R1, highlight-detection
mAP and Hit@1. Values are in percent and not rounded (the reference rounds each to 2 decimals).

Moment retrieval (`evaluate_moment_retrieval`), per query:

- Only the first `max_predictions` (10) windows are used, in the order given, then ranked by score (ties keep that
  order). Each window is matched, at each IoU threshold of 0.50:0.05:0.95, to the ground-truth window of highest IoU
  not yet matched at that threshold (equal IoUs: the later-listed window first, as the reference's reversed argsort
  does); a window below the threshold, or with every candidate already matched, is a false positive. AP is the
  VOC-2011 interpolated area under the precision-recall curve; `mAP` is the mean over queries and thresholds.
- Buckets by ground-truth window length l (seconds): `short` 0 < l <= 10, `middle` 10 < l <= 30, `long`
  30 < l <= 150 (QVHighlights' longest video), `full` everything. A query enters a bucket with those of its windows
  that fall in it, and leaves it when none do.
- `R1@m` as Moment-DETR defines it: the FIRST LISTED window is the top-1 (not the best-scored one), hit when its IoU
  with the best-matching ground-truth window is >= m. `peft_vtg.metrics.evaluate_moments` ranks by score instead;
  for a list sorted by score, as peft_vtg writes them, the two agree.

Highlight detection (`evaluate_highlights`), per query: the video is cut into `int(duration / clip_length)` clips of
2 s; clip i's label from annotator a is `saliency_scores[j][a] >= level` for `relevant_clip_ids[j] == i`, else 0,
for the levels Fair (2), Good (3) and VeryGood (4). Predicted clip scores are cut or zero-padded to that number of
clips. `HL-mAP`: per annotator, the average precision of the clips ranked by score (precision interpolated over
higher recalls, averaged over the points where recall grows; a query whose clips are all positive scores 1, all
negative 0), mean over annotators and queries. `HL-Hit1`: the best-scored clip (first on ties) is a hit when any
annotator labels it positive.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from .timeline import check_clip_count, check_clip_length, check_windows, is_finite_number

# The reference's thresholds: np.linspace(0.5, 0.95, 10), each rounded to 2 decimals.
MAP_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
R1_IOU_THRESHOLDS = MAP_IOU_THRESHOLDS
# (name, lower bound (exclusive), upper bound (inclusive)) of ground-truth window length, seconds.
LENGTH_BUCKETS = (("short", 0.0, 10.0), ("middle", 10.0, 30.0), ("long", 30.0, 150.0))
SALIENCY_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
CLIP_SECONDS = 2.0
MAX_PREDICTIONS = 10


def _cross_iou(window: Sequence[float], others: np.ndarray) -> np.ndarray:
    """IoU of one window [start, end] with each row of `others` (n, 2), union = sum of lengths - intersection."""
    intersection = np.clip(np.minimum(window[1], others[:, 1]) - np.maximum(window[0], others[:, 0]), 0.0, None)
    union = (window[1] - window[0]) + (others[:, 1] - others[:, 0]) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection / union


def _paired_iou(window: Sequence[float], other: Sequence[float]) -> float:
    """IoU of two windows as the reference's R1 computes it: union = the span of the two (max end - min start).
    `timeline.temporal_iou` divides the same way, but gives 1 to two coinciding zero-length windows, where the
    reference gives 0."""
    intersection = max(0.0, min(float(window[1]), float(other[1])) - max(float(window[0]), float(other[0])))
    union = max(float(window[1]), float(other[1])) - min(float(window[0]), float(other[0]))
    return intersection / union if union != 0 else 0.0


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 AP: the area under the precision-recall curve with precision made non-increasing in recall."""
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def query_average_precision(
    predictions: Sequence[Sequence[float]], ground_truth: Sequence[Sequence[float]],
    iou_thresholds: Sequence[float] = MAP_IOU_THRESHOLDS,
) -> list[float]:
    """AP of one query's predicted windows `[start, end, score]` (in the order given; ranked here by score, ties in
    that order) against its ground-truth windows `[start, end]`, at each IoU threshold (fractions, not percent)."""
    if not predictions:
        return [0.0] * len(iou_thresholds)
    ranked = sorted(predictions, key=lambda window: -window[2])  # stable: ties keep the given order
    truth = np.asarray([window[:2] for window in ground_truth], dtype=float).reshape(-1, 2)
    matched = np.full((len(iou_thresholds), len(truth)), False)
    true_positive = np.zeros((len(iou_thresholds), len(ranked)))
    for index, window in enumerate(ranked):
        ious = _cross_iou(window, truth)
        order = np.argsort(ious, kind="stable")[::-1]  # best first; equal IoUs: the later window first
        for level, threshold in enumerate(iou_thresholds):
            for candidate in order:
                if not ious[candidate] >= threshold:
                    break
                if not matched[level, candidate]:
                    matched[level, candidate] = True
                    true_positive[level, index] = 1.0
                    break
    hits = np.cumsum(true_positive, axis=1)
    precision = hits / np.arange(1, len(ranked) + 1)
    recall = hits / len(truth) if len(truth) else np.zeros_like(hits)
    return [interpolated_average_precision(precision[level], recall[level]) for level in range(len(iou_thresholds))]


def _check_same_queries(predicted: Mapping[str, Any], ground_truth: Mapping[str, Any], what: str,
                        extra_allowed: bool = False) -> None:
    """Both are mappings by qid, and `predicted` covers every query of `ground_truth` (and, unless `extra_allowed`,
    no other)."""
    for name, value in ((what, predicted), ("ground_truth", ground_truth)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping qid -> values (a dict), got {type(value).__name__}.")
    missing = sorted(set(ground_truth) - set(predicted), key=str)
    extra = [] if extra_allowed else sorted(set(predicted) - set(ground_truth), key=str)
    if missing or extra:
        raise ValueError(f"{what} and ground truth must cover the same queries: none for {len(missing)} ground-truth "
                         f"queries {missing[:10]}, {len(extra)} for unknown qids {extra[:10]}.")
    if not ground_truth:
        raise ValueError("No queries to evaluate: the metrics are undefined without at least one query.")


def _check_moment_inputs(predictions: Mapping[str, Any], ground_truth: Mapping[str, Any]) -> None:
    """Raise naming the query on what the reference would crash on or score as garbage: other qids than the ground
    truth's, a window that is not [start, end, score] of finite numbers with start <= end (the score ranks the
    windows for mAP), a query without ground-truth windows."""
    _check_same_queries(predictions, ground_truth, "predictions")
    for qid, windows in predictions.items():
        what = f"predictions for query {qid!r}"
        check_windows(windows, what, with_score=True)
        unscored = next((k for k, window in enumerate(windows) if len(window) != 3), None)
        if unscored is not None:
            raise ValueError(f"{what}, window {unscored}: {list(windows[unscored])!r} has no score; Moment-DETR's mAP "
                             "ranks windows by score, so give each as [start, end, score].")
    for qid, windows in ground_truth.items():
        check_windows(windows, f"ground truth of query {qid!r}", with_score=False)
        if not len(windows):
            raise ValueError(f"ground truth of query {qid!r} has no window; every query needs at least one.")


def _in_bucket(window: Sequence[float], low: float, high: float) -> bool:
    return low < window[1] - window[0] <= high


def evaluate_moment_retrieval(
    predictions: Mapping[str, Sequence[Sequence[float]]],
    ground_truth: Mapping[str, Sequence[Sequence[float]]],
    max_predictions: Optional[int] = MAX_PREDICTIONS,
) -> dict[str, float]:
    """Moment-DETR's moment-retrieval metrics, in percent (see the module docstring).

    Args:
        predictions: qid -> windows `[start_s, end_s, score]` in the order the model listed them (best first).
        ground_truth: qid -> one or more windows `[start_s, end_s]`; every qid must have predictions.
        max_predictions: windows per query used for mAP (the reference's 10); None = all.

    Returns:
        `MR-{bucket}-mAP` (mean over thresholds), `MR-{bucket}-mAP@{t}` and `MR-{bucket}-R1@{t}` for every
        threshold and bucket in short / middle / long / full, and `MR-{bucket}-num_queries`. A bucket without
        queries is left out.

    Raises:
        ValueError: the qids of predictions and ground truth differ, a window is not `[start, end, score]` of finite
            numbers with start <= end, or a query has no ground-truth window; the message names the query.
    """
    _check_moment_inputs(predictions, ground_truth)
    if max_predictions is not None and (isinstance(max_predictions, bool)
                                        or not isinstance(max_predictions, numbers.Integral) or max_predictions < 1):
        # a negative slice would drop the last windows and 0 all of them: a wrong mAP, not an error
        raise ValueError(f"max_predictions must be a whole number >= 1 (windows per query; the reference's 10) or "
                         f"None, got {max_predictions!r}.")
    metrics: dict[str, float] = {}
    for name, low, high in LENGTH_BUCKETS + (("full", None, None),):
        if low is None:
            truth = {qid: list(windows) for qid, windows in ground_truth.items()}
        else:
            truth = {qid: kept for qid, windows in ground_truth.items()
                     if (kept := [w for w in windows if _in_bucket(w, low, high)])}
        if not truth:
            continue
        ap = np.asarray([query_average_precision(list(predictions[qid])[:max_predictions], windows)
                         for qid, windows in truth.items()])  # (queries, thresholds)
        per_threshold = ap.mean(axis=0)
        metrics[f"MR-{name}-mAP"] = 100.0 * float(per_threshold.mean())
        for threshold, value in zip(MAP_IOU_THRESHOLDS, per_threshold):
            metrics[f"MR-{name}-mAP@{threshold}"] = 100.0 * float(value)
        top1 = []
        for qid, windows in truth.items():
            first = predictions[qid][0] if len(predictions[qid]) else None
            if first is None:
                top1.append(0.0)
                continue
            # As the reference: the ground-truth window of highest IoU (first on ties), then the pair's IoU with the
            # span of the two as union (`compute_temporal_iou_batch_paired`), which rounds differently.
            truth_windows = np.asarray([w[:2] for w in windows], dtype=float)
            best = truth_windows[int(np.argmax(_cross_iou(first, truth_windows)))]
            top1.append(_paired_iou(first, best))
        top1_iou = np.nan_to_num(np.asarray(top1), nan=0.0)
        for threshold in R1_IOU_THRESHOLDS:
            metrics[f"MR-{name}-R1@{threshold}"] = 100.0 * float(np.mean(top1_iou >= threshold))
        metrics[f"MR-{name}-num_queries"] = len(truth)
    return metrics


def saliency_labels(duration: float, relevant_clip_ids: Sequence[int], saliency_scores: Sequence[Sequence[float]],
                    clip_length: float = CLIP_SECONDS) -> np.ndarray:
    """Per-clip scores of each annotator, (clips, annotators), zero outside `relevant_clip_ids`; clips =
    int(duration / clip_length). Raises naming the clip when an id lies outside the video."""
    clips = int(duration / clip_length)
    if not all(isinstance(clip, numbers.Integral) and not isinstance(clip, bool) for clip in relevant_clip_ids):
        raise ValueError(f"relevant clip ids must be whole numbers (clip indices), got {list(relevant_clip_ids)!r}.")
    scores = np.asarray(saliency_scores, dtype=float).reshape(len(relevant_clip_ids), -1)
    labels = np.zeros((clips, scores.shape[1] if len(relevant_clip_ids) else 3))
    for clip, row in zip(relevant_clip_ids, scores):
        if not 0 <= clip < clips:
            raise ValueError(f"relevant clip id {clip} lies outside a {duration} s video of {clips} clips of "
                             f"{clip_length} s.")
        labels[clip] = row
    return labels


def saliency_average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """AP of clips ranked by `scores` for binary labels `positive` (the reference's `get_ap`: precision made
    non-increasing towards lower recall, averaged over the points where recall changes; all positive = 1, all
    negative = 0)."""
    if positive.all():
        return 1.0
    if not positive.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_labels = scores[order], positive[order].astype(float)
    # One point per distinct score (ties enter together), from the highest threshold down.
    last_of_each = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(ranked_scores) - 1]
    hits = np.cumsum(ranked_labels)[last_of_each]
    precision = hits / (last_of_each + 1)
    recall = (hits / positive.sum()).astype(np.float32)
    # From full recall towards none, ending at (recall 0, precision 1), as scikit-learn's curve runs.
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], np.float32(0.0)]
    precision = np.maximum.accumulate(precision)
    return float(np.mean(precision[np.flatnonzero(np.diff(recall))]))


def evaluate_highlights(
    saliency: Mapping[str, Sequence[float]],
    ground_truth: Mapping[str, Mapping[str, Any]],
    clip_length: float = CLIP_SECONDS,
) -> dict[str, float]:
    """Moment-DETR's highlight-detection metrics, in percent.

    Args:
        saliency: qid -> one predicted score per clip of `clip_length` seconds, from the video's start.
        ground_truth: qid -> {"duration" (s), "relevant_clip_ids", "saliency_scores" ((ids, annotators) in 0..4)}.

    Returns:
        `HL-min-{Fair,Good,VeryGood}-mAP` and `-Hit1`, and `HL-num_queries`.

    Raises:
        ValueError: a labelled query has no scores, an empty list or a non-finite score, or a duration that holds
            no whole clip; the message names the query. Scores of queries without labels are ignored.
    """
    # Queries without highlight labels are left out, as the reference scores only labelled ones.
    check_clip_length(clip_length)
    _check_same_queries(saliency, ground_truth, "saliency", extra_allowed=True)
    for qid in ground_truth:
        scores = saliency[qid]
        check_saliency_scores(scores, f"saliency scores of query {qid!r}")
        if not len(scores):
            raise ValueError(f"saliency scores of query {qid!r}: an empty list; give one score per clip of "
                             f"{clip_length} s.")
    for qid, truth in ground_truth.items():
        duration = truth.get("duration") if isinstance(truth, Mapping) else None
        if isinstance(duration, bool) or not isinstance(duration, numbers.Real) or not is_finite_number(duration) \
                or int(duration / clip_length) < 1:
            raise ValueError(f"ground truth of query {qid!r}: 'duration' must be a finite number of seconds that "
                             f"holds at least one clip of {clip_length} s, got {duration!r}.")
        check_clip_count(duration, clip_length, f"ground truth of query {qid!r}")
    labels = {}
    for qid, truth in ground_truth.items():
        missing = [key for key in ("relevant_clip_ids", "saliency_scores") if key not in truth]
        if missing:
            raise ValueError(f"ground truth of query {qid!r} has no {missing}; highlight labels are "
                             "'relevant_clip_ids' with one list of 'saliency_scores' per id (QVHighlights).")
        try:
            labels[qid] = saliency_labels(truth["duration"], truth["relevant_clip_ids"], truth["saliency_scores"],
                                          clip_length)
        except ValueError as err:
            raise ValueError(f"ground truth of query {qid!r}: {err}") from None
    metrics: dict[str, float] = {}
    for name, level in SALIENCY_LEVELS:
        average_precisions, hits = [], []
        for qid, scores in labels.items():
            positive = scores >= level  # (clips, annotators)
            predicted = np.asarray(saliency[qid], dtype=float).reshape(-1)
            best = int(np.argmax(predicted)) if predicted.size else len(positive)
            hits.append(float(positive[best].max()) if best < len(positive) and positive.shape[1] else 0.0)
            fitted = np.zeros(len(positive))
            fitted[: min(len(predicted), len(positive))] = predicted[: len(positive)]
            average_precisions.extend(saliency_average_precision(positive[:, a], fitted)
                                      for a in range(positive.shape[1]))
        metrics[f"HL-min-{name}-mAP"] = 100.0 * float(np.mean(average_precisions))
        metrics[f"HL-min-{name}-Hit1"] = 100.0 * float(np.mean(hits))
    metrics["HL-num_queries"] = len(labels)
    return metrics


# The headline keys of Moment-DETR's `brief` block, the numbers papers print.
BRIEF_KEYS = ("MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-short-mAP", "MR-middle-mAP", "MR-long-mAP",
              "MR-full-R1@0.5", "MR-full-R1@0.7") + tuple(
    f"HL-min-{name}-{kind}" for name, _ in SALIENCY_LEVELS for kind in ("mAP", "Hit1"))


def brief(metrics: Mapping[str, float]) -> dict[str, float]:
    """The `BRIEF_KEYS` present in `evaluate_moment_retrieval` / `evaluate_highlights` results."""
    return {key: metrics[key] for key in BRIEF_KEYS if key in metrics}


def check_saliency_scores(scores: object, what: str) -> None:
    """Raise `ValueError` naming `what` unless `scores` is a list of finite numbers (one per clip)."""
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
        raise ValueError(f"{what}: expected a list of per-clip scores, got {scores!r}.")
    for k, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not is_finite_number(value):
            raise ValueError(f"{what}, clip {k}: {value!r} is not a finite number.")
