"""Video-text matching (VTM) heads, used as auxiliary losses on the fused [CLS] of the grounding head.

- VIOLET style (Fu et al., 2021): Dropout(0.1) -> Linear(d, 2d) -> ReLU -> Linear(2d, 1); negatives pair each video
  with another sample's text; binary cross-entropy.
- All-in-One style (Wang et al., 2023): one Linear(d, 2) on the [CLS] of the last block, weights normal(0, 0.02),
  biases zero; with probability 0.5 a sample's video is replaced by another sample's video; negative log-likelihood.

Negatives are drawn within the batch. When `video_ids` are given, a partner must show a different video: VTG batches
often hold several queries of one video, and pairing them would label a true match as a negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

# (video_features, frame_mask, text_features, text_mask) -> fused [CLS] (batch, hidden)
FuseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class VioletMatchingHead(nn.Module):
    """VIOLET's VTM head: one matching logit per fused [CLS]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(hidden_size, 2 * hidden_size), nn.ReLU(), nn.Linear(2 * hidden_size, 1)
        )

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """cls (batch, hidden) -> matching logits (batch,)."""
        return self.classifier(cls).squeeze(-1)


class AllInOneMatchingHead(nn.Module):
    """All-in-One's VTM head: two-way (mismatch, match) logits per fused [CLS]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, 2)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """cls (batch, hidden) -> logits (batch, 2); class 1 = the video and text match."""
        return self.classifier(cls)


def swap_partners(
    batch: int, video_ids: Optional[Sequence[str]] = None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """For each row, a random other row to borrow a video or text from, or -1 when none qualifies.

    With `video_ids`, the partner must have a different video id. Returns a long tensor (batch,).
    """
    if video_ids is not None and len(video_ids) != batch:
        raise ValueError(f"video_ids has {len(video_ids)} entries for a batch of {batch}.")
    partners = torch.full((batch,), -1, dtype=torch.long)
    for row in range(batch):
        allowed = [
            other
            for other in range(batch)
            if other != row and (video_ids is None or video_ids[other] != video_ids[row])
        ]
        if allowed:
            pick = int(torch.randint(len(allowed), (1,), generator=generator))
            partners[row] = allowed[pick]
    return partners


def violet_matching_loss(
    head: VioletMatchingHead,
    fuse: FuseFn,
    positive_cls: torch.Tensor,
    video_features: torch.Tensor,
    frame_mask: torch.Tensor,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    video_ids: Optional[Sequence[str]] = None,
    generator: Optional[torch.Generator] = None,
    moment_present: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """BCE over the rows' own pairs (label 1, or 0 where `moment_present` is False: a clip without the query's
    moment does not match it) and text-swapped pairs (label 0); None when no row has a partner."""
    partners = swap_partners(len(positive_cls), video_ids, generator).to(video_features.device)
    rows = (partners >= 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return None
    other = partners[rows]
    negative_cls = fuse(video_features[rows], frame_mask[rows], text_features[other], text_mask[other])
    logits = torch.cat([head(positive_cls), head(negative_cls)]).float()  # (batch + negatives,)
    own = logits.new_ones(len(positive_cls)) if moment_present is None else moment_present.to(logits)
    labels = torch.cat([own, logits.new_zeros(len(rows))])
    return F.binary_cross_entropy_with_logits(logits, labels)


def all_in_one_matching_loss(
    head: AllInOneMatchingHead,
    fuse: FuseFn,
    positive_cls: torch.Tensor,
    video_features: torch.Tensor,
    frame_mask: torch.Tensor,
    text_features: torch.Tensor,
    text_mask: torch.Tensor,
    video_ids: Optional[Sequence[str]] = None,
    generator: Optional[torch.Generator] = None,
    swap_probability: float = 0.5,
    moment_present: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """NLL of match / mismatch where each row's video is swapped with probability `swap_probability`; a row that
    keeps its video is a match unless `moment_present` says its clip does not hold the moment.

    Rows that keep their video reuse `positive_cls`; only swapped rows are fused again. None when no row has a
    partner.
    """
    batch = len(positive_cls)
    partners = swap_partners(batch, video_ids, generator).to(video_features.device)
    if not bool((partners >= 0).any()):
        return None
    coin = torch.rand(batch, generator=generator).to(video_features.device) < swap_probability
    swapped = (coin & (partners >= 0)).nonzero().squeeze(1)
    cls = positive_cls
    if swapped.numel():
        other = partners[swapped]
        negative_cls = fuse(video_features[other], frame_mask[other], text_features[swapped], text_mask[swapped])
        cls = positive_cls.index_copy(0, swapped, negative_cls.to(positive_cls.dtype))
    labels = (torch.ones(batch, dtype=torch.long, device=cls.device) if moment_present is None
              else moment_present.to(device=cls.device, dtype=torch.long))
    labels[swapped] = 0
    return F.nll_loss(F.log_softmax(head(cls).float(), dim=-1), labels)
