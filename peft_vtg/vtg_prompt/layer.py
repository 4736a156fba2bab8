"""The adapter layer of VTG prompt tuning: the learned prompt tokens of every adapter, and how they are served to the
injection hooks."""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Optional

import torch
from accelerate import init_empty_weights
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..heads import VTGTaskHeads
from ..injection.hooks import PromptInjector, StreamPlan, check_insert_position
from ..injection.spec import BoundSpec, BoundStream
from ..injection.tower import check_video_tower, num_video_layers
from .config import (
    NEW_ADAPTER_SETTINGS,
    TextPromptInit,
    VideoPromptInit,
    VTGPromptConfig,
    check_head_width,
    default_head_hidden_size,
)


def _device_memory_bytes(device: Optional[torch.device]) -> Optional[int]:
    """The whole memory of `device` (an accelerator's, or the machine's RAM for the CPU) in bytes; None when unknown
    (the meta device, or a platform that does not say)."""
    try:
        if device is not None and device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device is None or device.type == "cpu":
            return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError):  # no sysconf (Windows), or no such device
        return None
    return None


def _adapter_sizes(config: VTGPromptConfig) -> str:
    """The settings that size an adapter's prompts and heads, for a message that it does not fit."""
    return (f"num_text_tokens={config.num_text_tokens}, num_video_tokens={config.num_video_tokens}, "
            f"text/video_prompt_depth={config.text_prompt_depth}/{config.video_prompt_depth}, head_hidden_size="
            f"{config.head_hidden_size}, head_num_layers={config.head_num_layers}, head_video_layers="
            f"{config.head_video_layers}, head_temporal_kernel_size={config.head_temporal_kernel_size}")


def _device_name(device: Optional[torch.device]) -> str:
    return "machine's RAM" if device is None or device.type == "cpu" else f"device {device}"


def _creating_empty_weights() -> bool:
    """Whether parameters registered now land on the meta device (inside accelerate's `init_empty_weights`, which
    `PeftModel.__init__` wraps around the tuner when `low_cpu_mem_usage=True`, or a `torch.device("meta")` context)."""
    probe = nn.Module()
    probe.register_parameter("probe", nn.Parameter(torch.empty(0)))
    return probe.probe.is_meta


def _check_depth(stream: str, bs: BoundStream, start: int, depth: int) -> None:
    num_layers = len(bs.layers)
    if start + depth > num_layers:
        raise ValueError(
            f"{stream} prompts need layers {start}..{start + depth - 1} (prompt_start_layer={start}, "
            f"{stream}_prompt_depth={depth}) but the {stream} encoder has {num_layers} layers; lower prompt_start_layer "
            f"or {stream}_prompt_depth."
        )


def _check_text_room(config: VTGPromptConfig, bs: BoundStream) -> None:
    """Where text prompts take token slots in input_ids, the encoder's positions must hold them, the insert position
    and a query of at least one word between BOS and EOS; else every forward would fail (or, for an insert position
    past the text, put the prompts after it)."""
    if bs.max_positions is None or bs.spec.slot_source != "input_ids":
        return
    room = bs.max_positions - config.num_text_tokens
    if room < 3:
        raise ValueError(
            f"num_text_tokens={config.num_text_tokens} leaves no room for the query: the text encoder has "
            f"max_position_embeddings={bs.max_positions}, and a query needs at least 3 (BOS, a word, EOS); use "
            f"num_text_tokens <= {bs.max_positions - 3}."
        )
    if bs.spec.insert_position > room - 1:
        raise ValueError(
            f"text_insert_position={bs.spec.insert_position} lies past any query that fits the text encoder "
            f"(max_position_embeddings={bs.max_positions}, num_text_tokens={config.num_text_tokens}); use a position "
            f"<= {room - 1}, e.g. 1 (after BOS)."
        )


def _check_video_position(config: VTGPromptConfig, bs: BoundStream) -> None:
    """An explicit `video_insert_position` past a frame's tokens would fail at the first forward (after the model was
    built, the run started, a checkpoint taken): count the tokens of one blank frame through the patch embedding now.
    Skipped where the spec records no frame size (a custom stream)."""
    size = bs.extra.get("image_size")
    if config.video_insert_position is None or size is None or bs.module is None:
        return
    weight = next(bs.module.parameters(), None)
    if weight is None or weight.is_meta:
        return
    check_insert_position("video", bs.spec.insert_position, int(_blank_frame_tokens(bs).shape[1]))


