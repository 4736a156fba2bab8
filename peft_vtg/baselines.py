"""Training-free baselines for grounding with an image-text model.

Zero-shot similarity: each frame's embedding is compared with the query's embedding (cosine, in the model's joint
space); a span [i, j] scores the sum over its frames of (similarity - the clip's mean similarity), so it grows while
the span covers frames more similar than average and shrinks when it takes in less similar ones. Top-k spans after
temporal NMS, in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.nn import functional as F

from .heads.decoding import Moment, top_spans
from .timeline import frames_to_seconds


def _embedding(output: Any) -> torch.Tensor:
    """`get_image_features` / `get_text_features` return a tensor in some transformers versions and an output with
    the projected `pooler_output` in others."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def frame_query_similarity(
    model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Cosine similarity of every frame with its query, shape (batch, frames).

    Args:
        model: an image-text model with `get_image_features` and `get_text_features` (CLIP, SigLIP).
        pixel_values: (batch, frames, 3, H, W).
        input_ids, attention_mask: (batch, length), one query per clip.
    """
    batch, frames = pixel_values.shape[:2]
    with torch.no_grad():
        video = _embedding(model.get_image_features(pixel_values=pixel_values.flatten(0, 1)))
        text = _embedding(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
    video = F.normalize(video.float(), dim=-1).view(batch, frames, -1)  # (batch, frames, dim)
    text = F.normalize(text.float(), dim=-1)  # (batch, dim)
    return torch.einsum("bfd,bd->bf", video, text)


def zero_shot_moments(
    similarity: torch.Tensor,
    durations: Sequence[float],
    frame_mask: Optional[torch.Tensor] = None,
    top_k: int = 5,
    nms_threshold: Optional[float] = 0.5,
) -> list[list[Moment]]:
    """Moments from frame-query similarities (batch, frames): span score = sum of (similarity - clip mean).

    Returns one list per clip of `(start_s, end_s, score)`, best first (the score is the span's summed excess
    similarity, not a probability).
    """
    lengths = frame_mask.sum(dim=1).tolist() if frame_mask is not None else [similarity.shape[1]] * len(similarity)
    results = []
    for row, length in enumerate(int(n) for n in lengths):
        scores = similarity[row, :length].double()
        excess = torch.cat([scores.new_zeros(1), torch.cumsum(scores - scores.mean(), dim=0)])  # (length + 1,)
        span = excess.unsqueeze(0)[:, 1:] - excess[:-1].unsqueeze(1)  # [i, j] = sum of excess over frames i..j
        allowed = torch.ones(length, length, dtype=torch.bool).triu()
        spans = top_spans(span.masked_fill(~allowed, float("-inf")), top_k, nms_threshold)
        duration = float(durations[row])
        results.append([(*frames_to_seconds(first, last, duration, length), score) for first, last, score in spans])
    return results
