"""`VTGTaskHeads`: the trainable task layer of one adapter (grounding head plus optional VTM heads) and its output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .decoding import window_presence
from .grounding import GroundingHead, grounding_loss, saliency_loss
from .matching import (
    AllInOneMatchingHead,
    VioletMatchingHead,
    all_in_one_matching_loss,
    swap_partners,
    violet_matching_loss,
)

VTM_HEADS = ("violet", "all_in_one")


@dataclass
class VTGGroundingOutput(ModelOutput):
    """Output of a grounding forward.

    Attributes:
        loss: total loss (span loss + matching losses x their weight), when span labels were given.
        start_logits, end_logits: (batch, frames) per-frame logits; padded frames hold the dtype's lowest value.
        inside_logits: (batch, frames) "inside the moment" logits, when the head predicts them.
        saliency_logits: (batch, frames) highlight (saliency) logits, when the head predicts them; padded frames hold
            the dtype's lowest value.
        frame_mask: (batch, frames), 1 for real frames.
        violet_vtm_logits: (batch,) VIOLET matching logits of the given pairs, when that head exists.
        all_in_one_vtm_logits: (batch, 2) All-in-One (mismatch, match) logits of the given pairs, when that head exists.
        loss_terms: the loss's parts (`start_loss`, `end_loss`, `inside_loss`, `saliency_loss`, `violet_vtm_loss`,
            `all_in_one_vtm_loss`), detached, for logging.
    """

    loss: Optional[torch.Tensor] = None
    start_logits: Optional[torch.Tensor] = None
    end_logits: Optional[torch.Tensor] = None
    inside_logits: Optional[torch.Tensor] = None
    saliency_logits: Optional[torch.Tensor] = None
    frame_mask: Optional[torch.Tensor] = None
    violet_vtm_logits: Optional[torch.Tensor] = None
    all_in_one_vtm_logits: Optional[torch.Tensor] = None
    loss_terms: Optional[dict] = None


def _log_presence(inside_logits: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """(rows, frames) inside logits -> (rows,) log of each row's `window_presence`, clamped away from log 0."""
    return torch.log(window_presence(inside_logits, frame_mask).clamp_min(1e-12))


