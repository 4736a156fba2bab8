"""Built-in injection specs, one small declaration per supported architecture, and spec resolution.

To support a new model, add an `ArchitectureSpec` to `ARCHITECTURES` (or pass explicit module paths in
`VTGPromptConfig`, which needs no code at all).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .spec import (
    ArchitectureSpec,
    BoundSpec,
    BoundStream,
    FeatureSpec,
    FramewiseVideoSpec,
    StreamSpec,
    VideoTowerSpec,
    get_attribute,
    infer_hidden_size,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..vtg_prompt.config import VTGPromptConfig


def _clip_logits(root: nn.Module, text_embeds: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
    return text_embeds @ video_embeds.t() * root.logit_scale.exp()


def _siglip_logits(root: nn.Module, text_embeds: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
    return text_embeds @ video_embeds.t() * root.logit_scale.exp() + root.logit_bias


def _clip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    targets = torch.arange(len(logits_per_text), device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2.0


def _siglip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    # +1 on the diagonal (matching pairs), -1 elsewhere: SigLIP's pairwise sigmoid loss.
    signs = 2 * torch.eye(logits_per_text.size(0), device=logits_per_text.device) - 1
    return -F.logsigmoid(signs * logits_per_text).sum(dim=-1).mean()


def _text_tokens(root: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    return root.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (batch, length, dim)


def _pooled_from_tower(root: nn.Module, tower_output: Any, batch: int, frames: int) -> torch.Tensor:
    """Image-text models: the image tower's pooled output (CLS / attention pool) of each frame, (batch, frames, dim)."""
    return tower_output.pooler_output.view(batch, frames, -1)


def _xclip_from_tower(root: nn.Module, tower_output: Any, batch: int, frames: int) -> torch.Tensor:
    """X-CLIP: per-frame CLS, projected, then its multi-frame integration transformer (temporal context per frame)."""
    cls = root.visual_projection(tower_output.pooler_output).view(batch, frames, -1)  # (batch, frames, projection_dim)
    # [0], not .last_hidden_state: early transformers 5 releases return the MIT's output as a plain tuple.
    return root.mit(cls)[0]  # (batch, frames, projection_dim)


def _run_tower_frames(frames_from_tower: Callable[[nn.Module, Any, int, int], torch.Tensor], root: nn.Module,
                      pixel_values: torch.Tensor) -> torch.Tensor:
    batch, frames = pixel_values.shape[:2]  # pixel_values: (batch, frames, 3, H, W)
    tower_output = root.vision_model(pixel_values=pixel_values.flatten(0, 1))  # rows = batch*frames
    return frames_from_tower(root, tower_output, batch, frames)


def _tower_frames(frames_from_tower: Callable[[nn.Module, Any, int, int], torch.Tensor]):
    """`FeatureSpec.video_frames` for a per-frame `vision_model`: the tower on every frame, then `frames_from_tower`.
    A partial of module-level functions, not a closure, so that a model holding it can be pickled (`torch.save`)."""
    return functools.partial(_run_tower_frames, frames_from_tower)


_xclip_frames = _tower_frames(_xclip_from_tower)


def _framewise_features(frames_from_tower=_pooled_from_tower) -> FeatureSpec:
    return FeatureSpec(
        video_frames=_tower_frames(frames_from_tower),
        text_tokens=_text_tokens,
        video_dim="config.vision_config.hidden_size",
        text_dim="config.text_config.hidden_size",
        frames_from_tower=frames_from_tower,
    )


def _cls_pooled_finish(tower: nn.Module, last_hidden_state: torch.Tensor) -> BaseModelOutputWithPooling:
    """CLIP / X-CLIP vision towers after their layers: post layer-norm on the CLS token."""
    pooled = tower.post_layernorm(last_hidden_state[:, 0, :])  # (rows, dim)
    return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


