"""Task heads on top of a prompted encoder: grounding (span) head, video-text matching heads, span decoding,
prompt-ensemble fusion."""

from .decoding import decode_frame_spans, decode_moments, span_log_scores
from .ensemble import ENSEMBLE_FUSIONS, fuse_grounding_outputs
from .grounding import GroundingHead, boundary_targets, grounding_loss, saliency_loss
from .matching import AllInOneMatchingHead, VioletMatchingHead, swap_partners
from .task import VTM_HEADS, VTGGroundingOutput, VTGTaskHeads

__all__ = [
    "AllInOneMatchingHead",
    "ENSEMBLE_FUSIONS",
    "GroundingHead",
    "VTGGroundingOutput",
    "VTGTaskHeads",
    "VTM_HEADS",
    "VioletMatchingHead",
    "boundary_targets",
    "decode_frame_spans",
    "decode_moments",
    "fuse_grounding_outputs",
    "grounding_loss",
    "saliency_loss",
    "span_log_scores",
    "swap_partners",
]