def _blank_frame_tokens(bs: BoundStream) -> torch.Tensor:
    """The video stream's tokens for one black frame of its image size, through its patch embedding: (1, tokens,
    hidden). Used to count a frame's tokens and to initialise prompts at their mean (PATCH_MEAN)."""
    weight = next(bs.module.parameters())
    size = bs.extra["image_size"]
    frame = torch.zeros(1, bs.extra.get("num_channels", 3), size, size, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        tokens = bs.module(frame)
    return tokens[0] if isinstance(tokens, (tuple, list)) else tokens


def resolve_new_adapter_settings(config: VTGPromptConfig, bound: BoundSpec) -> None:
    """Set the fields of `config` left at None to `NEW_ADAPTER_SETTINGS`, and `prompt_tuning_init` to BOS where the text
    stream allows it (else RANDOM), so the saved config records what was built (a loaded config has them already: see
    `VTGPromptConfig.from_pretrained`)."""
    for name, value in NEW_ADAPTER_SETTINGS.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    if config.prompt_tuning_init is None:
        available = bool(config.num_text_tokens) and bos_init_available(bound.text)
        config.prompt_tuning_init = TextPromptInit.BOS.value if available else TextPromptInit.RANDOM.value
    if config.head_hidden_size is None:
        # A model without a video stream has no head to size; the value is recorded all the same.
        config.head_hidden_size = default_head_hidden_size(bound.video.hidden_size if bound.video else 0)
        check_head_width(config.head_hidden_size, config.head_num_attention_heads)


def build_task_heads(config: VTGPromptConfig, bound: BoundSpec) -> Optional[VTGTaskHeads]:
    """The adapter's task heads, or None. Resolves `grounding_head=None` (auto) in `config` to True/False; call
    `resolve_new_adapter_settings` first."""
    has_features = bound.spec.features is not None
    if config.grounding_head is None:
        config.grounding_head = has_features
    if not config.grounding_head:
        return None
    if not has_features:
        raise ValueError(
            f"grounding_head=True needs per-frame video features, but the {bound.spec.name!r} spec of "
            f"{type(bound.root).__name__} declares none ({bound.spec.notes or 'no FeatureSpec'}). Set "
            "grounding_head=False, or use an architecture with a FeatureSpec (CLIP, SigLIP, X-CLIP)."
        )
    if config.head_video_layers > 1:
        check_video_tower(bound)  # the features of earlier layers are pooled the way the tower pools its output
        total = num_video_layers(bound)
        if config.head_video_layers > total:
            raise ValueError(
                f"head_video_layers={config.head_video_layers}, but the video encoder of {type(bound.root).__name__} "
                f"has {total} layers; use at most {total}."
            )
    return VTGTaskHeads(
        video_dim=bound.video_feature_size,
        text_dim=bound.text_feature_size,
        hidden_size=config.head_hidden_size,
        num_layers=config.head_num_layers,
        num_heads=config.head_num_attention_heads,
        dropout=config.head_dropout,
        predict_inside=config.predict_inside,
        temporal_kernel_size=config.head_temporal_kernel_size,
        hadamard_fusion=config.head_hadamard_fusion,
        video_layers=config.head_video_layers,
        predict_saliency=bool(config.predict_saliency),
        saliency_loss_weight=config.saliency_loss_weight,
        saliency_margin=config.saliency_margin,
        vtm_heads=config.vtm_heads,
        boundary_smoothing=config.boundary_smoothing,
        inside_loss_weight=config.inside_loss_weight,
        inside_negative_loss_weight=config.inside_negative_loss_weight,
        presence_contrast_loss_weight=config.presence_contrast_loss_weight,
        presence_contrast_negatives=config.presence_contrast_negatives,
        vtm_loss_weight=config.vtm_loss_weight,
    )


def _bos_token_id(bs: Optional[BoundStream]) -> Optional[int]:
    """The text encoder's BOS id, or None when it has none inside its vocabulary (configs carry library defaults)."""
    bos = getattr(getattr(bs.module, "config", None), "bos_token_id", None) if bs is not None else None
    table = bs.embedding_table if bs is not None else None
    if bos is None or table is None or not 0 <= bos < table.num_embeddings:
        return None
    return int(bos)


def _prompts_follow_bos(bs: BoundStream) -> bool:
    """Whether the stream inserts its text prompts into input_ids right after the first token (BOS)."""
    return bs.spec.slot_source == "input_ids" and bs.spec.insert_position == 1


def bos_init_available(bs: Optional[BoundStream]) -> bool:
    """Whether the BOS init can serve this text stream: prompts right after a BOS token the encoder knows."""
    return bs is not None and _bos_token_id(bs) is not None and _prompts_follow_bos(bs)


def bos_states(bs: BoundStream, layers: range) -> torch.Tensor:
    """The begin-of-text token's hidden state at the input of each of `layers` of the text stream, (len(layers),
    hidden), float32 on the CPU.

    A causal text encoder computes BOS's states without seeing any later token, so they are the same in every
    sentence: one forward of the lone BOS gives them. Run it with the injection hooks idle (no prompts served).
    """
    bos_token_id = _bos_token_id(bs)
    if bos_token_id is None or bs.module is None:
        raise ValueError(
            "prompt_tuning_init='BOS' needs the text model module and a bos_token_id inside its vocabulary; this "
            "model lacks one of them, use prompt_tuning_init='RANDOM'."
        )
    if not _prompts_follow_bos(bs):
        raise ValueError(
            "prompt_tuning_init='BOS' copies the token right before the text prompts, so the prompts must follow "
            f"BOS (text_insert_position=1, as CLIP and X-CLIP place them); this stream puts them at position "
            f"{bs.spec.insert_position}. Use prompt_tuning_init='RANDOM'."
        )
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for index in layers:
        def record(module, args, kwargs, index=index):
            hidden = args[0] if args else kwargs["hidden_states"]  # (1, 1, hidden)
            seen[index] = hidden[0, 0].detach().float().cpu()
        handles.append(bs.layers[index].register_forward_pre_hook(record, with_kwargs=True))
    reference = next(bs.module.parameters())
    was_training = bs.module.training
    bs.module.eval()  # dropout would make the copies noisy in an unseeded way
    try:
        with torch.no_grad():
            bs.module(input_ids=torch.tensor([[bos_token_id]], device=reference.device))
    finally:
        bs.module.train(was_training)
        for handle in handles:
            handle.remove()
    return torch.stack([seen[index] for index in layers])


def init_text_prompts(
    config: VTGPromptConfig,
    table: Optional[nn.Embedding],
    depth: int,
    hidden: int,
    bos: Optional[torch.Tensor] = None,
    replaced: bool = False,
) -> torch.Tensor:
    """Initial text prompts, shape (depth, num_text_tokens, hidden), following `config.prompt_tuning_init`.

    `replaced`: saved prompts are about to replace this init (a saved adapter is being loaded); the TEXT init then
    skips its tokenizer, as it does in inference mode.

    `bos` (depth, hidden): BOS's state at each prompted layer (see `bos_states`), for the BOS init.
    """
    n = config.num_text_tokens
    init = config.prompt_tuning_init
    if init == TextPromptInit.BOS:
        if bos is None or bos.shape != (depth, hidden):
            raise ValueError(f"The BOS init needs BOS's states, shape ({depth}, {hidden}); see bos_states.")
        spread = bos.std(dim=-1, keepdim=True).clamp_min(1e-6)  # (depth, 1)
        # Copies at BOS's own position would get identical gradients forever; a little noise lets them specialise.
        return bos[:, None, :].expand(depth, n, hidden) + 0.02 * spread[:, None, :] * torch.randn(depth, n, hidden)
    if init == TextPromptInit.UNIFORM:
        return torch.empty(depth, n, hidden).uniform_(-config.random_range, config.random_range)
    if table is None:
        if init == TextPromptInit.RANDOM:
            return torch.randn(depth, n, hidden) * 0.02
        raise ValueError(
            f"prompt_tuning_init={init!r} reads the word-embedding table, but none was found in the text stream; use "
            "RANDOM or UNIFORM, or point text_embedding_module at a module that contains the nn.Embedding."
        )
    weight = table.weight.detach().float().cpu()  # (vocab, hidden)
    if weight.shape[1] != hidden:
        raise ValueError(f"Word embeddings have width {weight.shape[1]} but the text encoder's hidden size is {hidden}.")
    if init == TextPromptInit.RANDOM:
        # PEFT draws N(0, 1); scaling to the vocabulary's spread keeps the prompts on the embeddings' scale.
        return torch.randn(depth, n, hidden) * weight.std()
    if init == TextPromptInit.SAMPLE_VOCAB:
        ids = torch.randint(0, weight.shape[0], (depth, n))
        return weight[ids].clone()
    if init == TextPromptInit.VOCAB_FIRST:
        if n > weight.shape[0]:
            raise ValueError(f"VOCAB_FIRST needs num_text_tokens ({n}) <= vocabulary size ({weight.shape[0]}).")
        return weight[:n].unsqueeze(0).repeat(depth, 1, 1).clone()
    # TEXT
    if config.inference_mode or replaced:
        # An adapter being loaded (PEFT's rule: one in inference mode is) gets its saved prompts in place of any init,
        # so the init text's tokenizer (perhaps moved since, or a Hub id on a machine now offline) is not needed.
        return torch.randn(depth, n, hidden) * weight.std()
    from transformers import AutoTokenizer

    name = config.tokenizer_name_or_path
    if name.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name)):
        # A path that is not there; transformers would call it an invalid Hub repo id.
        raise FileNotFoundError(f"tokenizer_name_or_path={name!r}: no such directory; give the base model's "
                                "tokenizer (a local directory or a Hub id).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **(config.tokenizer_kwargs or {}))
    except (OSError, ValueError) as err:
        # The same kind of error as PEFT's prompt tuning raises here (OSError for a tokenizer it cannot find), with a
        # message that names the setting.
        message = (f"tokenizer_name_or_path={name!r} could not be loaded for prompt_tuning_init='TEXT' "
                   f"({str(err).splitlines()[0][:200]}); give the base model's tokenizer (a local directory, or a Hub "
                   "id available offline).")
        raise (OSError if isinstance(err, OSError) else ValueError)(message) from None
    ids = tokenizer(config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_tuning_init_text={config.prompt_tuning_init_text!r} tokenizes to no tokens.")
    ids = (ids * math.ceil(n / len(ids)))[:n]  # repeat, then cut to n tokens, as PEFT does
    if max(ids) >= weight.shape[0]:
        raise ValueError(
            f"The tokenizer at {config.tokenizer_name_or_path!r} produced id {max(ids)} but the model's vocabulary has "
            f"{weight.shape[0]} entries; use the base model's own tokenizer."
        )
    return weight[torch.tensor(ids)].unsqueeze(0).repeat(depth, 1, 1).clone()


def init_video_prompts(config: VTGPromptConfig, bs: BoundStream, depth: int) -> torch.Tensor:
    """Initial video prompts, shape (depth, num_video_tokens, hidden), following `config.video_prompt_init`."""
    n, hidden = config.num_video_tokens, bs.hidden_size
    if config.video_prompt_init == VideoPromptInit.VPT_UNIFORM:
        patch = bs.extra.get("patch_size")
        channels = bs.extra.get("num_channels", 3)
        fan_in = channels * patch * patch if patch else hidden
        bound = math.sqrt(6.0 / float(fan_in + hidden))
        return torch.empty(depth, n, hidden).uniform_(-bound, bound)
    # PATCH_MEAN
    size = bs.extra.get("image_size")
    if bs.module is None or size is None:
        raise ValueError(
            "video_prompt_init='PATCH_MEAN' needs an architecture spec with the patch embedding module and image size; "
            "this model has none, use video_prompt_init='VPT_UNIFORM'."
        )
    tokens = _blank_frame_tokens(bs)[0, bs.spec.insert_position :].float().cpu()  # (patches, hidden), CLS excluded
    mean, spread = tokens.mean(dim=0), tokens.std(dim=0).mean().clamp_min(1e-6)
    # Identical tokens would get identical gradients; a little noise lets them specialise.
    return mean.expand(depth, n, hidden) + 0.02 * spread * torch.randn(depth, n, hidden)


class VTGPromptEncoder(nn.Module):
    """The learned tokens of one adapter.

    Parameters: `text_prompts` (text_depth, num_text_tokens, text_hidden); `video_prompts` (video_depth,
    num_video_tokens, video_hidden), or, when coupled, `coupling`: one Linear(text_hidden -> video_hidden) per video
    layer that maps that layer's text prompts to its video prompts.
    """

    def __init__(
        self, config: VTGPromptConfig, bound: BoundSpec, bos: Optional[torch.Tensor] = None, empty: bool = False,
        replaced: bool = False,
    ) -> None:
        """`empty`: create the prompts on the meta device without computing their init (they are about to be replaced
        by loaded weights: `low_cpu_mem_usage=True`). `replaced`: loaded weights will replace them, but they are
        created as usual (see `init_text_prompts`)."""
        super().__init__()
        self.plans: dict[str, StreamPlan] = {}
        start = config.prompt_start_layer
        if config.num_text_tokens:
            _check_depth("text", bound.text, start, config.text_prompt_depth)
            _check_text_room(config, bound.text)
            if empty:
                initial = torch.empty(config.text_prompt_depth, config.num_text_tokens, bound.text.hidden_size,
                                      device="meta")
            else:
                initial = init_text_prompts(
                    config, bound.text.embedding_table, config.text_prompt_depth, bound.text.hidden_size, bos=bos,
                    replaced=replaced,
                )
            self.text_prompts = nn.Parameter(initial)
            self.plans["text"] = StreamPlan(
                config.num_text_tokens, start, config.text_prompt_depth, keep_positions=bool(config.keep_text_positions)
            )
        if config.num_video_tokens:
            _check_depth("video", bound.video, start, config.video_prompt_depth)
            if not empty:
                _check_video_position(config, bound.video)
            if config.couple_video_to_text:
                self.coupling = nn.ModuleList(
                    nn.Linear(bound.text.hidden_size, bound.video.hidden_size) for _ in range(config.video_prompt_depth)
                )
            elif empty:
                self.video_prompts = nn.Parameter(torch.empty(
                    config.video_prompt_depth, config.num_video_tokens, bound.video.hidden_size, device="meta"
                ))
            else:
                self.video_prompts = nn.Parameter(init_video_prompts(config, bound.video, config.video_prompt_depth))
            self.plans["video"] = StreamPlan(config.num_video_tokens, start, config.video_prompt_depth)
        self.video_dropout = nn.Dropout(config.video_prompt_dropout)

    def tokens(self, stream: str, depth_index: int) -> torch.Tensor:
        """Prompt tokens of `stream` for its `depth_index`-th prompted layer, shape (num_tokens, hidden)."""
        if stream == "text":
            return self.text_prompts[depth_index]
        if hasattr(self, "coupling"):
            video = self.coupling[depth_index](self.text_prompts[depth_index])
        else:
            video = self.video_prompts[depth_index]
        return self.video_dropout(video)


# Container names of older releases -> today's, for the state-dict keys of saved adapters.
LEGACY_CONTAINER_NAMES = {"vtg_prompt_encoder": "vtg_prompt_tokens"}


class VTGPromptLayer(nn.Module, BaseTunerLayer):
    """Holds every adapter's prompt encoder and task heads, and serves the prompt tokens to the injection hooks.

    It is attached to the base model (as `vtg_prompts`), so PEFT's generic machinery (freezing, `set_adapter`,
    `delete_adapter`, enabling/disabling, state-dict selection, `get_model_status`) finds it like any tuner layer.
    """

    # Both containers' names start with the method prefix "vtg_prompt_", which is how PEFT's freezing and state-dict
    # selection recognise adapter parameters. Neither may contain "prompt_encoder": PeftModel.from_pretrained leaves
    # keys containing it out of its missing-keys warning (they belong to PEFT's own prompt learning), which would hide
    # prompts that failed to load. Adapters saved with the old name "vtg_prompt_encoder" are renamed on load
    # (LEGACY_CONTAINER_NAMES).
    adapter_layer_names = ("vtg_prompt_tokens", "vtg_prompt_heads")

    def __init__(self, bound: BoundSpec) -> None:
        nn.Module.__init__(self)
        self.vtg_prompt_tokens = nn.ModuleDict()
        self.vtg_prompt_heads = nn.ModuleDict()
        self._active_adapter = []
        self.merged_adapters = []
        # Set by VTGPromptModel._enable_peft_forward_hooks for one forward: one adapter name per sample.
        self.batch_adapter_names: Optional[list[str]] = None
        # True while the layer runs the base encoder for itself (the BOS init): no adapter's prompts are served.
        self._serving_none = False
        self.bound = bound
        self.injector = PromptInjector(bound, self)
        self.injector.install()

    def update_layer(self, adapter_name: str, config: VTGPromptConfig, low_cpu_mem_usage: bool = False,
                     loading: bool = False) -> None:
        """Create adapter `adapter_name`'s prompts and heads, on the base model's device and in its floating dtype (as
        LoRA creates its weights; PEFT's `_cast_adapter_dtype` upcasts them afterwards unless
        `autocast_adapter_dtype=False`).

        With `low_cpu_mem_usage=True`, or inside accelerate's `init_empty_weights` (which `PeftModel.__init__` uses for
        that flag), the parameters are created on the meta device and no init is computed: the loaded state dict
        replaces them (`load_state_dict(assign=True)`), then `_move_adapter_to_device_of_base_layer` moves them.
        `loading`: a saved adapter is being loaded (its config records the base it was made for), so no init needs
        anything beyond the model itself (see `init_text_prompts`).
        """
        resolve_new_adapter_settings(config, self.bound)
        self._check_adapter_fits(adapter_name, config)
        empty = low_cpu_mem_usage or _creating_empty_weights()
        bos = None
        if not empty and config.num_text_tokens and config.prompt_tuning_init == TextPromptInit.BOS:
            _check_depth("text", self.bound.text, config.prompt_start_layer, config.text_prompt_depth)
            start = config.prompt_start_layer
            self._serving_none = True
            try:
                bos = bos_states(self.bound.text, range(start, start + config.text_prompt_depth))
            finally:
                self._serving_none = False
        try:
            with init_empty_weights() if empty else nullcontext():
                encoder = VTGPromptEncoder(config, self.bound, bos=bos, empty=empty, replaced=loading)
                heads = build_task_heads(config, self.bound)
        except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
            if not (isinstance(err, MemoryError) or "allocate" in str(err) or "out of memory" in str(err)):
                raise
            raise ValueError(f"Adapter {adapter_name!r} does not fit in memory ({str(err).splitlines()[0][:200]}); its "
                             f"sizes are too large: {_adapter_sizes(config)}.") from None
        device, dtype = self._base_device_and_dtype()
        for module in (encoder, heads):
            if module is None:
                continue
            if any(p.is_meta for p in module.parameters()):
                module.to(dtype=dtype)  # a meta tensor cannot be copied to a device; its dtype can change
            else:
                module.to(device=device, dtype=dtype)
        self.vtg_prompt_tokens[adapter_name] = encoder
        if heads is not None:
            self.vtg_prompt_heads[adapter_name] = heads
        self.set_adapter(self.active_adapters or [adapter_name], inference_mode=config.inference_mode)

    def _check_adapter_fits(self, adapter_name: str, config: VTGPromptConfig) -> None:
        """Refuse, before anything is allocated, an adapter whose sizes cannot fit on the base model's device (a typo
        such as head_num_layers=1000000 would otherwise fill memory, or take the machine down, before any error).

        The estimate is a lower bound: the prompt parameters exactly, about 17 x width^2 weights per fusion layer
        (measured: 16.1-16.6 for widths 32-128), and about 64 KiB of Python objects per layer (measured: 94 KiB per
        layer at width 8, weights included); it is compared with the device's whole memory, so only sizes that can
        never fit are refused (the out-of-memory error during construction names the rest)."""
        device, dtype = self._base_device_and_dtype()
        element = torch.finfo(dtype).bits // 8 if dtype is not None else 4
        text, video = self.bound.text.hidden_size, self.bound.video.hidden_size
        weights = (config.num_text_tokens or 0) * config.text_prompt_depth * text
        if config.num_video_tokens:
            weights += config.video_prompt_depth * (
                text * video if config.couple_video_to_text else config.num_video_tokens * video
            )
        overhead = 0
        if config.grounding_head is not False and config.head_hidden_size:
            width = config.head_hidden_size
            weights += config.head_num_layers * 17 * width * width + (config.head_video_layers * video + text) * width
            overhead = config.head_num_layers * 64 * 1024
        needed = weights * element + overhead
        available = _device_memory_bytes(device)
        if available is not None and needed > available:
            raise ValueError(
                f"Adapter {adapter_name!r} does not fit in memory: its prompts and heads need at least "
                f"{needed / 2**30:.1f} GiB, and the {_device_name(device)} has {available / 2**30:.1f} GiB. Its sizes "
                f"are too large: {_adapter_sizes(config)} (the defaults: a few tokens, head_num_layers=2)."
            )

    def _base_device_and_dtype(self) -> tuple[Optional[torch.device], Optional[torch.dtype]]:
        """Device and floating dtype of the base model (its first floating parameter that is not an adapter's)."""
        own = {id(p) for p in self.parameters()}
        for parameter in self.bound.root.parameters():
            if id(parameter) not in own and not parameter.is_meta and parameter.is_floating_point():
                return parameter.device, parameter.dtype
        return None, None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        """Move one adapter to the base model's device; called by PEFT after a `low_cpu_mem_usage` load.

        Only the device: the dtype the weights were loaded in is kept, and `VTGPromptModel._cast_adapter_dtype`, which
        PEFT calls next, applies `autocast_adapter_dtype`. (PEFT's version would round fp32 weights to a bf16 base's
        dtype before upcasting them, so such a load would differ from a normal one.)
        """
        base_device, _ = self._base_device_and_dtype()
        target = device if device is not None else base_device
        if target is None:
            return
        for container in self.adapter_layer_names:
            modules = getattr(self, container)
            if adapter_name in modules and not any(p.is_meta for p in modules[adapter_name].parameters()):
                modules[adapter_name].to(device=target)

    def cast_adapter_to_base_dtype(self, adapter_name: str) -> None:
        """Cast one adapter's floating parameters to the base model's floating dtype."""
        _, dtype = self._base_device_and_dtype()
        if dtype is None:
            return
        for container in self.adapter_layer_names:
            modules = getattr(self, container)
            if adapter_name in modules:
                modules[adapter_name].to(dtype=dtype)

    # ------------------------------------------------------------------ PromptSource
    def _call_adapters(self) -> list[str]:
        if self.disable_adapters or self._serving_none:
            return []
        if self.batch_adapter_names is not None:
            return self.batch_adapter_names
        active = [name for name in self.active_adapters if name in self.vtg_prompt_tokens]
        if len(active) > 1:
            raise ValueError(
                f"Several adapters are active at once ({active}); prompt adapters cannot be summed. Activate one with "
                "set_adapter, or pass adapter_names=[...] (one per sample) to forward."
            )
        return active

    def stream_plan(self, stream: str) -> Optional[StreamPlan]:
        names = self._call_adapters()
        if not names:
            return None
        plans = {name: self.vtg_prompt_tokens[name].plans.get(stream) for name in dict.fromkeys(names)}
        distinct = set(plans.values())
        if len(distinct) > 1:
            raise ValueError(
                f"The adapters used in one batch must lay out their {stream} prompts identically (token count, start "
                f"layer, depth), got {plans}. Split the batch by adapter."
            )
        return distinct.pop()

    def prompt_tokens(self, stream: str, depth_index: int, rows: int, like: torch.Tensor) -> torch.Tensor:
        names = self._call_adapters()
        if self.batch_adapter_names is None:
            tokens = self.vtg_prompt_tokens[names[0]].tokens(stream, depth_index)  # (P, D)
            return tokens.to(like.dtype).unsqueeze(0).expand(rows, -1, -1)
        batch = len(names)
        if rows % batch:
            raise ValueError(f"adapter_names has {batch} entries but the {stream} stream has {rows} rows.")
        unique = {name: self.vtg_prompt_tokens[name].tokens(stream, depth_index) for name in dict.fromkeys(names)}
        per_sample = torch.stack([unique[name] for name in names])  # (batch, P, D)
        # Per-frame encoders see rows = batch*frames, ordered sample-major.
        return per_sample.to(like.dtype).repeat_interleave(rows // batch, dim=0)

    # ------------------------------------------------------------------ BaseTunerLayer
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise NotImplementedError("Prompt tokens add sequence positions; they cannot be merged into base weights.")

    def unmerge(self) -> None:
        raise NotImplementedError("Prompt tokens are never merged.")

    def remove_hooks(self) -> None:
        self.injector.remove()