def _siglip_finish(tower: nn.Module, last_hidden_state: torch.Tensor) -> BaseModelOutputWithPooling:
    """SigLIP's vision tower after its layers: post layer-norm on every token, then the attention-pooling head."""
    last_hidden_state = tower.post_layernorm(last_hidden_state)
    # Older releases set use_head only when the config has vision_use_head; the head is there either way then.
    head = getattr(tower, "head", None) if getattr(tower, "use_head", True) else None
    pooled = head(last_hidden_state) if head is not None else None
    return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


def _clip_style_text(prefix: str, insert_position: int, config_attr: str) -> StreamSpec:
    return StreamSpec(
        layers=f"{prefix}.encoder.layers",
        slot_source="input_ids",
        insert_position=insert_position,
        module=prefix,
        strip_after=prefix,
        hidden_size=f"{config_attr}.hidden_size",
        embedding_table=f"{prefix}.embeddings.token_embedding",
        max_positions=f"{config_attr}.max_position_embeddings",
    )


def _vit_frames(prefix: str, insert_position: int, config_attr: str) -> StreamSpec:
    return StreamSpec(
        layers=f"{prefix}.encoder.layers",
        slot_source="layer_input",
        insert_position=insert_position,
        module=f"{prefix}.embeddings",
        # Before any pooling over tokens (SigLIP's attention-pooling head, X-CLIP's prompt generator on [:, 1:]).
        strip_after=f"{prefix}.encoder",
        hidden_size=f"{config_attr}.hidden_size",
        patch_size=f"{config_attr}.patch_size",
        num_channels=f"{config_attr}.num_channels",
        image_size=f"{config_attr}.image_size",
    )


CLIP = ArchitectureSpec(
    name="clip",
    model_classes=("CLIPModel",),
    # After BOS, so every text token (causal mask) sees the prompts; EOS pooling follows the shifted ids.
    text=_clip_style_text("text_model", 1, "config.text_config"),
    video=_vit_frames("vision_model", 1, "config.vision_config"),  # after CLS, which CLIP pools
    framewise=FramewiseVideoSpec(logits=_clip_logits, loss=_clip_loss),
    features=_framewise_features(),
    video_tower=VideoTowerSpec(module="vision_model", finish=_cls_pooled_finish, pooled_tokens=1),
)

SIGLIP = ArchitectureSpec(
    name="siglip",
    model_classes=("SiglipModel",),
    # SigLIP pools the last text token, so prompts go first, never last; the vision tower has no CLS token.
    text=_clip_style_text("text_model", 0, "config.text_config"),
    video=_vit_frames("vision_model", 0, "config.vision_config"),
    framewise=FramewiseVideoSpec(logits=_siglip_logits, loss=_siglip_loss),
    features=_framewise_features(),
    video_tower=VideoTowerSpec(module="vision_model", finish=_siglip_finish),
)

X_CLIP = ArchitectureSpec(
    name="x_clip",
    model_classes=("XCLIPModel",),
    text=_clip_style_text("text_model", 1, "config.text_config"),
    # After CLS: the cross-frame message token is built from token 0 and appended/removed inside each layer.
    video=_vit_frames("vision_model", 1, "config.vision_config"),
    features=FeatureSpec(
        video_frames=_xclip_frames,
        text_tokens=_text_tokens,
        video_dim="config.projection_dim",
        text_dim="config.text_config.hidden_size",
        num_frames="config.vision_config.num_frames",
        frames_from_tower=_xclip_from_tower,
    ),
    video_tower=VideoTowerSpec(module="vision_model", finish=_cls_pooled_finish, pooled_tokens=1),
)


def _tvp_text_offset(root: nn.Module, total_length: int, stream_length: int) -> int:
    return root.text_prompt.shape[1]  # TVP's own text prompt tokens come first


def _tvp_video_offset(root: nn.Module, total_length: int, stream_length: int) -> int:
    return total_length - stream_length  # the visual tokens close the joint sequence


