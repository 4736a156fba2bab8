"""Where prompt tokens enter each supported encoder: one declarative spec per architecture."""

from .architectures import ARCHITECTURES, CLIP, SIGLIP, TVP, X_CLIP, find_architecture, resolve_spec
from .spec import ArchitectureSpec, BoundSpec, BoundStream, FeatureSpec, FramewiseVideoSpec, StreamSpec

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "BoundSpec",
    "BoundStream",
    "CLIP",
    "FeatureSpec",
    "FramewiseVideoSpec",
    "SIGLIP",
    "StreamSpec",
    "TVP",
    "X_CLIP",
    "find_architecture",
    "resolve_spec",
]
