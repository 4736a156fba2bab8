"""Evaluation over a dataloader, on one process or many: moments per query, gathered once each, then the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..heads.decoding import decode_moments
from ..metrics import evaluate_moments

LABEL_KEYS = ("start_frames", "end_frames")


def predict_moments(
    module: torch.nn.Module,
    dataloader: Any,
    accelerator: Optional[Any] = None,
    top_k: int = 5,
    nms_threshold: Optional[float] = 0.5,
    max_span_seconds: Optional[float] = None,
    disable_tqdm: bool = False,
) -> dict[str, list[tuple[float, float, float]]]:
    """qid -> moments `(start_s, end_s, score)` for every query of `dataloader`, on every process.

    Args:
        module: a `GroundingModule` (possibly wrapped by accelerate / DDP), or anything whose `forward(**batch)`
            returns `start_logits`, `end_logits` and `frame_mask`.
        dataloader: yields `GroundingCollator` batches; with `accelerator`, a prepared (sharded) dataloader.
        accelerator: gathers the shards with `gather_for_metrics`, which drops the samples accelerate repeats to
            even out the last batch, so each query is counted once.

    Raises:
        ValueError: a qid was predicted twice (e.g. duplicate qids in the dataset).
    """
    module.eval()
    items: list[tuple[str, list]] = []
    main = accelerator is None or accelerator.is_local_main_process
    with torch.no_grad():
        for batch in tqdm(dataloader, desc="evaluating", disable=disable_tqdm or not main, leave=False):
            inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
            out = module(**inputs)
            moments = decode_moments(
                out.start_logits.float().cpu(), out.end_logits.float().cpu(), batch["duration"].tolist(),
                out.frame_mask.cpu(), top_k=top_k, max_span_seconds=max_span_seconds, nms_threshold=nms_threshold,
            )
            batch_items = list(zip(batch["qid"], moments))
            if accelerator is not None:
                # Per batch, as accelerate requires: on the last batch it drops the samples it repeated to even
                # out the shards.
                batch_items = accelerator.gather_for_metrics(batch_items, use_gather_object=True)
            items.extend(batch_items)
    predictions: dict[str, list[tuple[float, float, float]]] = {}
    for qid, moments in items:
        if qid in predictions:
            raise ValueError(f"qid {qid!r} was predicted twice; qids must be unique in the evaluation set.")
        predictions[qid] = moments
    return predictions


def evaluate_grounding(
    module: torch.nn.Module,
    dataloader: Any,
    ground_truth: Sequence[dict],
    accelerator: Optional[Any] = None,
    **decode_kwargs: Any,
) -> tuple[dict[str, float], dict[str, list[tuple[float, float, float]]]]:
    """Metrics (R@n IoU@m, mIoU in percent, `num_queries`) and the predictions of `module` on `dataloader`.

    `ground_truth` is the evaluation dataset (rows with `qid` and `windows`); every one of its queries must be
    predicted exactly once.
    """
    predictions = predict_moments(module, dataloader, accelerator, **decode_kwargs)
    truth = {row["qid"]: row["windows"] for row in ground_truth}
    return evaluate_moments(predictions, truth), predictions
