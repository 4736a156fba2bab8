"""Declarative description of where prompt tokens enter a video-language encoder.

An [`ArchitectureSpec`] names, for one model class, the modules of its video stream and its text stream as dotted
paths relative to that model, plus how each stream makes room for prompt tokens ("slots"):

- `"input_ids"` (text only): placeholder token ids are inserted into `input_ids` and ones into `attention_mask` before
  the text model runs. The model then builds its own causal/bidirectional mask, positions and end-of-text pooling
  for the longer sequence, which is the only way that is correct for every attention implementation. The learned
  prompts overwrite the placeholders' hidden states at the input of the prompted layers.
- `"embedding_output"`: slots are inserted into the output of an embedding module; for text the `attention_mask`
  argument of the spec's root model is extended to match.
- `"layer_input"` (video only, for per-frame ViTs that run without an attention mask): slots are inserted into the
  input of the first prompted layer, so layers below it run exactly as in the base model.

Slots are removed again after `strip_after`, so each stream's output has the base model's shape and every pooling
that reads token positions (CLS, end-of-text argmax, last token, X-CLIP's `[:, 1:]`) reads the token it reads in the
base model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

SlotSource = Literal["input_ids", "embedding_output", "layer_input"]


@dataclass(frozen=True)
class StreamSpec:
    """Where prompts enter one stream (video or text) of an encoder. All paths are relative to the spec's root."""

    layers: str
    """Dotted path of the `nn.ModuleList` of encoder layers (deep prompts overwrite slots at their inputs)."""
    slot_source: SlotSource
    """How the stream makes room for prompt tokens (see module docstring)."""
    insert_position: int
    """Index of the first slot in the stream's own token sequence (1 = after a CLS / BOS token)."""
    module: Optional[str] = None
    """`input_ids`: the text model whose forward receives `input_ids`/`attention_mask`. `embedding_output`: the
    module whose output gets the slots. `layer_input`: the embedding module (only used for `PATCH_MEAN` init)."""
    strip_after: Optional[str] = None
    """Module after whose output the slots are removed; None keeps them."""
    hidden_size: Optional[str] = None
    """Dotted attribute path of the hidden size (e.g. `config.vision_config.hidden_size`); None infers it from the
    first layer."""
    embedding_table: Optional[str] = None
    """Text only: the `nn.Embedding` of word embeddings (vocabulary inits, placeholder ids)."""
    max_positions: Optional[str] = None
    """Text `input_ids` mode: attribute path of the number of position embeddings."""
    patch_size: Optional[str] = None
    """Video: attribute path of the patch size (VPT fan-in)."""
    num_channels: Optional[str] = None
    """Video: attribute path of the number of input channels (VPT fan-in, `PATCH_MEAN` dummy frame)."""
    image_size: Optional[str] = None
    """Video: attribute path of the frame size (`PATCH_MEAN` dummy frame)."""
    sequence_offset: Optional[Callable[[nn.Module, int, int], int]] = None
    """Single-stream encoders: index, in the layers' joint sequence, of this stream's token 0. Called with the root
    module, the joint sequence length and this stream's length (slots included). None = 0."""


@dataclass(frozen=True)
class FramewiseVideoSpec:
    """Image-text models (CLIP, SigLIP) applied to video frame by frame.

    `pixel_values` of shape (batch, frames, channels, height, width) are flattened to (batch*frames, ...) before the
    model runs; afterwards the per-frame image embeddings are mean-pooled into one video embedding and the logits are
    recomputed per video.
    """

    logits: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    """(root, text_embeds (n_text, dim), video_embeds (batch, dim), both L2-normalised) -> logits_per_text."""
    loss: Callable[[torch.Tensor], torch.Tensor]
    """logits_per_text (n_text, batch) -> scalar loss, the model's own contrastive/sigmoid loss."""


@dataclass(frozen=True)
class FeatureSpec:
    """How the task heads read features from an encoder: one vector per video frame and one per text token.

    The callables run the encoder's own sub-models, so prompt tokens are injected exactly as in a full forward.
    """

    video_frames: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    """(root, pixel_values (batch, frames, channels, height, width)) -> per-frame features (batch, frames, video_dim)."""
    text_tokens: Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
    """(root, input_ids (batch, length), attention_mask (batch, length) or None) -> token features (batch, length,
    text_dim), the text encoder's last hidden states (prompt slots already removed)."""
    video_dim: str
    """Attribute path of `video_dim` (e.g. `config.vision_config.hidden_size`)."""
    text_dim: str
    """Attribute path of `text_dim`."""
    num_frames: Optional[str] = None
    """Attribute path of a fixed number of frames the video encoder requires (X-CLIP's temporal position
    embeddings); None = any number."""
    frames_from_tower: Optional[Callable[[nn.Module, Any, int, int], torch.Tensor]] = None
    """(root, the video tower's output for batch*frames rows, batch, frames) -> per-frame features (batch, frames,
    video_dim): what `video_frames` does after the tower (CLIP, SigLIP: the pooled output; X-CLIP: projection and
    MIT). With `ArchitectureSpec.video_tower`, it lets the heads read features computed from cached hidden states
    (`peft_vtg.cache`); None = no cache for this architecture."""


