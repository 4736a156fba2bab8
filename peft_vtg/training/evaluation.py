"""Evaluation over a dataloader, on one process or many: moments per query, gathered once each, then the metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..data.annotations import QVHIGHLIGHTS_CLIP_SECONDS
from ..heads.decoding import decode_moments
from ..metrics import evaluate_moments
from ..moment_detr_eval import brief, evaluate_highlights, evaluate_moment_retrieval
from ..timeline import frame_scores_to_clips

LABEL_KEYS = ("start_frames", "end_frames", "saliency_targets", "saliency_mask", "moment_present")


@dataclass
class GroundingPredictions:
    """What a grounding model predicts for an evaluation set.

    Attributes:
        moments: qid -> moments `(start_s, end_s, score)`, best first.
        saliency: qid -> one highlight score per clip of `clip_length` seconds from the video's start
            (`peft_vtg.timeline.frame_scores_to_clips` of the per-frame saliency logits); empty when the model
            predicts no saliency.
        clip_length: seconds per saliency clip (2 for QVHighlights).
    """

    moments: dict[str, list[tuple[float, float, float]]]
    saliency: dict[str, list[float]] = field(default_factory=dict)
    clip_length: float = QVHIGHLIGHTS_CLIP_SECONDS


def predict_grounding(
    module: torch.nn.Module,
    dataloader: Any,
    accelerator: Optional[Any] = None,
    top_k: int = 5,
    nms_threshold: Optional[float] = 0.5,
    max_span_seconds: Optional[float] = None,
    disable_tqdm: bool = False,
    clip_length: float = QVHIGHLIGHTS_CLIP_SECONDS,
) -> GroundingPredictions:
    """Moments, and per-clip saliency where the model predicts it, for every query of `dataloader`, on every process.

    Args:
        module: a `GroundingModule` (possibly wrapped by accelerate / DDP), or anything whose `forward(**batch)`
            returns `start_logits`, `end_logits` and `frame_mask` (and `saliency_logits` for highlight scores).
        dataloader: yields `GroundingCollator` batches; with `accelerator`, a prepared (sharded) dataloader.
        accelerator: gathers the shards with `gather_for_metrics`, which drops the samples accelerate repeats to
            even out the last batch, so each query is counted once.
        clip_length: seconds per saliency clip of the output.

    Raises:
        ValueError: a qid was predicted twice (e.g. duplicate qids in the dataset).
    """
    module.eval()
    items: list[tuple[str, list, Optional[list[float]]]] = []
    main = accelerator is None or accelerator.is_local_main_process
    with torch.no_grad():
        for batch in tqdm(dataloader, desc="evaluating", disable=disable_tqdm or not main, leave=False):
            inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
            out = module(**inputs)
            durations = batch["duration"].tolist()
            frame_mask = out.frame_mask.cpu()
            moments = decode_moments(
                out.start_logits.float().cpu(), out.end_logits.float().cpu(), durations, frame_mask, top_k=top_k,
                max_span_seconds=max_span_seconds, nms_threshold=nms_threshold,
            )
            saliency: list[Optional[list[float]]] = [None] * len(moments)
            logits = out.get("saliency_logits") if hasattr(out, "get") else None
            if logits is not None:
                logits = logits.float().cpu()
                saliency = [frame_scores_to_clips(logits[i, : int(frame_mask[i].sum())].tolist(), durations[i],
                                                  clip_length) for i in range(len(moments))]
            batch_items = list(zip(batch["qid"], moments, saliency))
            if accelerator is not None:
                # Per batch, as accelerate requires: on the last batch it drops the samples it repeated to even
                # out the shards.
                batch_items = accelerator.gather_for_metrics(batch_items, use_gather_object=True)
            items.extend(batch_items)
    predictions = GroundingPredictions(moments={}, clip_length=clip_length)
    for qid, moments, saliency in items:
        if qid in predictions.moments:
            raise ValueError(f"qid {qid!r} was predicted twice; qids must be unique in the evaluation set.")
        predictions.moments[qid] = moments
        if saliency is not None:
            predictions.saliency[qid] = saliency
    return predictions


def predict_moments(module: torch.nn.Module, dataloader: Any, accelerator: Optional[Any] = None,
                    **decode_kwargs: Any) -> dict[str, list[tuple[float, float, float]]]:
    """qid -> moments `(start_s, end_s, score)` for every query of `dataloader` (`predict_grounding` without the
    saliency)."""
    return predict_grounding(module, dataloader, accelerator, **decode_kwargs).moments


def highlight_truth(ground_truth: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """qid -> highlight labels (`duration`, `relevant_clip_ids`, `saliency_scores`) of the rows that have them."""
    return {row["qid"]: {"duration": row["duration"], "relevant_clip_ids": list(row["relevant_clip_ids"]),
                         "saliency_scores": [list(scores) for scores in row["saliency_scores"]]}
            for row in ground_truth if row.get("relevant_clip_ids")}


def clip_length_of(ground_truth: Sequence[Mapping[str, Any]]) -> float:
    """The saliency clip length (seconds) of the rows with highlight labels (else of any row that gives one, else
    QVHighlights' 2 s). Labelled rows of different clip lengths are an error: saliency is predicted and scored per
    clip of one length, and the first row's would silently misplace every other row's clips."""
    labelled: dict[float, Any] = {}
    for row in ground_truth:
        if row.get("relevant_clip_ids") and row.get("clip_length"):
            labelled.setdefault(float(row["clip_length"]), row["qid"])
    if len(labelled) > 1:
        shown = ", ".join(f"{length:g} s (qid {qid!r})" for length, qid in list(labelled.items())[:4])
        raise ValueError(f"The highlight-labelled rows have different clip lengths ({shown}); saliency is predicted "
                         "and scored per clip of one length. Score each clip length in a file of its own.")
    if labelled:
        return next(iter(labelled))
    return next((float(row["clip_length"]) for row in ground_truth if row.get("clip_length")),
                QVHIGHLIGHTS_CLIP_SECONDS)


def grounding_metrics(predictions: GroundingPredictions, ground_truth: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """R@n IoU@m and mIoU (`evaluate_moments`), Moment-DETR's moment-retrieval mAP and R1 (its `brief` keys,
    `peft_vtg.moment_detr_eval`), and, when the rows carry highlight labels and the model predicts saliency,
    HL-mAP and HL-Hit1 at the Fair / Good / VeryGood levels; all in percent."""
    truth = {row["qid"]: row["windows"] for row in ground_truth}
    metrics = evaluate_moments(predictions.moments, truth)
    labelled = {qid: windows for qid, windows in truth.items() if windows}
    detection = evaluate_moment_retrieval({qid: [list(m) for m in predictions.moments[qid]] for qid in labelled},
                                          labelled)
    highlights = highlight_truth(ground_truth)
    if highlights and predictions.saliency:
        detection.update(evaluate_highlights(predictions.saliency, highlights, predictions.clip_length))
    metrics.update(brief(detection))
    return metrics


def evaluate_grounding(
    module: torch.nn.Module,
    dataloader: Any,
    ground_truth: Sequence[dict],
    accelerator: Optional[Any] = None,
    **decode_kwargs: Any,
) -> tuple[dict[str, float], dict[str, list[tuple[float, float, float]]]]:
    """Metrics (`grounding_metrics`: R@n IoU@m, mIoU, Moment-DETR's mAP and R1, highlight metrics where the rows
    have labels; percent; `num_queries`) and the moments of `module` on `dataloader`.

    `ground_truth` is the evaluation dataset (rows with `qid` and `windows`); every one of its queries must be
    predicted exactly once.
    """
    decode_kwargs.setdefault("clip_length", clip_length_of(ground_truth))
    predictions = predict_grounding(module, dataloader, accelerator, **decode_kwargs)
    return grounding_metrics(predictions, ground_truth), predictions.moments
