"""Configuration of VTG prompt tuning (`VTGPromptConfig`), the PEFT method of peft_vtg."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import numbers
import os
import typing
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig
from peft.utils import CONFIG_NAME
from peft.utils.peft_types import PeftType

from ..files import write_text_atomic
from ..timeline import is_finite_number


class TextPromptInit(str, enum.Enum):
    """How text prompt tokens are initialised.

    `RANDOM`, `SAMPLE_VOCAB` and `TEXT` are PEFT's `PromptTuningInit` values; `VOCAB_FIRST` and `UNIFORM` are the two
    inits of the classic `SoftEmbedding` recipe. `BOS` starts every prompt as a copy of the begin-of-text token's
    state at its layer: the prompts then change little of what the frozen encoder reads in the sentence, where the
    other inits read as extra words.
    """

    BOS = "BOS"
    RANDOM = "RANDOM"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    TEXT = "TEXT"
    VOCAB_FIRST = "VOCAB_FIRST"
    UNIFORM = "UNIFORM"


class VideoPromptInit(str, enum.Enum):
    """How video prompt tokens are initialised.

    `VPT_UNIFORM`: uniform in (-v, v) with v = sqrt(6 / (fan_in + hidden)) and fan_in = channels * patch_size**2, as in
    Visual Prompt Tuning (Jia et al., 2022). `PATCH_MEAN`: the mean patch token that the frozen encoder produces for a
    mean (all-zero, i.e. normalised grey) frame, plus small noise so the tokens differ.
    """

    VPT_UNIFORM = "VPT_UNIFORM"
    PATCH_MEAN = "PATCH_MEAN"


# The matching heads of `peft_vtg.heads` (kept here so the config layer does not import the heads layer).
VTM_HEAD_NAMES = ("violet", "all_in_one")

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_WEIGHTS_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


def check_adapter_directory(directory: str) -> None:
    """Fail clearly, before anything is loaded, on an adapter directory PEFT would choke on or unpickle.

    Checks that the weights are safetensors (a pickled `adapter_model.bin` is refused: unpickling untrusted files can
    run code) and that the safetensors header is complete and covers the whole file (truncated downloads).
    """
    if not os.path.isdir(directory):
        return  # a Hub repo id: PEFT downloads and reads the file itself
    weights = os.path.join(directory, ADAPTER_WEIGHTS_NAME)
    if not os.path.exists(weights):
        pickled = [n for n in PICKLED_WEIGHTS_NAMES if os.path.exists(os.path.join(directory, n))]
        if pickled:
            raise ValueError(
                f"{directory} holds {pickled[0]}, a pickled adapter; peft_vtg loads safetensors only, because "
                "unpickling an untrusted file can run arbitrary code. Re-save the adapter with save_pretrained "
                f"(safe_serialization=True) to get {ADAPTER_WEIGHTS_NAME}."
            )
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{weights} is corrupt or truncated and cannot be read ({err}). Save the adapter again, or download it "
            "again if it came from the Hub."
        ) from err


MAX_FIELD_INT = 2**32
FLOAT32_MAX = 3.4028234663852886e38


def check_field_types(obj: object, names: typing.Iterable[str]) -> None:
    """Raise `ValueError` naming the field unless each of `names` holds a value of its annotated type: a bool field
    True or False, an int field a whole number (not a bool, not 2.0), a float field a finite number, a str (or
    str-valued enum) field a string, a list field a list of strings (one string is accepted as a list of one), a dict
    field a mapping; `Optional` fields also None. A wrong type would otherwise fail deep inside (or be used as is)."""
    hints = typing.get_type_hints(type(obj))
    for name in names:
        value, hint = getattr(obj, name), hints[name]
        args = typing.get_args(hint)
        optional = type(None) in args
        if value is None:
            if optional:
                continue
            raise ValueError(f"{name} must not be None; leave it out to get its default.")
        kinds = [a for a in args if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
        origins = {typing.get_origin(k) or k for k in kinds}
        if bool in origins:
            ok, want = isinstance(value, bool), "True or False"
        elif int in origins:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            # Beyond 2**32 no count or size is meaningful, and torch's C++ side overflows on 2**63 (a traceback).
            ok, want = ok and abs(int(value)) < MAX_FIELD_INT, "a whole number below 2**32"
        elif float in origins:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            # A rate past float32's range cannot be held by the optimizer's tensors (a RuntimeError, not a message).
            ok = ok and is_finite_number(value) and abs(float(value)) <= FLOAT32_MAX
            want = "a finite number within float32's range (|x| <= 3.4e38)"
        elif list in origins:
            ok = isinstance(value, str) or (isinstance(value, (list, tuple))
                                            and all(isinstance(v, str) for v in value))
            want = "a list of names (strings)"
        elif dict in origins:
            ok, want = isinstance(value, dict), "a JSON object (mapping)"
        elif str in origins or any(isinstance(k, type) and issubclass(k, enum.Enum) for k in origins):
            ok, want = isinstance(value, (str, enum.Enum)), "a string"
        else:
            continue
        if not ok:
            raise ValueError(f"{name} must be {want}{' or None' if optional else ''}, got {type(value).__name__} "
                             f"{value!r}.")
        # numpy scalars pass the checks above, but JSON cannot hold them: saving the config would fail
        if int in origins and bool not in origins and type(value) is not int:
            setattr(obj, name, int(value))
        elif float in origins and bool not in origins and type(value) not in (int, float):  # np.float64 included
            setattr(obj, name, float(value))


def _enum_value(enum_cls: type[enum.Enum], value: Union[str, enum.Enum], field_name: str) -> str:
    allowed = [member.value for member in enum_cls]
    raw = value.value if isinstance(value, enum.Enum) else value
    if raw not in allowed:
        raise ValueError(f"{field_name}={value!r} is not valid; choose one of {allowed}.")
    return raw


# Settings whose None means "not decided yet": creating an adapter resolves them (to these values; `grounding_head` and
# `prompt_tuning_init` by what the architecture offers) and records the resolved value, so a saved adapter has no None
# for them ...
NEW_ADAPTER_SETTINGS = {"keep_text_positions": True, "head_temporal_kernel_size": 3, "head_hadamard_fusion": True,
                        "predict_saliency": False}
# ... and a saved adapter that has None (or lacks the field) was saved before the setting existed: it loads with these,
# what it was trained with, and no module it lacks weights for.
LEGACY_ADAPTER_SETTINGS = {
    "head_hidden_size": 256,
    "keep_text_positions": False,
    "grounding_head": False,
    "head_temporal_kernel_size": 0,
    "head_hadamard_fusion": False,
    "predict_saliency": False,
}


def default_head_hidden_size(video_hidden_size: int) -> int:
    """The grounding head's width for a video encoder `video_hidden_size` wide (what `head_hidden_size=None` resolves
    to): a sixth of it, rounded down to a multiple of 32, within 64..256.

    The fusion layers cost about 32 x width^2 parameters, so a fixed width of 256 (2.8 M with its projections) was
    1.9 % of CLIP ViT-B/32; at 128 (ViT-B's 768 / 6) the head is about 0.5 %. The encoder's width, not the width of
    the features the head reads, sets it: those are the pooled state for CLIP (768) but the projection for X-CLIP
    (512), on towers of the same size. 64 is the floor: the SynthVTG benchmark's head, on a 64-wide encoder."""
    return max(64, min(256, video_hidden_size // 6 // 32 * 32))


def check_head_width(hidden_size: int, num_heads: int) -> None:
    """Raise a `ValueError` naming both fields when `num_heads` does not divide `hidden_size`."""
    if hidden_size % num_heads:
        raise ValueError(
            f"head_num_attention_heads ({num_heads}) must divide head_hidden_size ({hidden_size}); set "
            "head_hidden_size to a multiple of it (e.g. 128 or 256 with 4 or 8 heads)."
        )


# `num_text_tokens` is our name, `num_virtual_tokens` PEFT's, for one setting (kept equal: see `__setattr__`).
TEXT_TOKEN_ALIASES = {"num_text_tokens": "num_virtual_tokens", "num_virtual_tokens": "num_text_tokens"}


@dataclass
class VTGPromptConfig(PeftConfig):
    """Configuration of [`VTGPromptModel`]: soft prompt tokens for the video and the text stream of a frozen
    video-language encoder.

    Text prompts follow prompt tuning (Lester et al., 2021), video prompts follow Visual Prompt Tuning (Jia et al.,
    2022); both can be shallow (input of the first prompted layer only) or deep (fresh tokens at each of the first K
    prompted layers), and the video prompts can be derived from the text prompts through a learned linear map (MaPLe,
    Khattak et al., 2023).

    The field names `num_virtual_tokens`, `prompt_tuning_init`, `prompt_tuning_init_text`, `tokenizer_name_or_path` and
    `tokenizer_kwargs` mean what they mean in PEFT's `PromptTuningConfig`; `num_text_tokens` is an alias of
    `num_virtual_tokens` (set either; both are saved). Two defaults differ from PEFT's, because PEFT's cost accuracy on
    a frozen CLIP-style text tower (BENCHMARKS.md): `prompt_tuning_init` starts the prompts as copies of BOS where the
    tower allows it, and `keep_text_positions` leaves each word at its own position.

    Example:
        ```py
        >>> import peft_vtg
        >>> config = peft_vtg.VTGPromptConfig(num_video_tokens=8, num_text_tokens=16, video_prompt_depth=3)
        ```
    """

    # ----- text stream -----
    num_text_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "Number of soft prompt tokens in the text stream (alias of `num_virtual_tokens`). 0 disables "
                  "text prompts. Default 8 when neither is set."},
    )
    num_virtual_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "PEFT's name for the number of text prompt tokens; kept equal to `num_text_tokens`."},
    )
    prompt_tuning_init: Optional[Union[TextPromptInit, str]] = field(
        default=None,
        metadata={"help": "Init of the text prompts: BOS (copies of the begin-of-text token's state at each prompted "
                  "layer, plus 2% noise; needs the prompts right after BOS, as CLIP and X-CLIP place them), "
                  "RANDOM (normal, scaled to the vocabulary's std), SAMPLE_VOCAB "
                  "(random vocabulary rows), TEXT (embeddings of `prompt_tuning_init_text`), VOCAB_FIRST (the first "
                  "n vocabulary rows), UNIFORM (uniform in (-random_range, random_range)). None (default) = BOS "
                  "where the text stream allows it, else RANDOM; the resolved value is saved."},
    )
    prompt_tuning_init_text: Optional[str] = field(
        default=None, metadata={"help": "Text whose token embeddings initialise the text prompts (init TEXT only)."}
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer used to tokenize `prompt_tuning_init_text` (init TEXT only)."}
    )
    tokenizer_kwargs: Optional[dict] = field(
        default=None, metadata={"help": "Keyword arguments for `AutoTokenizer.from_pretrained` (init TEXT only)."}
    )
    random_range: float = field(
        default=0.5, metadata={"help": "Half-width of the uniform text-prompt init (init UNIFORM only)."}
    )
    text_prompt_depth: int = field(
        default=1,
        metadata={"help": "Number of text encoder layers, from `prompt_start_layer` on, that get fresh text prompts. "
                  "1 = shallow."},
    )
    keep_text_positions: Optional[bool] = field(
        default=None,
        metadata={"help": "Words keep the position ids they have without prompts; the prompt slots share the position "
                  "of the token before them. False = the prompts take positions and every later word moves "
                  "num_text_tokens positions on, to position embeddings a short-caption encoder may never have "
                  "trained. Matters only where text prompts enter through input_ids (CLIP, SigLIP, X-CLIP); prompts "
                  "inserted at an embedding output never move positions. None (default) = True for a new adapter; "
                  "the resolved value is saved."},
    )
    # ----- video stream -----
    num_video_tokens: int = field(
        default=8, metadata={"help": "Number of soft prompt tokens in the video stream. 0 disables video prompts."}
    )
    video_prompt_init: Union[VideoPromptInit, str] = field(
        default=VideoPromptInit.VPT_UNIFORM,
        metadata={"help": "Init of the video prompts: VPT_UNIFORM (uniform by fan-in, as VPT) or PATCH_MEAN (mean "
                  "patch token of the frozen encoder for a grey frame)."},
    )
    video_prompt_dropout: float = field(
        default=0.0, metadata={"help": "Dropout probability applied to the video prompt tokens during training."}
    )
    video_prompt_depth: int = field(
        default=1,
        metadata={"help": "Number of video encoder layers, from `prompt_start_layer` on, that get fresh video "
                  "prompts. 1 = shallow."},
    )
    # ----- both streams -----
    prompt_start_layer: int = field(
        default=0,
        metadata={"help": "Index of the first encoder layer whose input carries learned prompts. Layers below it run "
                  "without trainable input, so no gradient flows through them."},
    )
    couple_video_to_text: bool = field(
        default=False,
        metadata={"help": "Derive the video prompts from the text prompts through a learned linear map per layer "
                  "(MaPLe-style coupling). Needs num_video_tokens == num_text_tokens and video_prompt_depth <= "
                  "text_prompt_depth."},
    )
    # ----- task heads (saved in the same adapter) -----
    grounding_head: Optional[bool] = field(
        default=None,
        metadata={"help": "Add the trainable grounding head (cross-modal fusion + per-frame start/end logits) on the "
                  "encoder's per-frame video and per-token text features. None (default) adds it when the "
                  "architecture spec can read per-frame features (every built-in but TVP); the resolved value is "
                  "saved."},
    )
    head_hidden_size: Optional[int] = field(
        default=None,
        metadata={"help": "Width of the grounding head's fusion layers. None (default) scales it with the video "
                  "encoder: a sixth of its hidden size, rounded down to a multiple of 32, within 64..256 (ViT-B: "
                  "128, so the head is about 0.5 % of CLIP ViT-B/32; ViT-L: 160). The fusion layers cost about 32 x "
                  "width^2 parameters. The resolved value is saved; adapters saved before the default scaled were "
                  "made at 256."},
    )
    head_num_layers: int = field(
        default=2, metadata={"help": "Number of fusion layers (self-attention over frames + cross-attention to text)."}
    )
    head_num_attention_heads: int = field(
        default=4, metadata={"help": "Attention heads per fusion layer; must divide head_hidden_size."}
    )
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout inside the fusion layers."})
    head_temporal_kernel_size: Optional[int] = field(
        default=None,
        metadata={"help": "Width, in frames, of a depthwise temporal convolution on the projected frame features "
                  "before fusion (odd); it exposes frame-to-frame change (motion) to the fusion layers. 0 = none. "
                  "None (default) = 3 for a new adapter; the resolved value is saved."},
    )
    head_hadamard_fusion: Optional[bool] = field(
        default=None,
        metadata={"help": "Multiply each frame's features elementwise with an attention-pooled sentence vector before "
                  "fusion (2D-TAN-style Hadamard fusion), so frame-query agreement is one linear read-out. None "
                  "(default) = True for a new adapter; the resolved value is saved."},
    )
    head_video_layers: int = field(
        default=1,
        metadata={"help": "How many of the video encoder's last layers the grounding head reads: their per-frame "
                  "features are layer-normed and averaged with weights each query chooses (a learned bias plus a "
                  "read of the query; R2-Tuning reads several of frozen CLIP's last layers). 1 = the final features "
                  "only. Above 1, the model computes the features itself (frames, or a cache of layer L-m+1 or "
                  "below, or of final features built with --feature-layers m); pre-extracted features hold one "
                  "layer."},
    )
    predict_inside: bool = field(
        default=True,
        metadata={"help": "Also predict a per-frame 'inside the moment' logit, trained with BCE (weight "
                  "inside_loss_weight)."},
    )
    predict_saliency: Optional[bool] = field(
        default=None,
        metadata={"help": "Also predict a per-frame saliency (highlight) score, trained with a margin ranking loss on "
                  "the training data's highlight labels (QVHighlights' saliency_scores): in-moment frames above the "
                  "others, more salient frames above less salient ones. None (default): `peft-vtg train` turns it on "
                  "when the training annotations have highlight labels; an adapter created in Python without it "
                  "records False. The resolved value is saved."},
    )
    saliency_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the saliency ranking loss in the total loss (predict_saliency)."}
    )
    saliency_margin: float = field(
        default=0.2, metadata={"help": "Logit gap the saliency ranking loss asks of a more salient frame over a less "
                               "salient one (Moment-DETR's 0.2)."}
    )
    boundary_smoothing: float = field(
        default=0.0,
        metadata={"help": "Label smoothing of the start/end targets over neighbouring frames: std, in frames, of a "
                  "Gaussian around the true boundary. 0 = one-hot cross-entropy."},
    )
    inside_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the inside-moment BCE loss."})
    inside_negative_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the 'not here' loss: each query is also paired with another row's video, which "
                  "does not hold its moment, and the inside head is trained towards 0 on every frame of it. It makes "
                  "inside probabilities absolute, which is what long videos' windows are ranked by. 0 = off; needs "
                  "predict_inside."},
    )
    presence_contrast_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the presence contrast: each query's clip that holds its moment must out-score, "
                  "by its presence (mean inside probability over the clip), the same query on "
                  "presence_contrast_negatives other rows' clips (other videos) of the batch; softmax cross-entropy "
                  "over the clips. It trains the ranking `ground` makes across a long video's windows. 0 = off; "
                  "needs predict_inside."},
    )
    presence_contrast_negatives: int = field(
        default=7,
        metadata={"help": "Other rows' clips each query is contrasted with (presence_contrast_loss_weight > 0); each "
                  "costs one more pass of the grounding head per row."},
    )
    vtm_heads: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Video-text matching heads trained as auxiliary losses on the fused [CLS]: any of "
                  "'violet' (MLP, text-swap negatives, BCE) and 'all_in_one' (Linear(d, 2), video swapped with p=0.5, "
                  "NLL). Needs the grounding head."},
    )
    vtm_loss_weight: float = field(default=0.5, metadata={"help": "Weight of each matching loss in the total loss."})
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Names (or name suffixes, as in PEFT) of base-model modules to train fully and save in the "
                  "adapter, e.g. ['visual_projection']; PEFT wraps each in a ModulesToSaveWrapper. A module that holds "
                  "a module the prompt hooks attach to (a text or vision tower, its encoder layers) is refused."},
    )
    # ----- where to inject (auto-detected for supported architectures) -----
    video_embedding_module: Optional[str] = field(
        default=None,
        metadata={"help": "Dotted path of the module whose output is the video token sequence, shape (rows, tokens, "
                  "hidden) with rows = batch or batch*frames. Set for models without a built-in spec."},
    )
    text_embedding_module: Optional[str] = field(
        default=None,
        metadata={"help": "Dotted path of the module whose output is the text token sequence (batch, tokens, "
                  "hidden). Set for models without a built-in spec."},
    )
    video_layers_module: Optional[str] = field(
        default=None, metadata={"help": "Dotted path of the ModuleList of video (or joint) encoder layers."}
    )
    text_layers_module: Optional[str] = field(
        default=None, metadata={"help": "Dotted path of the ModuleList of text (or joint) encoder layers."}
    )
    video_insert_position: Optional[int] = field(
        default=None,
        metadata={"help": "Index in the video token sequence where prompts are inserted (1 = after a CLS token). "
                  "Default: the architecture's, 0 for models given by explicit paths."},
    )
    text_insert_position: Optional[int] = field(
        default=None,
        metadata={"help": "Index in the text token sequence where prompts are inserted. Default: the "
                  "architecture's, 0 for models given by explicit paths."},
    )
    # ----- filled in when the adapter is created; checked when it is loaded -----
    base_architecture: Optional[str] = field(
        default=None,
        metadata={"help": "Filled in automatically: the injection spec the adapter was made for (e.g. 'x_clip')."},
    )
    video_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "Filled in automatically: hidden size of the video encoder."}
    )
    text_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "Filled in automatically: hidden size of the text encoder."}
    )
    video_feature_size: Optional[int] = field(
        default=None, metadata={"help": "Filled in automatically: width of the per-frame features the heads read."}
    )
    text_feature_size: Optional[int] = field(
        default=None, metadata={"help": "Filled in automatically: width of the text token features the heads read."}
    )

    trained_window_frames: Optional[int] = field(
        default=None,
        metadata={"help": "Filled in by training: frames per video the adapter was trained on (the collator's count, "
                  "or the median video's). A video longer than the window is grounded window by window."},
    )
    trained_window_seconds: Optional[float] = field(
        default=None,
        metadata={"help": "Filled in by training: the median duration, in seconds, of the training videos; with "
                  "trained_window_frames, the window (and its seconds per frame) that long videos are cut into."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.VTG_PROMPT  # type: ignore[attr-defined]  # added by peft_vtg's registration
        inherited = {f.name for f in dataclasses.fields(PeftConfig)}
        check_field_types(self, [f.name for f in dataclasses.fields(self) if f.name not in inherited])
        # Every read path (VTGPromptConfig.from_pretrained, PeftConfig.from_pretrained, PeftModel.from_pretrained with
        # or without config=, load_adapter) ends in this constructor, so this is the one place that tells "saved
        # before the setting existed" from "not decided yet". Creating an adapter records `base_architecture` and the
        # resolved value of every LEGACY_ADAPTER_SETTINGS field; a config that has the former but lacks one of the
        # latter describes an adapter trained before that setting existed. A config without `base_architecture` was
        # never attached to a model: its None still means "today's default", resolved when the adapter is created.
        if self.base_architecture is not None:
            for name, legacy in LEGACY_ADAPTER_SETTINGS.items():
                if getattr(self, name) is None:
                    setattr(self, name, legacy)

        if self.num_text_tokens is None and self.num_virtual_tokens is None:
            self.num_text_tokens = self.num_virtual_tokens = 8
        elif self.num_text_tokens is None:
            self.num_text_tokens = self.num_virtual_tokens
        elif self.num_virtual_tokens is None:
            self.num_virtual_tokens = self.num_text_tokens
        elif self.num_text_tokens != self.num_virtual_tokens:
            raise ValueError(
                f"num_text_tokens={self.num_text_tokens} and num_virtual_tokens={self.num_virtual_tokens} are aliases "
                "and must agree; set only one of them (dataclasses.replace copies both: assign config.num_text_tokens "
                "on a copy instead)."
            )

        for name in ("num_text_tokens", "num_video_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        if self.num_text_tokens == 0 and self.num_video_tokens == 0 and self.grounding_head is not True:
            raise ValueError(
                "num_text_tokens and num_video_tokens are both 0, so the adapter would learn nothing: set one of them "
                "above 0, or set grounding_head=True to train the grounding head alone on the frozen encoder."
            )
        for name in ("text_prompt_depth", "video_prompt_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1 (1 = shallow prompts), got {value!r}.")
        if self.keep_text_positions is not None and not isinstance(self.keep_text_positions, bool):
            raise ValueError(
                f"keep_text_positions must be True, False or None (default), got {self.keep_text_positions!r}."
            )
        if not isinstance(self.prompt_start_layer, int) or self.prompt_start_layer < 0:
            raise ValueError(f"prompt_start_layer must be an integer >= 0, got {self.prompt_start_layer!r}.")
        for name in ("video_insert_position", "text_insert_position"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}.")

        if self.prompt_tuning_init is not None:
            self.prompt_tuning_init = _enum_value(TextPromptInit, self.prompt_tuning_init, "prompt_tuning_init")
        self.video_prompt_init = _enum_value(VideoPromptInit, self.video_prompt_init, "video_prompt_init")
        if self.prompt_tuning_init == TextPromptInit.TEXT:
            if not self.tokenizer_name_or_path:
                raise ValueError("prompt_tuning_init='TEXT' needs tokenizer_name_or_path (the tokenizer of the base model).")
            if not self.prompt_tuning_init_text:
                raise ValueError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text, e.g. 'find the moment'.")
        elif self.tokenizer_kwargs:
            raise ValueError("tokenizer_kwargs is only used with prompt_tuning_init='TEXT'; remove it or switch init.")
        if not self.random_range > 0:
            raise ValueError(f"random_range must be > 0, got {self.random_range!r}.")
        if not 0.0 <= self.video_prompt_dropout < 1.0:
            raise ValueError(f"video_prompt_dropout must be in [0, 1), got {self.video_prompt_dropout!r}.")

        self._validate_heads()
        for name in ("trained_window_frames", "trained_window_seconds"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be > 0 (it is filled in by training), got {value!r}.")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                self.modules_to_save = [self.modules_to_save]
            self.modules_to_save = list(self.modules_to_save)
            if not all(isinstance(name, str) and name for name in self.modules_to_save):
                raise ValueError(
                    f"modules_to_save must be a list of module names such as ['visual_projection'], got "
                    f"{self.modules_to_save!r}."
                )

        if self.couple_video_to_text:
            if self.num_video_tokens == 0 or self.num_text_tokens == 0:
                raise ValueError("couple_video_to_text=True needs both num_video_tokens and num_text_tokens above 0.")
            if self.num_video_tokens != self.num_text_tokens:
                raise ValueError(
                    f"couple_video_to_text=True maps each text prompt token to one video prompt token, so "
                    f"num_video_tokens ({self.num_video_tokens}) must equal num_text_tokens ({self.num_text_tokens})."
                )
            if self.video_prompt_depth > self.text_prompt_depth:
                raise ValueError(
                    f"couple_video_to_text=True derives the video prompts of each layer from that layer's text prompts, "
                    f"so video_prompt_depth ({self.video_prompt_depth}) must be <= text_prompt_depth "
                    f"({self.text_prompt_depth})."
                )
            if self.video_prompt_init != VideoPromptInit.VPT_UNIFORM:
                raise ValueError("video_prompt_init has no effect with couple_video_to_text=True; leave it at VPT_UNIFORM.")

        # From here on the two names of the text token count are one setting: assigning either (PEFT's way of
        # changing a loaded config: `config.num_virtual_tokens = 16`) sets both, so what is built and what is saved
        # agree. Not before: the constructor must still see a conflicting pair as an error.
        object.__setattr__(self, "_aliases_bound", True)

    def __setattr__(self, name: str, value: object) -> None:
        # A numpy scalar (np.float32(0.1), np.int64(8): what array maths gives) as the plain number it stands for,
        # which JSON can hold when the config is saved (np.bool_ is no Real: it stays, for the checks to refuse).
        if isinstance(value, numbers.Real) and type(value).__module__ == "numpy":
            value = value.item()
        super().__setattr__(name, value)
        if name in TEXT_TOKEN_ALIASES and self.__dict__.get("_aliases_bound"):
            other = TEXT_TOKEN_ALIASES[name]
            if self.__dict__.get(other) != value:
                super().__setattr__(other, value)

    def _validate_heads(self) -> None:
        if self.grounding_head is not None and not isinstance(self.grounding_head, bool):
            raise ValueError(f"grounding_head must be True, False or None (auto), got {self.grounding_head!r}.")
        for name in ("head_hidden_size", "head_num_layers", "head_num_attention_heads", "head_video_layers"):
            value = getattr(self, name)
            if name == "head_hidden_size" and value is None:
                continue  # scaled with the encoder when the adapter is created (`default_head_hidden_size`)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.head_hidden_size is not None:
            check_head_width(self.head_hidden_size, self.head_num_attention_heads)
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout!r}.")
        if self.head_hadamard_fusion is not None and not isinstance(self.head_hadamard_fusion, bool):
            raise ValueError(
                f"head_hadamard_fusion must be True, False or None (default), got {self.head_hadamard_fusion!r}."
            )
        kernel = self.head_temporal_kernel_size
        if kernel is not None and (
            not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 0 or (kernel and kernel % 2 == 0)
        ):
            raise ValueError(
                f"head_temporal_kernel_size must be 0 (no temporal convolution) or an odd integer such as 3, got "
                f"{kernel!r}."
            )
        if self.predict_saliency is not None and not isinstance(self.predict_saliency, bool):
            raise ValueError(f"predict_saliency must be True, False or None (auto), got {self.predict_saliency!r}.")
        if self.predict_saliency and self.grounding_head is False:
            raise ValueError("predict_saliency=True reads the grounding head's fused frames; set grounding_head=True "
                             "(or None), or predict_saliency=False.")
        for name in ("boundary_smoothing", "inside_loss_weight", "inside_negative_loss_weight", "vtm_loss_weight",
                     "saliency_loss_weight", "saliency_margin", "presence_contrast_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        negatives = self.presence_contrast_negatives
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
            raise ValueError(f"presence_contrast_negatives must be a whole number >= 1, got {negatives!r}.")
        if self.presence_contrast_loss_weight > 0 and not self.predict_inside:
            raise ValueError("presence_contrast_loss_weight > 0 ranks clips by their inside probabilities; set "
                             "predict_inside=True, or presence_contrast_loss_weight=0.")
        if isinstance(self.vtm_heads, str):
            self.vtm_heads = [self.vtm_heads]
        self.vtm_heads = list(self.vtm_heads or [])
        unknown = sorted(set(self.vtm_heads) - set(VTM_HEAD_NAMES))
        if unknown:
            raise ValueError(f"vtm_heads has unknown entries {unknown}; choose from {list(VTM_HEAD_NAMES)}.")
        if len(set(self.vtm_heads)) != len(self.vtm_heads):
            raise ValueError(f"vtm_heads lists a head twice: {self.vtm_heads}.")
        if self.head_video_layers > 1 and self.grounding_head is False:
            raise ValueError(
                f"head_video_layers={self.head_video_layers} sets how many layers the grounding head reads, but "
                "grounding_head=False; set grounding_head=True (or None), or leave head_video_layers at 1."
            )
        if self.vtm_heads and self.grounding_head is False:
            raise ValueError(
                "vtm_heads read the fused [CLS] of the grounding head; set grounding_head=True (or None) or vtm_heads=[]."
            )

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write `adapter_config.json` as PEFT does, but serialised before the file is opened and replaced atomically:
        PEFT's own opens (truncates) the file first, so a value JSON cannot hold, or a kill, left an empty config in
        place of a good one."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory} is a file; give a directory.")
        auto_mapping = kwargs.pop("auto_mapping_dict", None)
        output = {key: list(value) if isinstance(value, set) else value for key, value in self.to_dict().items()}
        if auto_mapping is not None:
            output["auto_mapping"] = auto_mapping
        try:
            text = json.dumps(output, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError):
            for key, value in output.items():  # name the setting JSON cannot hold
                try:
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"The adapter config cannot be saved: {key}={value!r} is not a JSON value "
                                     f"({err}); set it to a plain number, string, list or mapping. Nothing was "
                                     "written.") from None
            raise
        os.makedirs(save_directory, exist_ok=True)
        write_text_atomic(os.path.join(save_directory, CONFIG_NAME), text)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """Load the config (as PEFT does) and check the adapter weights beside it; see `check_adapter_directory`.

        Settings the file lacks are resolved in `__post_init__`, the same way for every read path.
        """
        directory = os.path.join(pretrained_model_name_or_path, subfolder or "")
        check_adapter_directory(directory)
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if not isinstance(config, VTGPromptConfig):  # PEFT builds the class its peft_type names
            kind = getattr(getattr(config, "peft_type", None), "value", type(config).__name__)
            raise ValueError(f"{directory} holds a {kind} adapter, not a VTG_PROMPT one; load it with "
                             "PeftModel.from_pretrained (or its own config class, e.g. peft.LoraConfig).")
        # A config that records its base architecture was saved with an adapter (see __post_init__), so a local
        # directory without the weights is an incomplete adapter; PEFT would go on to look for the file on the Hub
        # and fail with an unrelated repo-id error. A bare config (never attached to a model) reads fine alone.
        if (os.path.isdir(directory) and config.base_architecture is not None
                and not os.path.exists(os.path.join(directory, ADAPTER_WEIGHTS_NAME))):
            raise FileNotFoundError(
                f"{directory} holds an adapter's config ({config.base_architecture}) but no {ADAPTER_WEIGHTS_NAME}: "
                "the adapter directory is incomplete. Save (or download) the adapter again; to read only its "
                "settings, use PeftConfig.from_pretrained."
            )
        return config