TVP = ArchitectureSpec(
    name="tvp",
    model_classes=("TvpModel",),
    # Joint sequence: [TVP's 10 text prompts | text | visual]; the pooler reads token 0 (TVP's first prompt).
    text=StreamSpec(
        layers="encoder.layer",
        slot_source="embedding_output",
        insert_position=0,
        module="embeddings",
        strip_after="encoder",
        hidden_size="config.hidden_size",
        embedding_table="embeddings.word_embeddings",
        sequence_offset=_tvp_text_offset,
    ),
    video=StreamSpec(
        layers="encoder.layer",
        slot_source="embedding_output",
        insert_position=0,
        module="visual_embeddings",
        strip_after="encoder",
        hidden_size="config.hidden_size",
        sequence_offset=_tvp_video_offset,
    ),
    # No per-frame features: TVP averages its frames into one visual grid before the encoder.
    notes="transformers' TVP fails for batch size > 1 in add_2d_positional_embeddings (upstream bug). TVP has no "
    "per-frame features (it averages frames before the encoder), so peft_vtg's grounding head is not available.",
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (CLIP, SIGLIP, X_CLIP, TVP)

_OVERRIDE_FIELDS = (
    "video_embedding_module",
    "text_embedding_module",
    "video_layers_module",
    "text_layers_module",
    "video_insert_position",
    "text_insert_position",
)


def find_architecture(model: nn.Module) -> tuple[Optional[ArchitectureSpec], str]:
    """The built-in spec matching `model` or its first matching submodule, and that submodule's dotted path."""
    by_class = {name: spec for spec in ARCHITECTURES for name in spec.model_classes}
    for path, module in model.named_modules():
        spec = by_class.get(type(module).__name__)
        if spec is not None:
            return spec, path
    return None, ""


def _explicit_spec(config: "VTGPromptConfig") -> ArchitectureSpec:
    video = text = None
    if config.video_embedding_module or config.video_layers_module:
        if not (config.video_embedding_module and config.video_layers_module):
            raise ValueError("Explicit video injection needs both video_embedding_module and video_layers_module.")
        video = StreamSpec(
            layers=config.video_layers_module,
            slot_source="embedding_output",
            insert_position=config.video_insert_position or 0,
            module=config.video_embedding_module,
        )
    if config.text_embedding_module or config.text_layers_module:
        if not (config.text_embedding_module and config.text_layers_module):
            raise ValueError("Explicit text injection needs both text_embedding_module and text_layers_module.")
        text = StreamSpec(
            layers=config.text_layers_module,
            slot_source="embedding_output",
            insert_position=config.text_insert_position or 0,
            module=config.text_embedding_module,
        )
    return ArchitectureSpec(name="custom", model_classes=(), video=video, text=text)


def _with_overrides(spec: ArchitectureSpec, config: "VTGPromptConfig") -> ArchitectureSpec:
    """Apply the explicit paths/positions of `config` on top of a built-in spec."""
    changes = {}
    for stream in ("video", "text"):
        stream_spec: Optional[StreamSpec] = getattr(spec, stream)
        embedding = getattr(config, f"{stream}_embedding_module")
        layers = getattr(config, f"{stream}_layers_module")
        position = getattr(config, f"{stream}_insert_position")
        if stream_spec is None or not (embedding or layers or position is not None):
            continue
        updates = {}
        if layers:
            updates["layers"] = layers
        if position is not None:
            updates["insert_position"] = position
        if embedding:
            updates.update(module=embedding, slot_source="embedding_output", strip_after=None)
        changes[stream] = dataclasses.replace(stream_spec, **updates)
    return dataclasses.replace(spec, **changes) if changes else spec


def _bind_stream(root: nn.Module, stream: StreamSpec, name: str, spec_name: str) -> BoundStream:
    def resolve(path: Optional[str], what: str):
        if path is None:
            return None
        try:
            return get_attribute(root, path)
        except (AttributeError, IndexError, KeyError) as err:
            raise ValueError(
                f"The {name} stream's {what} path {path!r} does not exist in {type(root).__name__} (spec "
                f"{spec_name!r}); fix {name}_{'layers_module' if what == 'layers' else 'embedding_module'} in "
                "VTGPromptConfig."
            ) from err

    layers = resolve(stream.layers, "layers")
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"The {name} stream's layers path {stream.layers!r} must name a non-empty nn.ModuleList of encoder layers, "
            f"got {type(layers).__name__}; fix {name}_layers_module in VTGPromptConfig."
        )
    hidden = resolve(stream.hidden_size, "hidden size") if stream.hidden_size else infer_hidden_size(layers)
    bound = BoundStream(
        spec=stream,
        layers=layers,
        hidden_size=int(hidden),
        module=resolve(stream.module, "embedding"),
        strip_after=resolve(stream.strip_after, "strip"),
        embedding_table=resolve(stream.embedding_table, "embedding table"),
        max_positions=resolve(stream.max_positions, "max positions"),
    )
    if name == "text" and bound.embedding_table is None and bound.module is not None:
        tables = [m for m in bound.module.modules() if isinstance(m, nn.Embedding)]
        bound.embedding_table = tables[0] if tables else None
    for key in ("patch_size", "num_channels", "image_size"):
        path = getattr(stream, key)
        if path:
            bound.extra[key] = resolve(path, key.replace("_", " "))
    return bound


