"""Forward hooks that insert, refresh and remove prompt tokens according to a bound `ArchitectureSpec`.

The hooks never own parameters: they ask a [`PromptSource`] (the adapter layer) for the prompts of the current call.
When the source has no prompts for a stream (adapters disabled, or the active adapter has no tokens for it) the
hooks leave every tensor untouched, so the model computes exactly what the base model computes.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import nn
from torch.nn.functional import normalize
from torch.utils.hooks import RemovableHandle

from .spec import BoundSpec, BoundStream

STREAMS = ("video", "text")


@dataclass(frozen=True)
class StreamPlan:
    """The prompt layout of one stream in the current call."""

    num_tokens: int
    start_layer: int
    depth: int
    # Text streams fed by input_ids: words keep their position ids and the prompt slots share the position of the
    # token before them, instead of every later word moving num_tokens positions on.
    keep_positions: bool = False

    def prompts_layer(self, layer_index: int) -> bool:
        return self.start_layer <= layer_index < self.start_layer + self.depth


class PromptSource(Protocol):
    """What the hooks need from the adapter layer."""

    def stream_plan(self, stream: str) -> Optional[StreamPlan]:
        """The layout of `stream`'s prompts in this call, or None when the stream gets no prompts."""

    def prompt_tokens(self, stream: str, depth_index: int, rows: int, like: torch.Tensor) -> torch.Tensor:
        """Prompts for the `depth_index`-th prompted layer, shape (rows, num_tokens, hidden), dtype/device of `like`.

        `rows` is the leading dimension of the hidden states: the batch, or batch*frames for per-frame encoders.
        """


