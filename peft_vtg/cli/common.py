"""What the `peft-vtg` commands share: argument types, the dataclass flags (built with transformers'
`HfArgumentParser`), the --config file, model / data arguments, loading a base model with its adapter(s), reading
annotations, the video source and output checks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import typing
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Optional

from ..data.annotations import DuplicateKeyError, load_annotations, unique_keys
from ..files import read_json_object

# Filled in automatically when an adapter is created, or PEFT bookkeeping: not user settings.
AUTO_CONFIG_FIELDS = {"num_virtual_tokens", "base_architecture", "video_hidden_size", "text_hidden_size",
                       "video_feature_size", "text_feature_size", "trained_window_frames", "trained_window_seconds"}


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _whole_number(text: str, low: int, high: Optional[int], expected: str, bound: str) -> int:
    """`text` as a whole number in [low, high], or an argparse error: "expected {expected}" when it is no whole
    number, "must be {bound}" when it is out of range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (frames, pixels, tokens, a batch size)."""
    return _whole_number(text, 1, None, "a whole number >= 1", ">= 1")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (a count of worker processes)."""
    return _whole_number(text, 0, None, "a whole number >= 0", ">= 0")


def seed(text: str) -> int:
    """argparse type: a random seed, a whole number in [0, 2**32 - 1] (what numpy's and torch's seeding accept)."""
    return _whole_number(text, 0, 2**32 - 1, "a whole number in [0, 2**32 - 1]", "a whole number in [0, 2**32 - 1]")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a rate or a length in seconds); NaN and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _unit_interval(text: str, expected: str, bound: str, prefix: str = "") -> float:
    """`text` as a number in [0, 1], or an argparse error: "{prefix}expected {expected}" when it is no number,
    "{prefix}must be {bound}" when it is out of range (NaN included)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{prefix}expected {expected}, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f"{prefix}must be {bound}, got {text!r}")
    return value


def iou(text: str) -> float:
    """argparse type: an IoU threshold in [0, 1]."""
    return _unit_interval(text, "an IoU in [0, 1] or none", "an IoU in [0, 1]")


def window_overlap(text: str) -> float:
    """argparse type: the fraction of a window shared with the next one, in [0, 1) (1 would never advance)."""
    value = _unit_interval(text, "a fraction in [0, 1)", "a fraction in [0, 1)")
    if value == 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r} (windows sharing all their "
                                         "frames would never advance)")
    return value


def fraction(flag: str) -> Callable[[str], float]:
    """argparse type: a fraction in [0, 1] for `flag`."""
    return lambda text: _unit_interval(text, "a fraction in [0, 1]", "a fraction in [0, 1]", prefix=f"{flag} ")


def optional_value(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type: `parse`, or None for "none" / "auto"."""

    def parse_or_none(text: str):
        return None if text.lower() in ("none", "auto") else parse(text)

    # argparse names the type in its message: "invalid int value: '2.5'", not "invalid parse_or_none value".
    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def json_object(text: str) -> dict:
    """argparse type: a JSON object, e.g. '{"use_fast": false}'."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r} "
                                         f"({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r}")
    return value


def _flag_type(hint: Any) -> Any:
    """The type a dataclass field's flag parses its value with. `HfArgumentParser` reads it from the flags
    dataclass: bool and list[...] keep its own handling (`--flag`, `--flag true|false`; several values), the rest
    gets a parser that also takes "none" / "auto" for Optional fields (None: the config's automatic choice), JSON for
    dict fields, and plain text for enum-or-text fields (the config's `__post_init__` names the allowed values)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)]
    base = inner[0] if optional and len(inner) == 1 else hint
    if typing.get_origin(base) is list:
        return list[typing.get_args(base)[0]]
    if base is bool:
        return optional_value(parse_bool) if optional else bool
    if base in (int, float):
        return optional_value(base) if optional else base
    if base is dict:
        return json_object
    return optional_value(str) if optional else str


def _flag_metavar(hint: Any) -> Optional[str]:
    args = typing.get_args(hint)
    inner = [a for a in args if a is not type(None)]
    base = inner[0] if type(None) in args and len(inner) == 1 else hint
    if typing.get_origin(base) is list:
        return "VALUE"
    return {bool: "{true,false}", int: "INT", float: "FLOAT", dict: "JSON"}.get(base, "TEXT")


def dataclass_flags(cls: type, names: Sequence[str], title: str) -> argparse.ArgumentParser:
    """A parent parser (for `add_parser(..., parents=[...])`) with one flag per field `names` of the dataclass `cls`,
    built by transformers' `HfArgumentParser` from a dataclass of those fields: `--field-name` (and
    `--field_name`), typed from the field's annotation, its help from the field's `help` metadata, grouped under
    `title`.

    Every default is suppressed, so that only flags given on the command line override the --config file (and
    the dataclass's own defaults apply to what neither sets); the default is written into the help instead.
    """
    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    specs = []
    for name in names:
        field_, hint = fields[name], hints[name]
        default = field_.default if field_.default is not dataclasses.MISSING else None
        help_text = f"{field_.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        metadata = {"help": help_text, "metavar": _flag_metavar(hint)}
        specs.append((name, _flag_type(hint), dataclasses.field(default=argparse.SUPPRESS, metadata=metadata)))
    flags = dataclasses.make_dataclass(f"{cls.__name__}Flags", specs)
    flags._argument_group_name = title  # HfArgumentParser puts the flags in a group of this title
    parser = HfArgumentParser(flags, add_help=False)
    for action in parser._actions:
        # HfArgumentParser gives list fields no default (None): suppressed too, or None would override the file.
        # (Not `set_defaults`: parents pass those on as values, which argparse would then parse.)
        action.default = argparse.SUPPRESS
        if action.nargs == "+":  # a list flag may be given with no values: an empty list (--vtm-heads: no heads)
            action.nargs = "*"
        if action.type is string_to_bool:  # the same words and message as every other true/false flag here
            action.type = parse_bool
    return parser


def config_field_names() -> list[str]:
    from peft.config import PeftConfig

    from ..vtg_prompt.config import VTGPromptConfig

    inherited = {f.name for f in dataclasses.fields(PeftConfig)}
    return [f.name for f in dataclasses.fields(VTGPromptConfig) if f.name not in inherited | AUTO_CONFIG_FIELDS]


def training_field_names() -> list[str]:
    from ..training.arguments import VTGTrainingArguments

    return [f.name for f in dataclasses.fields(VTGTrainingArguments)]


def settings_from(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Values for `names`: the config file's, overridden by the flags given."""
    values = {k: v for k, v in args.file_settings.items() if k in names}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def add_data_arguments(parser: argparse.ArgumentParser, annotations_flag: str, required: bool) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(annotations_flag, required=required, help="annotation file (any format peft_vtg reads)")
    group.add_argument("--format", default=None, choices=["jsonl", "charades_sta", "activitynet_captions", "tacos",
                                                         "qvhighlights"],
                       help="annotation format (default: detected from the file)")
    group.add_argument("--durations", default=None, help="Charades-STA: the Charades csv with video lengths")
    group.add_argument("--strict", action="store_true", help="raise on the first bad annotation row instead of "
                       "clipping or dropping it")
    group.add_argument("--features-dir", default=None, help="directory of per-video feature files "
                       "(<vid>.npy/.npz/.safetensors/.h5); adapters without video prompts only")
    group.add_argument("--features-key", default=None, help="array name inside multi-array feature files")
    group.add_argument("--video-dir", default=None, help="directory of video files <vid><suffix>, decoded with PyAV")
    group.add_argument("--video-suffix", default=".mp4", help="video file suffix (default: .mp4)")
    group.add_argument("--cache-dir", default=None, help="frozen-prefix cache written by `peft-vtg cache`: the "
                       "encoder's hidden states entering its layer k; video prompts must start at layer >= k")
    group.add_argument("--num-frames", type=positive_int, default=None, help="frames sampled per video, or feature "
                       "bins (default: the encoder's fixed count, else a loaded adapter's trained frames per video, "
                       "else 32 for videos; native length for features)")
    group.add_argument("--fps", type=positive_float, default=None, help="sample videos at this rate (frames per "
                       "second) instead of --num-frames; --video-dir only")
    group.add_argument("--image-size", type=positive_int, default=None, help="frame size in pixels (default: the "
                       "encoder's); --video-dir only")
    group.add_argument("--max-text-length", type=positive_int, default=None,
                       help="truncate queries to this many tokens")


def add_window_arguments(parser: argparse.ArgumentParser, applies_to: str = "") -> None:
    """--window-seconds / --window-overlap: how video files longer than 1.5 windows are grounded window by window."""
    parser.add_argument("--window-seconds", type=positive_float, default=None,
                        help=f"{applies_to}a video longer than 1.5 x this is grounded window by window, with memory "
                        "bounded by a window (default: the window the adapter was trained on, recorded in its config)")
    parser.add_argument("--window-overlap", type=window_overlap, default=0.5,
                        help="fraction of a window shared with the next one, in [0, 1) (default: 0.5)")


def add_model_arguments(parser: argparse.ArgumentParser, adapter_required: bool, ensemble: bool = False) -> None:
    group = parser.add_argument_group("model")
    if ensemble:
        group.add_argument("--adapter", required=adapter_required, action="append", default=None,
                           help="adapter directory (or Hub id); give it several times for a prompt ensemble: every "
                           "adapter grounds each query and their per-frame start/end probabilities are averaged "
                           "before decoding (same base model)")
    else:
        group.add_argument("--adapter", required=adapter_required, default=None,
                           help="adapter directory (or Hub id)" + ("" if adapter_required else
                                                                  " to continue training; default: a new adapter"))
    if ensemble:
        group.add_argument("--ensemble-fusion", default="mean", choices=["mean", "geometric"],
                           help="with several --adapter: fuse their start/end distributions by the mean of the "
                           "probabilities (default) or their geometric mean (a span scores high only where all agree)")
    group.add_argument("--base-model", default=None, help="base model path or Hub id for AutoModel.from_pretrained "
                       "(default: the one recorded in the adapter)")
    group.add_argument("--tokenizer", default=None, help="tokenizer path or id (default: the base model's)")


# A Hugging Face Hub id: "name" or "namespace/name" (what from_pretrained would try to download).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


# What a local model or tokenizer directory must hold, by marker: a tokenizer may be saved without
# tokenizer_config.json (tokenizer.json alone, or found through the model's config.json), which AutoTokenizer still
# loads. Adapter directories are not listed: `check_adapter_dir` checks them whole (config, peft_type, weights).
_LOCAL_MARKERS = {"config.json": ("config.json",),
                  "tokenizer_config.json": ("tokenizer_config.json", "tokenizer.json", "config.json")}


def resolve_pretrained(name: str, what: str, marker: str) -> str:
    """The directory to load `what` from: `name` itself when it is a local directory, the cached snapshot of a Hub id
    while offline, else `name` (from_pretrained downloads it). Fails clearly, before any loading, on a path that does
    not exist, on a local model or tokenizer directory without `marker`, and on a Hub id that cannot be had offline.

    Args:
        name: a local path or a Hub id.
        what: how messages name it, e.g. "--base-model /x" or "the base model the adapter records (/x)".
        marker: a file the directory must hold (config.json, adapter_config.json), to look up in the Hub cache.
    """
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if marker in _LOCAL_MARKERS and not any(os.path.isfile(os.path.join(path, found))
                                                for found in _LOCAL_MARKERS[marker]):
            raise FileNotFoundError(f"{what} has no {marker}; give the directory save_pretrained wrote (or a Hub "
                                    "id), not a folder above or beside it.")
        return path
    if os.path.exists(path):
        raise ValueError(f"{what} is a file; give the directory that holds {marker}.")
    if os.path.isabs(path) or name.startswith((".", "~")) or not HUB_ID.match(name):
        raise FileNotFoundError(f"{what}: no such directory. Give the local directory that holds {marker}, or a Hub "
                                "id (namespace/name).")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, marker)
        if isinstance(cached, str):
            return os.path.dirname(cached)
        raise ValueError(
            f"{what} is not a local directory, and as a Hub id it cannot be downloaded: HF_HUB_OFFLINE is set (no "
            "network) and it is not in the local Hub cache. Give a local directory (e.g. one written by "
            "save_pretrained), or download it once while online."
        )
    return name


def check_adapter_dir(path: str, flag: str) -> dict[str, Any]:
    """The adapter config of a local adapter directory, after checking that it is a complete VTG adapter: a JSON
    `adapter_config.json` with `peft_type` VTG_PROMPT, and safetensors weights (pickled weights are refused)."""
    from ..vtg_prompt.config import ADAPTER_WEIGHTS_NAME, PICKLED_WEIGHTS_NAMES

    config_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{flag} {path} has no adapter_config.json; give an adapter directory (what "
                                "`peft-vtg train` or save_pretrained writes).")
    config = read_json_object(config_path, "save the adapter again.")
    if "peft_type" not in config:
        raise ValueError(f"{config_path} has no 'peft_type'; a peft_vtg adapter's config says \"peft_type\": "
                         "\"VTG_PROMPT\". Save the adapter again with save_pretrained (or restore the key).")
    if config["peft_type"] != "VTG_PROMPT":
        raise ValueError(f"{config_path}: peft_type is {config['peft_type']!r}, but peft-vtg works with VTG_PROMPT "
                         "adapters (made by `peft-vtg train` or get_peft_model(base, VTGPromptConfig(...))).")
    weights = os.path.join(path, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        pickled = [name for name in PICKLED_WEIGHTS_NAMES if os.path.exists(os.path.join(path, name))]
        if pickled:
            raise ValueError(f"{flag} {path} holds only {pickled[0]}, a pickled file; peft-vtg loads "
                             f"{ADAPTER_WEIGHTS_NAME} only, because unpickling can run arbitrary code. Save the "
                             "adapter again with save_pretrained (safe_serialization=True).")
        raise FileNotFoundError(f"{flag} {path} has no adapter weights ({ADAPTER_WEIGHTS_NAME}); the directory is "
                                "incomplete: train or save the adapter again.")
    return config


def load_model(args: argparse.Namespace, trainable: bool, config_settings: Optional[dict] = None):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from ..vtg_prompt.config import VTGPromptConfig

    adapters = adapter_flags(args)
    first = adapters[0] if adapters else None
    adapter_path, recorded = None, None
    if first:
        adapter_path = resolve_pretrained(first, f"--adapter {first}", "adapter_config.json")
        if os.path.isdir(adapter_path):
            recorded = check_adapter_dir(adapter_path, "--adapter")
    base_name = args.base_model
    what = f"--base-model {base_name}"
    if base_name is None and recorded is not None:
        base_name = recorded.get("base_model_name_or_path")
        what = f"the base model the adapter records ({base_name}; override it with --base-model)"
    if not base_name:
        raise ValueError("Give --base-model (a path or Hub id); the adapter does not record one.")
    if first and config_settings:
        raise ValueError(
            f"Adapter settings {sorted(config_settings)} cannot change the existing adapter {first}; drop them "
            "to continue training it, or leave out --adapter to create a new one."
        )
    base_path = resolve_pretrained(base_name, what, "config.json")
    tokenizer_path = (resolve_pretrained(args.tokenizer, f"--tokenizer {args.tokenizer}", "tokenizer_config.json")
                      if args.tokenizer else base_path)
    base = AutoModel.from_pretrained(base_path)
    if adapter_path:
        try:
            model = PeftModel.from_pretrained(base, adapter_path, is_trainable=trainable)
        except RuntimeError as err:  # load_state_dict: weights of another shape, i.e. another base model
            raise ValueError(f"The adapter {first} does not fit the base model {base_name} ({err}); give the "
                             "base model it was trained on (--base-model).") from err
        # A prompt ensemble's other members, under the names `ensemble_names` gives them.
        for name, member in zip(ensemble_names(args)[1:] if len(adapters) > 1 else [], adapters[1:]):
            path = resolve_pretrained(member, f"--adapter {member}", "adapter_config.json")
            if os.path.isdir(path):
                member_base = check_adapter_dir(path, "--adapter").get("base_model_name_or_path")
                if args.base_model is None and member_base and member_base != base_name:
                    raise ValueError(f"The ensemble's adapters record different base models ({base_name} for "
                                     f"{first}, {member_base} for {member}); an ensemble shares one base model. "
                                     "Give --base-model if they were trained on the same one under two names.")
            try:
                model.load_adapter(path, adapter_name=name, is_trainable=trainable)
            except RuntimeError as err:
                raise ValueError(f"The adapter {member} does not fit the base model {base_name} ({err}); an "
                                 "ensemble's adapters must share one base model.") from err
    else:
        model = get_peft_model(base, VTGPromptConfig(**(config_settings or {})))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return model, tokenizer, base_name


def adapter_flags(args: argparse.Namespace) -> list[str]:
    """The --adapter values: one for train, one or more (a prompt ensemble) for evaluate and predict."""
    given = args.adapter
    adapters = [] if not given else [given] if isinstance(given, str) else list(given)
    repeated = sorted({a for a in adapters if adapters.count(a) > 1})
    if repeated:
        raise ValueError(f"--adapter {repeated[0]} is given more than once; give each adapter of an ensemble once.")
    return adapters


def ensemble_names(args: argparse.Namespace) -> Optional[list[str]]:
    """The loaded names of a prompt ensemble's adapters ("default" for the first, "member1", ... in the order
    given), or None for a single --adapter."""
    adapters = adapter_flags(args)
    if len(adapters) < 2:
        return None
    return ["default"] + [f"member{k}" for k in range(1, len(adapters))]


def read_annotations(args: argparse.Namespace, path: str):
    """The annotation file through its reader (`--format`, `--durations`, `--strict`); the reader's clip/drop
    warnings go to stderr as notes, so stdout stays the result."""
    kwargs: dict[str, Any] = {"strict": getattr(args, "strict", False)}
    if args.durations:
        kwargs["durations"] = args.durations
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_annotations(path, format=args.format, **kwargs)
    for warning in caught:
        print(f"note: {warning.message}", file=sys.stderr)
    return dataset


def video_setup(args: argparse.Namespace, model: Any) -> tuple[Any, Optional[int], str]:
    """(video source, frames per clip for the collator, description) from the data flags."""
    from ..data.video import FeatureDirectory, VideoFiles
    from ..inference import default_num_frames

    bound = model.base_model.model.vtg_prompts.bound
    if getattr(args, "cache_dir", None):
        return cache_setup(args, model)
    if bool(args.features_dir) == bool(args.video_dir):
        raise ValueError("Give exactly one of --features-dir (pre-extracted features) and --video-dir (video files).")
    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample each video).")
    if args.features_dir:
        ignored = [flag for flag, value in (("--fps", args.fps), ("--image-size", args.image_size)) if value]
        if ignored:
            raise ValueError(f"{' and '.join(ignored)} apply to --video-dir only; features are used as extracted "
                             "(--num-frames resamples them). Drop the flag.")
        return (FeatureDirectory(args.features_dir, key=args.features_key, dim=bound.video_feature_size),
                args.num_frames, f"features: {args.features_dir}")
    # As `ground` samples a video file: the adapter's trained frames per video (a loaded adapter), else 32.
    num_frames = args.num_frames or (None if args.fps else default_num_frames(model))
    image_size = frame_size(args, bound)
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=args.fps, image_size=image_size,
                        suffix=args.video_suffix)
    return source, num_frames, f"videos: {args.video_dir}"


def check_queries_fit(args: argparse.Namespace, model: Any, tokenizer: Any, names: Sequence[str],
                      queries: Sequence[str]) -> None:
    """Before the first video: every query fits the text encoder beside the adapters' prompts once truncated to
    --max-text-length (`peft_vtg.inference.check_query_lengths`), so a long run does not stop at the first that does
    not; the error names the queries (`names`, e.g. "qid 7") and the flag."""
    from ..inference import check_query_lengths

    check_query_lengths(model, tokenizer, list(queries), names=list(names),
                        max_text_length=args.max_text_length, adapter_names=ensemble_names(args),
                        flag="--max-text-length")


def frame_size(args: argparse.Namespace, bound: Any) -> int:
    """The frame size videos are preprocessed to: --image-size, else the video encoder's own, else 224; a
    --image-size the encoder cannot take is an error naming the flag (`check_encoder_image_size`)."""
    from ..data.video import check_encoder_image_size, encoder_image_size

    encoder_size = encoder_image_size(bound)
    check_encoder_image_size(args.image_size, encoder_size, "--image-size")
    return args.image_size or encoder_size or 224


def cache_setup(args: argparse.Namespace, model: Any) -> tuple[Any, None, str]:
    """(cache source, None, description) for `--cache-dir`, after checking that the cache belongs to `model`, its
    adapter and the sampling flags given (each mismatch is named, with the fix)."""
    from ..cache import CachedVideoStates

    given = [flag for flag, value in (("--features-dir", args.features_dir), ("--video-dir", args.video_dir)) if value]
    if given:
        raise ValueError(f"Give one video source: --cache-dir or {given[0]}, not both.")
    source = CachedVideoStates(args.cache_dir, model, num_frames=args.num_frames, fps=args.fps,
                               image_size=args.image_size)
    return source, None, f"cache: {args.cache_dir} (layer {source.layer})"


def check_video_ids(source: Any, rows: Any) -> None:
    """Fail before the run, naming them, when annotated videos have no file in the source (or ids that are not plain
    file names), rather than at the first batch that needs one."""
    missing = source.missing(rows["vid"])
    if missing:
        where = getattr(source, "root", "the video source")
        hint = ""
        try:  # the source's own word on the first one (e.g. "there is v1.pt, but pickled files are never loaded")
            getattr(source, "path", lambda vid: None)(missing[0])
        except (OSError, ValueError) as err:
            hint = f" For {missing[0]!r}: {err}" if "never loaded" in str(err) else ""
        raise FileNotFoundError(f"{len(missing)} annotated video(s) have no file in {where}: "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Check --features-dir / "
                                f"--video-dir (and --video-suffix) against the annotation file.{hint}")


def check_output_file(path: Optional[str], flag: str) -> None:
    """Fail before a long run when an output file could not be written afterwards."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file name.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {path}: the directory {parent} does not exist.")


def check_output_dir(path: str, flag: str) -> None:
    """Fail before a long run when the output directory is an existing file (or lies under one)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file; give a directory (new or existing) for the outputs.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: {parent} is a file, so the directory cannot be created there.")


def path_identity(path: Optional[str]) -> Optional[str]:
    """'<absolute path> (<bytes>, modified <time>)' of a file, or the same summary over a directory's files: what a
    resume compares to notice that the data changed (cheap: sizes and dates, not contents)."""
    import datetime

    if not path:
        return None
    full = os.path.abspath(path)
    if not os.path.exists(full):
        return full
    if os.path.isdir(full):
        count = size = newest = 0
        for entry in os.scandir(full):
            if entry.is_file():
                stat = entry.stat()
                count, size, newest = count + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
        when = datetime.datetime.fromtimestamp(newest / 1e9).isoformat(timespec="microseconds")
        return f"{full} ({count} files, {size} bytes, newest modified {when})"
    stat = os.stat(full)
    when = datetime.datetime.fromtimestamp(stat.st_mtime_ns / 1e9).isoformat(timespec="microseconds")
    return f"{full} ({stat.st_size} bytes, modified {when})"


def check_single_process(command: str, advice: str) -> None:
    """Refuse to run `command` under a multi-process launcher (`accelerate launch --num_processes N`, `torchrun`):
    it is written for one process, and N copies would each do all of the work and race for its output (the loser
    stopped as "in use by another run", and the launcher then killed the winner mid-write)."""
    # WORLD_SIZE alone is also set for single commands on some clusters (a Kubeflow job's pods): the launchers set
    # LOCAL_RANK too.
    processes = os.environ.get("WORLD_SIZE", "1")
    if processes.isdigit() and int(processes) > 1 and "LOCAL_RANK" in os.environ:
        raise ValueError(f"`peft-vtg {command}` runs in one process, and this launch started {processes} of them "
                         f"(accelerate launch / torchrun); {advice}")


def load_config_file(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: accept a byte-order mark (Windows editors write one)
            settings = json.load(handle, object_pairs_hook=unique_keys)  # json alone would keep the last silently
    except DuplicateKeyError as err:
        raise ValueError(f"--config {path}: the setting {err.args[0]!r} is given twice; give each setting once.") \
            from None
    except (ValueError, RecursionError) as err:  # bad syntax, not UTF-8, too deep, an integer of 4,300+ digits
        raise ValueError(f"--config {path} is not a JSON file of settings ({err}); write one JSON object, e.g. "
                         '{"num_video_tokens": 8, "learning_rate": 0.001}, saved as UTF-8.') from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object of settings.")
    known = set(config_field_names()) | set(training_field_names())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{path} has unknown settings {unknown}; see `peft-vtg train --help` for the names "
                         "(underscores, e.g. num_video_tokens).")
    return settings


