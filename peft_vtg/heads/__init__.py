"""Task heads on top of a prompted encoder: grounding (span) head, video-text matching heads, span decoding."""

from .decoding import decode_frame_spans, decode_moments, span_log_scores
from .grounding import GroundingHead, boundary_targets, grounding_loss, saliency_loss
from .matching import AllInOneMatchingHead, VioletMatchingHead, swap_partners
from .task import VTM_HEADS, VTGGroundingOutput, VTGTaskHeads

__all__ = [
    "AllInOneMatchingHead",
    "GroundingHead",
    "VTGGroundingOutput",
    "VTGTaskHeads",
    "VTM_HEADS",
    "VioletMatchingHead",
    "boundary_targets",
    "decode_frame_spans",
    "decode_moments",
    "grounding_loss",
    "saliency_loss",
    "span_log_scores",
    "swap_partners",
]
