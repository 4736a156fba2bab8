"""Prompt ensembles: several adapters' grounding outputs for the same (video, query) fused into one output.

Each adapter's start and end logits define a distribution over frames (a softmax). Two ways to fuse them:

- "mean" (the default): the mean of the members' probabilities, a mixture. A frame one member is sure of keeps half
  of that certainty in an ensemble of two; when members disagree, the mixture has several modes, and since start and
  end are fused separately a span may take its start from one member and its end from another.
- "geometric": the normalised geometric mean (the mean of the log-probabilities), a product of experts. A frame
  scores high only where every member gives it weight, so disagreement lowers a span's score instead of splitting it.

The fused output carries log-probabilities as its logits, so `decode_moments` and `calibrated_spans` (which take a
softmax) decode it as they decode one adapter, and an ensemble of one adapter decodes exactly as that adapter.
"""

from __future__ import annotations

import math

import torch

from .task import VTGGroundingOutput

ENSEMBLE_FUSIONS = ("mean", "geometric")


def _fused_log_softmax(logits: torch.Tensor, frame_mask: torch.Tensor, members: int, fusion: str) -> torch.Tensor:
    """(rows * members, frames) logits -> (rows, frames) fused log-probabilities over the real frames ("mean": log of
    the mean softmax; "geometric": the mean log-softmax, renormalised); padded frames hold the lowest float32 value,
    as the heads write them."""
    padding = frame_mask == 0  # (rows * members, frames)
    rows = logits.shape[0] // members
    log_probabilities = torch.log_softmax(logits.float().masked_fill(padding, float("-inf")), dim=-1)
    per_member = log_probabilities.view(rows, members, -1)  # (rows, members, frames)
    if fusion == "mean":
        fused = torch.logsumexp(per_member, dim=1) - math.log(members)
    else:
        fused = torch.log_softmax(per_member.masked_fill(per_member.isinf(), 0.0).mean(dim=1)
                                  .masked_fill(padding.view(rows, members, -1)[:, 0], float("-inf")), dim=-1)
    lowest = torch.finfo(torch.float32).min
    return fused.clamp_min(lowest).masked_fill(padding.view(rows, members, -1)[:, 0], lowest)


def _fused_binary_logits(logits: torch.Tensor, members: int, fusion: str) -> torch.Tensor:
    """(rows * members, ...) logits of independent probabilities -> (rows, ...) fused logits ("mean": the logit of
    the mean probability; "geometric": the mean logit, the normalised geometric mean of a Bernoulli)."""
    rows = logits.shape[0] // members
    per_member = logits.float().view(rows, members, *logits.shape[1:])
    if fusion == "geometric":
        return per_member.mean(dim=1)
    return torch.logit(torch.sigmoid(per_member).mean(dim=1), eps=1e-6)


def fuse_grounding_outputs(output: VTGGroundingOutput, members: int, fusion: str = "mean") -> VTGGroundingOutput:
    """Fuse the outputs of `members` adapters for each (video, query) into one output per pair.

    Args:
        output: a grounding output with rows grouped by pair, members adjacent: row `pair * members + m` is member
            m's output for that pair (what a forward with `adapter_names = names * pairs` gives).
        members: adapters per pair (>= 1).
        fusion: "mean", the mean of the members' probabilities (default), or "geometric", their normalised
            geometric mean (see the module's docstring):
            - start / end: log of the mean per-frame softmax (a mixture), or the renormalised mean log-softmax;
            - inside and VIOLET matching: logit of the mean sigmoid probability, or the mean logit;
            - All-in-One matching: log of the mean (mismatch, match) softmax, or the renormalised mean log-softmax;
            - saliency: the mean of the logits either way (a ranking score per frame, not a probability).

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
        "start_logits": _fused_log_softmax(output.start_logits, frame_mask, members, fusion),  # (pairs, frames)
        "end_logits": _fused_log_softmax(output.end_logits, frame_mask, members, fusion),
        "frame_mask": frame_mask.view(pairs, members, -1)[:, 0],
    }
    if output.inside_logits is not None:
        fused["inside_logits"] = _fused_binary_logits(output.inside_logits, members, fusion)
    if output.saliency_logits is not None:
        saliency = output.saliency_logits.float().view(pairs, members, -1).mean(dim=1)
        fused["saliency_logits"] = saliency.masked_fill(fused["frame_mask"] == 0, torch.finfo(torch.float32).min)
    if output.violet_vtm_logits is not None:
        fused["violet_vtm_logits"] = _fused_binary_logits(output.violet_vtm_logits, members, fusion)
    if output.all_in_one_vtm_logits is not None:
        per_member = torch.log_softmax(output.all_in_one_vtm_logits.float(), dim=-1).view(pairs, members, 2)
        fused["all_in_one_vtm_logits"] = (torch.logsumexp(per_member, dim=1) - math.log(members) if fusion == "mean"
                                          else torch.log_softmax(per_member.mean(dim=1), dim=-1))
    return VTGGroundingOutput(**fused)
