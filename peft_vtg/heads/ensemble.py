"""Prompt ensembles: several adapters' grounding outputs for the same (video, query) fused into one output.

Each adapter's start and end logits define a distribution over frames (a softmax); the ensemble's distribution is the
mean of its members' probabilities (a mixture: a frame one member is sure of keeps half of that certainty in an
ensemble of two, where a product of experts would let one confident "no" veto it). The fused output carries the log of
that mean as its logits, so `decode_moments` and `calibrated_spans` (which take a softmax) decode the mixture as they
decode one adapter, and an ensemble of one adapter decodes exactly as that adapter.
"""

from __future__ import annotations

import torch

from .task import VTGGroundingOutput

ENSEMBLE_FUSIONS = ("mean",)


def _log_mean_softmax(logits: torch.Tensor, frame_mask: torch.Tensor, members: int) -> torch.Tensor:
    """(rows * members, frames) logits -> (rows, frames) log of the members' mean softmax over the real frames;
    padded frames hold the lowest float32 value, as the heads write them."""
    padding = frame_mask == 0  # (rows * members, frames)
    probabilities = torch.softmax(logits.float().masked_fill(padding, float("-inf")), dim=-1)
    rows = logits.shape[0] // members
    mean = probabilities.view(rows, members, -1).mean(dim=1)  # (rows, frames)
    lowest = torch.finfo(torch.float32).min
    fused = torch.log(mean.clamp_min(torch.finfo(torch.float32).tiny))
    return fused.masked_fill(padding.view(rows, members, -1)[:, 0], lowest)


def _logit_of_mean_sigmoid(logits: torch.Tensor, members: int) -> torch.Tensor:
    """(rows * members, ...) logits of independent probabilities -> (rows, ...) logit of their mean."""
    rows = logits.shape[0] // members
    mean = torch.sigmoid(logits.float()).view(rows, members, *logits.shape[1:]).mean(dim=1)
    return torch.logit(mean, eps=1e-6)


def fuse_grounding_outputs(output: VTGGroundingOutput, members: int, fusion: str = "mean") -> VTGGroundingOutput:
    """Fuse the outputs of `members` adapters for each (video, query) into one output per pair.

    Args:
        output: a grounding output with rows grouped by pair, members adjacent: row `pair * members + m` is member
            m's output for that pair (what a forward with `adapter_names = names * pairs` gives).
        members: adapters per pair (>= 1).
        fusion: "mean", the mean of the members' probabilities (the only rule so far):
            - start / end: log of the mean per-frame softmax (a mixture of the members' distributions);
            - inside and VIOLET matching: logit of the mean sigmoid probability;
            - All-in-One matching: log of the mean (mismatch, match) softmax;
            - saliency: the mean of the logits (a ranking score per frame; there is no probability to average).

    Returns:
        A `VTGGroundingOutput` with `pairs = rows / members` rows (float32 logits, no loss): what one adapter's output
        looks like, so it decodes as one.
    """
    if fusion not in ENSEMBLE_FUSIONS:
        raise ValueError(f"fusion must be one of {ENSEMBLE_FUSIONS}, got {fusion!r}.")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be a positive number of adapters, got {members!r}.")
    rows = output.start_logits.shape[0]
    if rows % members:
        raise ValueError(f"{rows} output rows do not split into groups of {members} adapters.")
    frame_mask = output.frame_mask
    if frame_mask is None:
        frame_mask = torch.ones(output.start_logits.shape, dtype=torch.long, device=output.start_logits.device)
    pairs = rows // members
    fused = {
        "start_logits": _log_mean_softmax(output.start_logits, frame_mask, members),  # (pairs, frames)
        "end_logits": _log_mean_softmax(output.end_logits, frame_mask, members),
        "frame_mask": frame_mask.view(pairs, members, -1)[:, 0],
    }
    if output.inside_logits is not None:
        fused["inside_logits"] = _logit_of_mean_sigmoid(output.inside_logits, members)
    if output.saliency_logits is not None:
        saliency = output.saliency_logits.float().view(pairs, members, -1).mean(dim=1)
        fused["saliency_logits"] = saliency.masked_fill(fused["frame_mask"] == 0, torch.finfo(torch.float32).min)
    if output.violet_vtm_logits is not None:
        fused["violet_vtm_logits"] = _logit_of_mean_sigmoid(output.violet_vtm_logits, members)
    if output.all_in_one_vtm_logits is not None:
        probabilities = torch.softmax(output.all_in_one_vtm_logits.float(), dim=-1).view(pairs, members, 2).mean(1)
        fused["all_in_one_vtm_logits"] = torch.log(probabilities.clamp_min(torch.finfo(torch.float32).tiny))
    return VTGGroundingOutput(**fused)