@dataclass(frozen=True)
class VideoTowerSpec:
    """The video tower as a stack of layers, for the frozen-prefix cache (`peft_vtg.cache`).

    Layers below `prompt_start_layer = k` see no prompt, so their output is a function of the video alone: the cache
    stores the hidden states entering layer k of the video stream's `layers` and later runs only layers k.. on them.

    Only what follows the layers is declared here. The cached states are captured from the tower's own forward (a
    hook at the input of layer k), so whatever sits between the embeddings and layer 0 (CLIP's `pre_layrnorm`,
    X-CLIP's `pre_layernorm`) runs exactly as in the model and needs no declaration.
    """

    module: str
    """Dotted path of the tower: the module that `FeatureSpec.video_frames` calls with pixel_values of shape
    (rows, channels, height, width) and that holds the video stream's `layers` (e.g. `vision_model`)."""
    finish: Callable[[nn.Module, torch.Tensor], Any]
    """(tower, output of its last layer (rows, tokens, dim), prompt slots removed) -> the tower's output as its own
    forward returns it (`last_hidden_state`, `pooler_output`): everything the tower does after its layers (post
    layer-norm, CLS or attention pooling). Build the output with all fields at once (transformers 5.0 leaves fields
    assigned later out of a ModelOutput's keys)."""
    pooled_tokens: Optional[int] = None
    """How many leading tokens of a layer's output `finish` reads to pool (1: the CLS token of CLIP and X-CLIP).
    A cache of final layer outputs stores only these, 50 times less than every token of a ViT-B/32 frame. None =
    every token (SigLIP's attention-pooling head reads them all)."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """Injection spec of one architecture. Adding a model is writing one of these (see `architectures.py`)."""

    name: str
    model_classes: tuple[str, ...]
    video: Optional[StreamSpec] = None
    text: Optional[StreamSpec] = None
    framewise: Optional[FramewiseVideoSpec] = None
    features: Optional[FeatureSpec] = None
    """Per-frame / per-token features for the grounding and matching heads; None = the heads are not available."""
    video_tower: Optional[VideoTowerSpec] = None
    """How to run the video tower from the input of one of its layers (the frozen-prefix cache); None = no cache."""
    notes: str = ""


def get_attribute(root: Any, path: str) -> Any:
    """Follow a dotted attribute path ("" is `root` itself); integer parts index sequences."""
    obj = root
    if not path:
        return obj
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential, list, tuple)) else getattr(obj, part)
    return obj


def infer_hidden_size(layers: nn.ModuleList) -> int:
    """Hidden size of a stack of transformer layers, read from its first LayerNorm (or first Linear's input)."""
    first = layers[0]
    for module in first.modules():
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[-1])
    for module in first.modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    raise ValueError(f"Cannot infer the hidden size of {type(first).__name__}: it has no LayerNorm or Linear.")


@dataclass
class BoundStream:
    """A `StreamSpec` resolved against a model instance."""

    spec: StreamSpec
    layers: nn.ModuleList
    hidden_size: int
    module: Optional[nn.Module] = None
    strip_after: Optional[nn.Module] = None
    embedding_table: Optional[nn.Embedding] = None
    max_positions: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BoundSpec:
    """An `ArchitectureSpec` resolved against a model instance: modules instead of paths."""

    spec: ArchitectureSpec
    root: nn.Module
    root_path: str
    video: Optional[BoundStream]
    text: Optional[BoundStream]
    video_feature_size: Optional[int] = None
    """Width of the per-frame video features the heads read (None: the spec has no `features`)."""
    text_feature_size: Optional[int] = None
    """Width of the per-token text features the heads read."""
    required_num_frames: Optional[int] = None
    """Number of frames the video encoder requires, if fixed."""
    video_tower: Optional[nn.Module] = None
    """The module `spec.video_tower.module` names (None: the spec declares no video tower)."""