def resolve_spec(model: nn.Module, config: "VTGPromptConfig") -> BoundSpec:
    """Find and bind the injection spec for `model` under `config`.

    Built-in architectures are detected by class (anywhere in `model`); explicit module paths in `config` override the
    detected spec or, for other models, define it. Raises a `ValueError` naming the config fields to set when neither
    applies.
    """
    spec, root_path = find_architecture(model)
    has_paths = any(getattr(config, f) for f in _OVERRIDE_FIELDS if not f.endswith("position"))
    if spec is None:
        if not has_paths:
            supported = ", ".join(n for s in ARCHITECTURES for n in s.model_classes)
            raise ValueError(
                f"peft_vtg has no injection spec for {type(model).__name__} (built-in: {supported}). Tell it where "
                "prompts enter by setting, in VTGPromptConfig, video_embedding_module + video_layers_module and/or "
                "text_embedding_module + text_layers_module (dotted module paths, e.g. 'encoder.layers'), and "
                "optionally video_insert_position / text_insert_position."
            )
        spec, root_path = _explicit_spec(config), ""
    else:
        spec = _with_overrides(spec, config)
    bound = _bind(model, spec, root_path)
    for name, wanted in (("video", config.num_video_tokens), ("text", config.num_text_tokens)):
        if wanted and getattr(spec, name) is None:
            raise ValueError(
                f"num_{name}_tokens={wanted} but the {spec.name!r} spec of {type(bound.root).__name__} has no {name} "
                f"stream; set num_{name}_tokens=0 or give {name}_embedding_module and {name}_layers_module."
            )
    return bound


def bind_architecture(model: nn.Module) -> BoundSpec:
    """The built-in spec of `model` (or of its first matching submodule), bound, without any adapter config: for
    tools that run the frozen base model itself, such as the frozen-prefix cache builder."""
    spec, root_path = find_architecture(model)
    if spec is None:
        supported = ", ".join(n for s in ARCHITECTURES for n in s.model_classes)
        raise ValueError(f"peft_vtg has no built-in spec for {type(model).__name__} (built-in: {supported}).")
    return _bind(model, spec, root_path)


def _bind(model: nn.Module, spec: ArchitectureSpec, root_path: str) -> BoundSpec:
    root = get_attribute(model, root_path)
    # Bind every stream the spec has, used by this adapter or not, so later adapters can use it too.
    video = _bind_stream(root, spec.video, "video", spec.name) if spec.video else None
    text = _bind_stream(root, spec.text, "text", spec.name) if spec.text else None
    bound = BoundSpec(spec=spec, root=root, root_path=root_path, video=video, text=text)
    if spec.features is not None:
        bound.video_feature_size = int(get_attribute(root, spec.features.video_dim))
        bound.text_feature_size = int(get_attribute(root, spec.features.text_dim))
        if spec.features.num_frames:
            bound.required_num_frames = int(get_attribute(root, spec.features.num_frames))
    if spec.video_tower is not None:
        bound.video_tower = get_attribute(root, spec.video_tower.module)
    return bound