class VTGTaskHeads(nn.Module):
    """Grounding head and optional video-text matching heads of one adapter.

    Args:
        video_dim, text_dim: widths of the encoder's per-frame video and per-token text features.
        hidden_size, num_layers, num_heads, dropout, predict_inside, temporal_kernel_size, hadamard_fusion,
            video_layers: see `GroundingHead`.
        vtm_heads: any of "violet", "all_in_one".
        boundary_smoothing: std (frames) of the Gaussian label smoothing of start/end targets; 0 = one-hot.
        inside_loss_weight: weight of the inside-moment BCE.
        vtm_loss_weight: weight of each matching loss.
        inside_negative_loss_weight: weight of the "not here" loss (`_inside_negative_loss`); 0 = off.
        presence_contrast_loss_weight: weight of the presence contrast (`_presence_contrast_loss`); 0 = off.
        presence_contrast_negatives: other rows' clips each query is contrasted with.
        predict_saliency: add the per-frame saliency logit (see `GroundingHead`).
        saliency_loss_weight, saliency_margin: weight and margin of `saliency_loss`.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
        predict_inside: bool = True,
        vtm_heads: Sequence[str] = (),
        boundary_smoothing: float = 0.0,
        inside_loss_weight: float = 1.0,
        vtm_loss_weight: float = 0.5,
        inside_negative_loss_weight: float = 0.0,
        presence_contrast_loss_weight: float = 0.0,
        presence_contrast_negatives: int = 7,
        temporal_kernel_size: int = 0,
        hadamard_fusion: bool = False,
        video_layers: int = 1,
        predict_saliency: bool = False,
        saliency_loss_weight: float = 1.0,
        saliency_margin: float = 0.2,
    ) -> None:
        super().__init__()
        unknown = sorted(set(vtm_heads) - set(VTM_HEADS))
        if unknown:
            raise ValueError(f"Unknown vtm_heads {unknown}; choose from {list(VTM_HEADS)}.")
        self.grounding = GroundingHead(
            video_dim, text_dim, hidden_size, num_layers, num_heads, dropout, predict_inside, temporal_kernel_size,
            hadamard_fusion, video_layers, predict_saliency,
        )
        self.saliency_loss_weight = saliency_loss_weight
        self.saliency_margin = saliency_margin
        if "violet" in vtm_heads:
            self.violet_vtm = VioletMatchingHead(hidden_size)
        if "all_in_one" in vtm_heads:
            self.all_in_one_vtm = AllInOneMatchingHead(hidden_size)
        self.boundary_smoothing = boundary_smoothing
        self.inside_loss_weight = inside_loss_weight
        self.vtm_loss_weight = vtm_loss_weight
        self.inside_negative_loss_weight = inside_negative_loss_weight
        self.presence_contrast_loss_weight = presence_contrast_loss_weight
        self.presence_contrast_negatives = presence_contrast_negatives

    def _inside_negative_loss(self, video_features, frame_mask, text_features, text_mask, video_ids,
                              generator) -> Optional[torch.Tensor]:
        """"Not here": each query with another row's video (`swap_partners`: another video id), whose frames all
        get inside target 0; BCE averaged over the real frames. None when no row has a partner."""
        partners = swap_partners(len(text_features), video_ids, generator).to(video_features.device)
        rows = (partners >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return None
        other = partners[rows]
        mask = frame_mask[other]  # (negatives, frames) of the borrowed videos
        fused = self.grounding.fuse(video_features[other], mask, text_features[rows], text_mask[rows])
        logits = self.grounding.span_logits(fused, mask)["inside_logits"].float()  # (negatives, frames)
        real = mask.float()
        per_frame = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
        return (per_frame * real).sum() / real.sum().clamp_min(1.0)

    def _presence_contrast_loss(self, video_features, frame_mask, text_features, text_mask, inside_logits,
                                video_ids, moment_present) -> Optional[torch.Tensor]:
        """The presence contrast: for each row whose clip holds its moment (the anchors), softmax cross-entropy of
        its clip against `presence_contrast_negatives` other rows' clips (the next rows of the batch, which the loader
        shuffles; a clip of the row's own video id is left out), each scored by the query's log presence there:
        log of the mean inside probability over the clip's real frames, what `calibrated_spans` ranks a long
        video's windows by. None when no anchor has a negative."""
        batch = len(text_features)
        count = min(self.presence_contrast_negatives, batch - 1)
        if count < 1 or video_ids is None:
            return None
        device = video_features.device
        others = (torch.arange(batch)[:, None] + torch.arange(1, count + 1)[None]) % batch  # (batch, count)
        allowed = torch.tensor([[video_ids[int(o)] != video_ids[row] for o in others[row]] for row in range(batch)],
                               device=device)  # (batch, count)
        anchors = allowed.any(1)
        if moment_present is not None:
            anchors &= moment_present.to(device).bool()
        if not bool(anchors.any()):
            return None
        flat = others[anchors.cpu()].flatten().to(device)  # (anchors * count,)
        rows = anchors.nonzero().squeeze(1)
        mask = frame_mask[flat]
        fused = self.grounding.fuse(video_features[flat], mask, text_features[rows].repeat_interleave(count, 0),
                                    text_mask[rows].repeat_interleave(count, 0))
        negative = _log_presence(self.grounding.span_logits(fused, mask)["inside_logits"], mask).view(-1, count)
        positive = _log_presence(inside_logits[rows], frame_mask[rows])  # (anchors,)
        logits = torch.cat([positive[:, None], negative.masked_fill(~allowed[rows], float("-inf"))], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long, device=device))

    def _fused_cls(self, video, frame_mask, text, text_mask) -> torch.Tensor:
        return self.grounding.fuse(video, frame_mask, text, text_mask)[:, 0].contiguous()

    def forward(
        self,
        video_features: torch.Tensor,
        frame_mask: torch.Tensor,
        text_features: torch.Tensor,
        text_mask: torch.Tensor,
        start_frames: Optional[torch.Tensor] = None,
        end_frames: Optional[torch.Tensor] = None,
        video_ids: Optional[Sequence[str]] = None,
        generator: Optional[torch.Generator] = None,
        saliency_targets: Optional[torch.Tensor] = None,
        saliency_mask: Optional[torch.Tensor] = None,
        moment_present: Optional[torch.Tensor] = None,
    ) -> VTGGroundingOutput:
        """Span logits for each (video, query) row, and the loss when `start_frames`/`end_frames` are given.

        Args:
            video_features: (batch, frames, video_dim) per-frame features, or (batch, frames, layers, video_dim)
                with several layers' (see `GroundingHead.fuse`).
            frame_mask: (batch, frames), 1 for real frames, 0 for padding.
            text_features: (batch, length, text_dim) token features.
            text_mask: (batch, length), 1 for real tokens.
            start_frames, end_frames: (batch,) inclusive frame indices of the ground-truth moment.
            video_ids: one id per row; matching negatives are only drawn from rows with another video.
            generator: random generator for the matching negatives (default: torch's global one).
            saliency_targets, saliency_mask: (batch, frames) highlight targets and where they are known (1); with
                span labels and a saliency head, `saliency_loss` joins the loss.
            moment_present: (batch,) bool, False for a row whose clip does not hold its moment (see
                `grounding_loss`); such rows also add nothing to the saliency loss. None: all hold it.
        """
        fused = self.grounding.fuse(video_features, frame_mask, text_features, text_mask)  # (batch, 1+frames, hidden)
        fields = self.grounding.span_logits(fused, frame_mask)
        fields["saliency_logits"] = self.grounding.saliency_logits(fused, frame_mask)
        cls = fused[:, 0].contiguous()  # (batch, hidden); contiguous for the reason given in span_logits
        if hasattr(self, "violet_vtm"):
            fields["violet_vtm_logits"] = self.violet_vtm(cls)
        if hasattr(self, "all_in_one_vtm"):
            fields["all_in_one_vtm_logits"] = self.all_in_one_vtm(cls)
        if (start_frames is None) != (end_frames is None):
            raise ValueError("Give both start_frames and end_frames (inclusive frame indices), or neither.")
        # The output is built once, with every field: transformers < 5.2's ModelOutput leaves a field assigned after
        # construction out of its keys, and whatever rebuilds it from its items (accelerate's fp32 conversion of
        # autocast outputs) would then drop the loss.
        if start_frames is None:
            return VTGGroundingOutput(frame_mask=frame_mask, **fields)
        terms = grounding_loss(
            fields["start_logits"], fields["end_logits"], fields["inside_logits"], frame_mask, start_frames, end_frames,
            self.boundary_smoothing, self.inside_loss_weight, moment_present,
        )
        loss = terms.pop("loss")
        if fields["saliency_logits"] is not None and saliency_targets is not None and self.saliency_loss_weight > 0:
            known = saliency_mask if saliency_mask is not None else frame_mask
            if moment_present is not None:  # another window's highlights are not this clip's
                known = known * moment_present.to(known.device).view(-1, 1).to(known.dtype)
            terms["saliency_loss"] = saliency_loss(fields["saliency_logits"], saliency_targets, known * frame_mask,
                                                   self.saliency_margin)
            loss = loss + self.saliency_loss_weight * terms["saliency_loss"]
        if self.training and self.inside_negative_loss_weight > 0 and fields["inside_logits"] is not None:
            negative = self._inside_negative_loss(video_features, frame_mask, text_features, text_mask, video_ids,
                                                  generator)
            if negative is not None:  # None: no row had a partner with another video
                terms["inside_negative_loss"] = negative
                loss = loss + self.inside_negative_loss_weight * negative
        if self.training and self.presence_contrast_loss_weight > 0 and fields["inside_logits"] is not None:
            contrast = self._presence_contrast_loss(video_features, frame_mask, text_features, text_mask,
                                                    fields["inside_logits"], video_ids, moment_present)
            if contrast is not None:  # None: no row with its moment had a clip of another video beside it
                terms["presence_contrast_loss"] = contrast
                loss = loss + self.presence_contrast_loss_weight * contrast
        if self.training and self.vtm_loss_weight > 0:
            features = (video_features, frame_mask, text_features, text_mask)
            for name, loss_fn in (("violet_vtm", violet_matching_loss), ("all_in_one_vtm", all_in_one_matching_loss)):
                if hasattr(self, name):
                    vtm = loss_fn(getattr(self, name), self._fused_cls, cls, *features, video_ids=video_ids,
                                  generator=generator, moment_present=moment_present)
                    if vtm is not None:  # None: no row had a partner (batch of 1, or one video)
                        terms[f"{name}_loss"] = vtm
                        loss = loss + self.vtm_loss_weight * vtm
        return VTGGroundingOutput(loss=loss, frame_mask=frame_mask, loss_terms={k: v.detach() for k, v in terms.items()},
                                  **fields)
