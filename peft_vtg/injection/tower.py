"""The video tower split at a layer: the frozen prefix (embeddings .. layer k-1) and the rest (layer k .. the end).

Layers below `prompt_start_layer = k` see no prompt, so the hidden states entering layer k are a function of the
video alone and can be computed once (`peft_vtg.cache`). This module does the two halves from an
`ArchitectureSpec.video_tower` declaration:

- `video_tower_input`: the hidden states entering layer k, captured from the tower's own forward (so the modules
  between the embeddings and layer 0 run exactly as in the model).
- `run_video_tower_from`: layers k.. on such states, with the prompt hooks acting as in a full forward, then what the
  tower does after its layers (`VideoTowerSpec.finish`). Its output is what the tower's forward returns, so the
  feature code after the tower (`FeatureSpec.frames_from_tower`: X-CLIP's projection and MIT, ...) is shared.
- Several layers' features (a head that reads the last m layers, `head_video_layers`): `run_video_tower_layers`
  finishes each of the last m layer outputs as if the tower ended there; `captured_layer_outputs` collects them
  during a full forward; `video_tower_outputs` computes them for a cache of final features, cut to the tokens the
  pooling reads (`VideoTowerSpec.pooled_tokens`).

`video_tower_weights_sha256` hashes the weights the prefix depends on, so a cache can be matched to its model.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import nn

from .hooks import PromptInjector, _hidden_of
from .spec import BoundSpec


class _Captured(Exception):
    """Raised by the capture hook to stop the tower's forward once layer k's input is known (nothing above it is
    needed, and running it would cost the time the cache is there to save)."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("captured")
        self.hidden = hidden


def check_video_tower(bound: BoundSpec) -> None:
    """Raise a `ValueError` naming what is missing when `bound`'s architecture cannot run its video tower from a
    layer (no `video_tower` in its spec, no `frames_from_tower`, or video layers outside the tower)."""
    spec = bound.spec
    if spec.video_tower is None or bound.video is None or bound.video_tower is None:
        raise ValueError(
            f"The {spec.name!r} spec declares no video tower (ArchitectureSpec.video_tower), so it cannot run from "
            "cached hidden states; the frozen-prefix cache supports CLIP, SigLIP and X-CLIP."
        )
    if spec.features is None or spec.features.frames_from_tower is None:
        raise ValueError(
            f"The {spec.name!r} spec has no FeatureSpec.frames_from_tower, so per-frame features cannot be computed "
            "from cached hidden states."
        )
    if not any(module is bound.video.layers for module in bound.video_tower.modules()):
        raise ValueError(
            f"The video layers ({bound.video.spec.layers!r}) are not inside the video tower "
            f"({spec.video_tower.module!r}); a video_layers_module override cannot be used with the cache."
        )


def num_video_layers(bound: BoundSpec) -> int:
    """L, the number of layers of the video stream; a cache layer k lies in 0..L (L: the last layer's output)."""
    return len(bound.video.layers)


def _check_layer(bound: BoundSpec, layer: Any) -> int:
    total = num_video_layers(bound)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= total:
        raise ValueError(
            f"The cache layer must be a whole number in 0..{total} (the video tower has {total} layers; {total} "
            f"means its final hidden states), got {layer!r}."
        )
    return layer


def check_num_layers(bound: BoundSpec, num_layers: Any, name: str = "num_layers") -> int:
    """`num_layers`, a count of the video tower's last layers, checked to be a whole number in 1..L; the error
    names the field (`name`)."""
    total = num_video_layers(bound)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise ValueError(f"{name} must be a whole number in 1..{total} (the video tower has {total} layers), got "
                         f"{num_layers!r}.")
    return num_layers


def video_tower_input(bound: BoundSpec, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """The hidden states entering video layer `layer` (its last layer's output for `layer = L`).

    Run on the base model without prompts (the cache builder refuses a model with a VTG adapter). The tower's own
    forward runs and is stopped at the input of layer `layer`, so nothing above it is computed.

    Args:
        bound: the base model's bound spec (`bind_architecture`).
        pixel_values: (rows, channels, height, width); rows = videos*frames, whole videos in order (X-CLIP mixes the
            frames of one video inside its layers).
        layer: k in 0..L.

    Returns:
        (rows, tokens, hidden) in the model's dtype.
    """
    check_video_tower(bound)
    layer = _check_layer(bound, layer)
    layers = bound.video.layers
    if layer < len(layers):

        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            raise _Captured(args[0] if args else kwargs["hidden_states"])

        handle = layers[layer].register_forward_pre_hook(capture, with_kwargs=True)
    else:

        def capture_output(module: nn.Module, args: tuple, output: Any) -> None:
            raise _Captured(_hidden_of(output))

        handle = layers[-1].register_forward_hook(capture_output)
    try:
        bound.video_tower(pixel_values=pixel_values)
    except _Captured as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"The video tower's forward never reached layer {layer}; its spec does not match the model.")


