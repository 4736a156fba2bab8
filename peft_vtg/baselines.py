"""Training-free baselines for grounding with an image-text model.

Zero-shot similarity: each frame's embedding is compared with the query's embedding (cosine, in the model's joint
space) -- or, with `motion_window`, each frame's change embedding (the mean embedding of the next frames minus that of
the previous ones), for backbones pre-trained to align motion with text, as the shipped SynthVTG one is; a span [i, j]
scores the sum over its frames of (similarity - the clip's mean similarity), so it grows while
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


def change_embeddings(embeddings: torch.Tensor, window: int) -> torch.Tensor:
    """(batch, frames, dim) -> (batch, frames, dim): at frame t, the mean of frames t+1..t+window minus the mean of
    frames t-window..t-1, repeating the first and last frame beyond the ends."""
    padded = torch.cat([embeddings[:, :1].expand(-1, window, -1), embeddings,
                        embeddings[:, -1:].expand(-1, window, -1)], dim=1)  # (batch, frames + 2 window, dim)
    sums = torch.cat([padded.new_zeros(padded.shape[0], 1, padded.shape[2]), padded.cumsum(dim=1)], dim=1)
    frames = embeddings.shape[1]
    after = sums[:, 2 * window + 1 : 2 * window + 1 + frames] - sums[:, window + 1 : window + 1 + frames]
    before = sums[:, window : window + frames] - sums[:, :frames]
    return (after - before) / window


def frame_query_similarity(
    model: Any,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    motion_window: int = 0,
) -> torch.Tensor:
    """Cosine similarity of every frame with its query, shape (batch, frames).

    Args:
        model: an image-text model with `get_image_features` and `get_text_features` (CLIP, SigLIP).
        pixel_values: (batch, frames, 3, H, W).
        input_ids, attention_mask: (batch, length), one query per clip.
        motion_window: 0 compares each frame's embedding with the query (cosine); > 0 compares its change embedding
            over that many frames on each side (`change_embeddings`), divided by the clip's mean embedding norm, with
            the unit query embedding.
    """
    batch, frames = pixel_values.shape[:2]
    with torch.no_grad():
        video = _embedding(model.get_image_features(pixel_values=pixel_values.flatten(0, 1)))
        text = _embedding(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
    video = video.float().view(batch, frames, -1)  # (batch, frames, dim)
    if motion_window > 0:
        # Not normalised per frame: an idle frame's change is near zero and must score near zero, not be blown up
        # to a unit vector of noise. Dividing by the clip's mean embedding norm keeps the scale of a cosine.
        scale = video.norm(dim=-1).mean(dim=1, keepdim=True).unsqueeze(-1).clamp_min(1e-12)  # (batch, 1, 1)
        video = change_embeddings(video, motion_window) / scale
    else:
        video = F.normalize(video, dim=-1)
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
