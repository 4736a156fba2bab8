"""Where prompt tokens enter each supported encoder: one declarative spec per architecture."""

from .architectures import (
    ARCHITECTURES,
    CLIP,
    SIGLIP,
    TVP,
    X_CLIP,
    bind_architecture,
    find_architecture,
    resolve_spec,
)
from .spec import (
    ArchitectureSpec,
    BoundSpec,
    BoundStream,
    FeatureSpec,
    FramewiseVideoSpec,
    StreamSpec,
    VideoTowerSpec,
)
from .tower import (
    available_layer_outputs,
    num_video_layers,
    run_video_tower_from,
    run_video_tower_layers,
    video_tower_input,
    video_tower_outputs,
    video_tower_weights_sha256,
)

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
    "VideoTowerSpec",
    "X_CLIP",
    "available_layer_outputs",
    "bind_architecture",
    "find_architecture",
    "num_video_layers",
    "resolve_spec",
    "run_video_tower_from",
    "run_video_tower_layers",
    "video_tower_input",
    "video_tower_outputs",
    "video_tower_weights_sha256",
]