@functools.lru_cache(maxsize=None)
def _layer_mask_arguments(forward: Any) -> tuple[str, ...]:
    # Vision layers take attention_mask (always None for ViTs); transformers 5.0's X-CLIP layers also take a
    # required causal_attention_mask.
    names = inspect.signature(forward).parameters
    return tuple(name for name in ("attention_mask", "causal_attention_mask") if name in names)


def call_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One encoder layer of a ViT on (rows, tokens, dim), as its encoder calls it (no masks); its hidden output."""
    masks = {name: None for name in _layer_mask_arguments(type(layer).forward)}
    return _hidden_of(layer(hidden, **masks))


def run_video_tower_from(
    bound: BoundSpec,
    hidden_states: torch.Tensor,
    layer: int,
    injector: Optional[PromptInjector] = None,
) -> Any:
    """The video tower's output computed from the hidden states entering layer `layer`.

    Layers `layer`.. run one by one, so their prompt hooks insert and refresh video prompts as in a full forward;
    the slots are then removed (what the hook on `strip_after` does) and `VideoTowerSpec.finish` pools.

    Args:
        bound: the bound spec of the (adapter-carrying) model.
        hidden_states: (rows, tokens, hidden), e.g. from `video_tower_input`; cast to the layers' dtype. At
            `layer = L` also (rows, stored_layers, tokens, hidden), see `run_video_tower_layers`.
        layer: k in 0..L; L runs no layer (the states are the final ones).
        injector: the adapter layer's prompt injector (its bookkeeping is reset and its slots stripped); None for a
            model without adapter.

    Returns:
        What the tower's forward returns for the same frames: `last_hidden_state` (rows, tokens, hidden) and
        `pooler_output` (rows, hidden).
    """
    return run_video_tower_layers(bound, hidden_states, layer, injector, num_layers=1)[0]


def available_layer_outputs(bound: BoundSpec, layer: int, stored_layers: int = 1) -> int:
    """How many of the video tower's last layer outputs can be computed from states entering layer `layer`: from
    k = 0 all L; from 0 < k < L the outputs of layers k-1 (the states themselves) .. L-1; from k = L the
    `stored_layers` final outputs a cache of final features holds."""
    total = num_video_layers(bound)
    if layer == 0:
        return total
    return total - layer + 1 if layer < total else stored_layers


def run_video_tower_layers(
    bound: BoundSpec,
    hidden_states: torch.Tensor,
    layer: int,
    injector: Optional[PromptInjector] = None,
    num_layers: int = 1,
) -> list[Any]:
    """The tower's output as if it ended after each of its last `num_layers` layers, computed from the hidden states
    entering layer `layer` (see `run_video_tower_from`, which is the last of these).

    Each layer's output has its prompt slots removed and goes through `VideoTowerSpec.finish`, so every entry pools
    as the tower's own output does (a head over several layers' features reads them all alike).

    Args:
        hidden_states: (rows, tokens, hidden) entering layer k; at k = L also (rows, stored_layers, tokens, hidden),
            the outputs of the last `stored_layers` layers, earliest first (`video_tower_outputs`).
        layer: k in 0..L.
        num_layers: m >= 1; at most `available_layer_outputs(bound, k, stored_layers)`.

    Returns:
        m tower outputs (`last_hidden_state`, `pooler_output`), for layers L-m .. L-1 in that order.
    """
    check_video_tower(bound)
    layer = _check_layer(bound, layer)
    layers = bound.video.layers
    total = len(layers)
    num_layers = check_num_layers(bound, num_layers)
    reference = next(layers.parameters(), None)
    hidden = hidden_states
    if reference is not None:
        hidden = hidden.to(device=reference.device, dtype=reference.dtype)
    outputs: dict[int, torch.Tensor] = {}  # layer index -> its output (rows, tokens, hidden), slots removed
    if layer == total and hidden.dim() == 4:
        for index in range(hidden.shape[1]):
            outputs[total - hidden.shape[1] + index] = hidden[:, index]
    else:
        if hidden.dim() != 3:
            raise ValueError(f"Hidden states entering video layer {layer} must be (rows, tokens, hidden), got shape "
                             f"{tuple(hidden.shape)}; only final states (layer {total}) carry a layer axis.")
        if layer > 0:
            outputs[layer - 1] = hidden
        if injector is not None:
            injector.forget_slots("video")
        for index in range(layer, total):
            hidden = call_layer(layers[index], hidden)
            if index >= total - num_layers:
                outputs[index] = injector.without_slots("video", hidden) if injector is not None else hidden
        if injector is not None:
            injector.strip_slots("video", hidden)  # ends the call's bookkeeping
    wanted = range(total - num_layers, total)
    if any(index not in outputs for index in wanted):
        stored = hidden_states.shape[1] if layer == total and hidden_states.dim() == 4 else 1
        raise ValueError(
            f"The features of the last {num_layers!r} video layers cannot be computed from the hidden states entering "
            f"layer {layer}: they give the outputs of the last {available_layer_outputs(bound, layer, stored)} layers "
            f"only. Use a cache of a lower layer (--layer {total - num_layers + 1} or below), or of final features "
            f"with --feature-layers {num_layers}."
        )
    finish = bound.spec.video_tower.finish
    return [finish(bound.video_tower, outputs[index]) for index in wanted]


@contextmanager
def captured_layer_outputs(
    bound: BoundSpec, injector: Optional[PromptInjector], indices: Iterable[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """While the block runs the video tower, collect the outputs of video layers `indices` (prompt slots removed):
    a dict layer index -> (rows, tokens, hidden), filled as the layers run."""
    outputs: dict[int, torch.Tensor] = {}

    def keep(index: int, module: nn.Module, args: tuple, output: Any) -> None:
        hidden = _hidden_of(output)
        outputs[index] = injector.without_slots("video", hidden) if injector is not None else hidden

    handles = [bound.video.layers[index].register_forward_hook(functools.partial(keep, index)) for index in indices]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def video_tower_outputs(bound: BoundSpec, pixel_values: torch.Tensor, num_layers: int = 1) -> torch.Tensor:
    """The outputs of the video tower's last `num_layers` layers, cut to the tokens its pooling reads
    (`VideoTowerSpec.pooled_tokens`; every token when it is None): what a cache of final features stores.

    Run on the base model without prompts, as `video_tower_input`; nothing after the last layer runs.

    Args:
        pixel_values: (rows, channels, height, width), whole videos in order.
        num_layers: m in 1..L.

    Returns:
        (rows, m, tokens, hidden), earliest layer first.
    """
    check_video_tower(bound)
    total = num_video_layers(bound)
    num_layers = check_num_layers(bound, num_layers, "feature_layers")
    tokens = bound.spec.video_tower.pooled_tokens
    layers = bound.video.layers

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _Captured(_hidden_of(output))

    handle = layers[-1].register_forward_hook(stop)
    try:
        with captured_layer_outputs(bound, None, range(total - num_layers, total - 1)) as earlier:
            try:
                bound.video_tower(pixel_values=pixel_values)
            except _Captured as captured:
                earlier[total - 1] = captured.hidden
            else:
                raise RuntimeError("The video tower's forward never reached its last layer; its spec does not match "
                                   "the model.")
    finally:
        handle.remove()
    stacked = torch.stack([earlier[index] for index in range(total - num_layers, total)], dim=1)
    return stacked[:, :, :tokens] if tokens is not None else stacked


def video_tower_weights_sha256(bound: BoundSpec, layer: int) -> str:
    """sha256 of the weights the hidden states entering video layer `layer` depend on: every tensor of the video
    tower's state dict (name, dtype, shape and bytes, in name order) except those of layers `layer`.. . The weights
    after the tower (projections, X-CLIP's MIT) and the text tower are not in it: the cached states do not depend
    on them, and from the cache they are run from the loaded model anyway."""
    check_video_tower(bound)
    layer = _check_layer(bound, layer)
    skipped = {id(t) for block in bound.video.layers[layer:] for t in block.state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for name, tensor in sorted(bound.video_tower.state_dict(keep_vars=True).items()):
        if id(tensor) in skipped:
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
        # Raw bytes through a uint8 view: works for every dtype (numpy has no bfloat16).
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