@functools.lru_cache(maxsize=None)
def _positional_names(forward: Any) -> tuple[str, ...]:
    params = inspect.signature(forward).parameters.values()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _as_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Merge positional arguments into kwargs by the forward signature, so hooks can edit arguments by name."""
    if not args:
        return dict(kwargs)
    names = _positional_names(type(module).forward)
    names = names[1:] if names and names[0] == "self" else names
    if len(args) > len(names):
        raise TypeError(f"{type(module).__name__}.forward got {len(args)} positional arguments; expected at most {len(names)}.")
    merged = dict(zip(names, args))
    merged.update(kwargs)
    return merged


def _insert(sequence: torch.Tensor, position: int, tokens: torch.Tensor) -> torch.Tensor:
    """Insert `tokens` (rows, n, ...) into `sequence` (rows, length, ...) before index `position`: hidden states,
    token ids and attention masks alike."""
    return torch.cat([sequence[:, :position], tokens.to(sequence.dtype), sequence[:, position:]], dim=1)


def check_insert_position(stream: str, position: int, length: int) -> None:
    """An insert position past the end of the stream's tokens would append the prompts after them (after EOS, where
    a text encoder's pooling never sees them; after the patches, where nothing strips them): refuse it, naming the
    setting."""
    if position > length:
        raise ValueError(
            f"{stream}_insert_position={position} lies past the {length} tokens of the {stream} stream here "
            f"({'each query, padding included' if stream == 'text' else 'each frame'}); use a position <= {length}, "
            "e.g. 1 (right after [CLS] or BOS), or None for the architecture's default."
        )


def _replace(sequence: torch.Tensor, position: int, tokens: torch.Tensor) -> torch.Tensor:
    n = tokens.shape[1]
    return torch.cat([sequence[:, :position], tokens.to(sequence.dtype), sequence[:, position + n :]], dim=1)


def _remove(sequence: torch.Tensor, position: int, n: int) -> torch.Tensor:
    return torch.cat([sequence[:, :position], sequence[:, position + n :]], dim=1)


def _hidden_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output["last_hidden_state"]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    output["last_hidden_state"] = hidden
    return output


def _placeholder_id(config: Any, table: nn.Embedding) -> int:
    """A token id for text slots: never the EOS id, and below it, because CLIP-style models pool the EOS position by
    `argmax` over the ids (older checkpoints) or by the first `== eos_token_id` match. Its embedding is overwritten by
    the prompts before any prompted layer reads it."""
    eos = getattr(config, "eos_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    for candidate in (pad, 0, 1):
        if candidate is not None and candidate != eos and 0 <= candidate < table.num_embeddings:
            if eos is None or candidate < eos:
                return int(candidate)
    raise ValueError(f"Cannot choose a placeholder token id below eos_token_id={eos}; set pad_token_id in the text config.")


class PromptInjector:
    """Installs the hooks of one bound spec and keeps the per-call slot bookkeeping.

    Per-call state (where slots currently sit) lives on this object and is rewritten by each forward; it is how a
    hook deep inside the encoder knows what an earlier hook inserted in the same call.
    """

    def __init__(self, bound: BoundSpec, source: PromptSource) -> None:
        self.bound = bound
        self.source = source
        self.handles: list[RemovableHandle] = []
        # stream -> (stream_length, plan) while its slots exist in the current call
        self._slots: dict[str, tuple[int, StreamPlan]] = {}
        self._video_shape: Optional[tuple[int, int]] = None
        self._return_loss = False

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        bound = self.bound
        self.handles.append(bound.root.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
        if bound.spec.framewise is not None:
            self.handles.append(bound.root.register_forward_hook(self._framewise_hook, with_kwargs=True))
        strip_groups: dict[int, tuple[nn.Module, list[str]]] = {}
        for stream in STREAMS:
            bs: Optional[BoundStream] = getattr(bound, stream)
            if bs is None:
                continue
            source = bs.spec.slot_source
            if source == "input_ids":
                self.handles.append(
                    bs.module.register_forward_pre_hook(functools.partial(self._input_ids_hook, stream), with_kwargs=True)
                )
            elif source == "embedding_output":
                self.handles.append(bs.module.register_forward_hook(functools.partial(self._embedding_output_hook, stream)))
            for index, layer in enumerate(bs.layers):
                hook = functools.partial(self._layer_pre_hook, stream, index)
                self.handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            if bs.strip_after is not None:
                strip_groups.setdefault(id(bs.strip_after), (bs.strip_after, []))[1].append(stream)
        for module, streams in strip_groups.values():
            self.handles.append(module.register_forward_hook(functools.partial(self._strip_hook, tuple(streams))))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # ------------------------------------------------------------------ running layers without their parents
    def forget_slots(self, stream: str) -> None:
        """Start a new call of `stream` that enters its layers directly (not through the modules whose hooks reset
        the bookkeeping, e.g. from a cached layer input): no slots of an earlier call are assumed present."""
        self._slots.pop(stream, None)

    def strip_slots(self, stream: str, hidden: torch.Tensor) -> torch.Tensor:
        """Remove `stream`'s slots from `hidden` (rows, tokens, dim), as the hook on `strip_after` does, for callers
        that ran the layers themselves; `hidden` unchanged when the stream has no slots in this call."""
        hidden = self.without_slots(stream, hidden)
        self._slots.pop(stream, None)
        return hidden

    def without_slots(self, stream: str, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden` (rows, tokens, dim), the output of one of `stream`'s layers in the current call, without the
        prompt slots it holds (none below the first prompted layer); the bookkeeping stays, so the layers above still
        find their slots. For reading intermediate layers (a head over several layers' features)."""
        if stream not in self._slots:
            return hidden
        stream_length, plan = self._slots[stream]
        return _remove(hidden, self._position(stream, hidden.shape[1], stream_length), plan.num_tokens)

    # ------------------------------------------------------------------ helpers
    def _stream(self, stream: str) -> BoundStream:
        return getattr(self.bound, stream)

    def _position(self, stream: str, total_length: int, stream_length: int) -> int:
        """Index of the first slot of `stream` in a hidden sequence of `total_length` tokens."""
        bs = self._stream(stream)
        offset = bs.spec.sequence_offset(self.bound.root, total_length, stream_length) if bs.spec.sequence_offset else 0
        return offset + bs.spec.insert_position

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        self._slots.clear()
        self._video_shape = None
        self._return_loss = False
        needs_mask = self.bound.text is not None and self.bound.text.spec.slot_source == "embedding_output"
        framewise = self.bound.spec.framewise is not None
        if not (needs_mask or framewise):
            return None
        call = _as_kwargs(module, args, kwargs)
        pixel_values = call.get("pixel_values")
        if framewise and isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            batch, frames = pixel_values.shape[:2]
            # (batch, frames, C, H, W) -> (batch*frames, C, H, W): the image tower sees one frame per row.
            call["pixel_values"] = pixel_values.flatten(0, 1)
            self._video_shape = (batch, frames)
            # The model's own loss would pair texts with frames; it is recomputed per video afterwards.
            self._return_loss = bool(call.pop("return_loss", False))
        plan = self.source.stream_plan("text") if needs_mask else None
        mask = call.get("attention_mask")
        if plan is not None and isinstance(mask, torch.Tensor):
            position = self.bound.text.spec.insert_position
            call["attention_mask"] = _insert(mask, position, mask.new_ones(mask.shape[0], plan.num_tokens))
        return (), call

    def _input_ids_hook(self, stream: str, module: nn.Module, args: tuple, kwargs: dict):
        plan = self.source.stream_plan(stream)
        self._slots.pop(stream, None)
        if plan is None:
            return None
        bs = self._stream(stream)
        call = _as_kwargs(module, args, kwargs)
        input_ids = call.get("input_ids")
        if input_ids is None:
            raise ValueError(f"{type(module).__name__} got no input_ids; text prompts need token ids, not inputs_embeds.")
        position_ids = call.get("position_ids")
        if position_ids is not None and not plan.keep_positions:
            raise ValueError(
                "Custom position_ids cannot be combined with text prompts that shift positions "
                "(keep_text_positions=False); drop position_ids, set keep_text_positions=True, or set num_text_tokens=0."
            )
        length = input_ids.shape[-1]
        if bs.max_positions is not None and length + plan.num_tokens > bs.max_positions:
            raise ValueError(
                f"The text is {length} tokens long; with num_text_tokens={plan.num_tokens} prompt tokens it needs "
                f"{length + plan.num_tokens} positions, but the text encoder has max_position_embeddings="
                f"{bs.max_positions}. Tokenize with truncation=True, max_length={bs.max_positions - plan.num_tokens} "
                "(and padding='max_length' for SigLIP), or lower num_text_tokens."
            )
        input_ids = input_ids.view(-1, length)
        position = bs.spec.insert_position
        check_insert_position(stream, position, length)
        placeholder = _placeholder_id(getattr(module, "config", None), bs.embedding_table)
        slots = input_ids.new_full((input_ids.shape[0], plan.num_tokens), placeholder)
        call["input_ids"] = _insert(input_ids, position, slots)
        if plan.keep_positions:
            if position_ids is None:
                position_ids = torch.arange(length, device=input_ids.device)
            position_ids = position_ids.reshape(-1, length).expand(input_ids.shape[0], -1)  # (rows, length)
            shared = position_ids[:, max(position - 1, 0) : max(position, 1)]  # (rows, 1): the token before the slots
            call["position_ids"] = _insert(position_ids, position, shared.expand(-1, plan.num_tokens))
        mask = call.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            mask = mask.view(-1, length)
            call["attention_mask"] = _insert(mask, position, mask.new_ones(mask.shape[0], plan.num_tokens))
        self._slots[stream] = (length + plan.num_tokens, plan)
        return (), call

    def _embedding_output_hook(self, stream: str, module: nn.Module, args: tuple, output: Any):
        plan = self.source.stream_plan(stream)
        self._slots.pop(stream, None)
        if plan is None:
            return None
        hidden = _hidden_of(output)  # (rows, tokens, hidden)
        # Zeros until the first prompted layer writes the learned tokens (prompt_start_layer may be > 0).
        empty = hidden.new_zeros(hidden.shape[0], plan.num_tokens, hidden.shape[-1])
        position = self._stream(stream).spec.insert_position
        check_insert_position(stream, position, hidden.shape[1])
        hidden = _insert(hidden, position, empty)
        self._slots[stream] = (hidden.shape[1], plan)
        return _with_hidden(output, hidden)

    def _layer_pre_hook(self, stream: str, index: int, module: nn.Module, args: tuple, kwargs: dict):
        bs = self._stream(stream)
        if bs.spec.slot_source == "layer_input":
            plan = self.source.stream_plan(stream)
            if index == 0:
                self._slots.pop(stream, None)
            if plan is None or not plan.prompts_layer(index):
                return None
        else:
            if stream not in self._slots:
                return None
            plan = self._slots[stream][1]
            if not plan.prompts_layer(index):
                return None
        hidden = args[0] if args else kwargs["hidden_states"]  # (rows, tokens, hidden)
        prompts = self.source.prompt_tokens(stream, index - plan.start_layer, hidden.shape[0], hidden)
        if bs.spec.slot_source == "layer_input" and index == plan.start_layer:
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            if mask is not None:
                raise ValueError(
                    f"{type(module).__name__} receives an attention mask, so video prompts cannot be inserted at its "
                    "input; give video_embedding_module so they enter at the embedding output instead."
                )
            check_insert_position(stream, bs.spec.insert_position, hidden.shape[1])
            hidden = _insert(hidden, bs.spec.insert_position, prompts)
            self._slots[stream] = (hidden.shape[1], plan)
        else:
            stream_length = self._slots[stream][0]
            hidden = _replace(hidden, self._position(stream, hidden.shape[1], stream_length), prompts)
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _strip_hook(self, streams: tuple[str, ...], module: nn.Module, args: tuple, output: Any):
        present = [s for s in streams if s in self._slots]
        if not present:
            return None
        hidden = _hidden_of(output)
        total = hidden.shape[1]
        spans = []
        for stream in present:
            stream_length, plan = self._slots.pop(stream)
            spans.append((self._position(stream, total, stream_length), plan.num_tokens))
        for position, n in sorted(spans, reverse=True):  # later spans first, so earlier positions stay valid
            hidden = _remove(hidden, position, n)
        return _with_hidden(output, hidden)

    def _framewise_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        if self._video_shape is None:
            return None
        batch, frames = self._video_shape
        self._video_shape = None
        framewise = self.bound.spec.framewise
        # image_embeds: (batch*frames, dim), L2-normalised per frame by the model.
        frame_embeds = output["image_embeds"].view(batch, frames, -1)  # (batch, frames, dim)
        video_embeds = normalize(frame_embeds.mean(dim=1), dim=-1)  # (batch, dim)
        logits_per_text = framewise.logits(module, output["text_embeds"], video_embeds)  # (n_text, batch)
        output["image_embeds"] = video_embeds
        output["frame_embeds"] = frame_embeds
        output["logits_per_text"] = logits_per_text
        output["logits_per_image"] = logits_per_text.t()
        if self._return_loss:
            output["loss"] = framewise.loss(logits_per_text)
        return output
