"""The `peft-vtg` command line (also `python -m peft_vtg`, and `accelerate launch -m peft_vtg train ...`).

Subcommands:

- `train`: prompt-tune a base model on an annotation file with a video source; every `VTGPromptConfig` and
  `VTGTrainingArguments` field is a flag, and `--config FILE.json` supplies any of them (flags win).
- `evaluate`: the metrics of an adapter on an annotation file (table or `--json`).
- `predict`: moments of a query in a video file, in seconds; or of many queries in many videos (`--videos`,
  `--queries`, `--output`: submission lines, resumable). Videos of any length (window by window).
- `push`: upload an adapter with a model card to the Hugging Face Hub.
- `score`: R@n IoU@m, mIoU, Moment-DETR's mAP and highlight metrics of a predictions file against ground truth.
- `extract`: per-frame features of the videos of a directory, for `--features-dir` (or Moment-DETR-style `.npz`).
- `cache`: run the frozen video encoder once over a dataset's videos up to a layer and store its hidden states
  (`--cache-dir` of `train` / `evaluate` then runs only the layers above it).
- `demo`: the embedded default, prompt-tuning the shipped backbone on SynthVTG.
"""

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
from typing import Any, Optional

from .data.annotations import load_annotations
from .files import write_text_atomic
from .metrics import evaluate_moments, format_table
from .submission import read_submission, submission_lines


def read_predictions(path: str) -> dict[str, list[list[float]]]:
    """qid -> windows `[start_s, end_s, score]` of a prediction file (`peft_vtg.submission.read_submission`, which
    also reads the saliency scores)."""
    return read_submission(path).windows


def _score(args: argparse.Namespace) -> int:
    from .data.annotations import read_report
    from .moment_detr_eval import brief, evaluate_highlights, evaluate_moment_retrieval
    from .training.evaluation import clip_length_of, highlight_truth

    if args.rank_as_listed and args.nms_threshold is not None:
        raise ValueError("--rank-as-listed scores the windows in the order given; --nms-threshold ranks them by score. "
                         "Give one of the two.")
    ground_truth = _read_annotations(args, args.ground_truth)
    submission = read_submission(args.predictions)
    # Rows the ground-truth reader dropped (dirty annotations) are not scored; their predictions are set aside.
    predicted = set(submission.windows) | set(submission.saliency)
    dropped = set(read_report(ground_truth).get("dropped_qids", [])) & predicted
    if dropped:
        print(f"note: ignoring the predictions of {len(dropped)} queries whose ground-truth rows were dropped: "
              f"{sorted(dropped)[:10]}{' ...' if len(dropped) > 10 else ''}", file=sys.stderr)
        submission = submission.without(dropped)
    truth = {row["qid"]: row["windows"] for row in ground_truth}
    metrics: dict[str, Any] = {}
    if submission.windows:
        metrics = evaluate_moments(submission.windows, truth, nms_threshold=args.nms_threshold,
                                   rank_by_score=not args.rank_as_listed)
        metrics.update(brief(evaluate_moment_retrieval(submission.windows, truth)))
    if submission.saliency:
        highlights = highlight_truth(ground_truth)
        if not highlights:
            print("note: the predictions have saliency scores but the ground truth has no highlight labels "
                  "(relevant_clip_ids, saliency_scores); they are not scored.", file=sys.stderr)
        else:
            extra = sorted(set(submission.saliency) - set(truth), key=str)
            if extra:
                raise ValueError(f"Saliency scores for unknown qids {extra[:10]} ({len(extra)}).")
            metrics.update(brief(evaluate_highlights(submission.saliency, highlights, clip_length_of(ground_truth))))
            metrics["HL-num_queries"] = len(highlights)
    # allow_nan=False: NaN is not JSON; a metric that cannot be computed raises above instead of printing NaN.
    print(json.dumps(metrics, allow_nan=False) if args.json else format_table(metrics))
    return 0


# ---------------------------------------------------------------- dataclass fields as flags
# Filled in automatically when an adapter is created, or PEFT bookkeeping: not user settings.
_AUTO_CONFIG_FIELDS = {"num_virtual_tokens", "base_architecture", "video_hidden_size", "text_hidden_size",
                       "video_feature_size", "text_feature_size", "trained_window_frames", "trained_window_seconds"}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (frames, pixels, tokens, a batch size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a rate or a length in seconds); NaN and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _iou(text: str) -> float:
    """argparse type: an IoU threshold in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IoU in [0, 1] or none, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f"must be an IoU in [0, 1], got {text!r}")
    return value


def _optional(parse):
    def parse_or_none(text: str):
        return None if text.lower() in ("none", "auto") else parse(text)

    return parse_or_none


def _add_fields(group: argparse._ArgumentGroup, cls: type, names: Sequence[str]) -> None:
    """One flag per dataclass field, typed from its annotation, its help from the field's metadata.

    Defaults are suppressed so that only flags given on the command line override the config file.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        hint, field_ = hints[name], fields[name]
        args = typing.get_args(hint)
        optional = type(None) in args
        inner = [a for a in args if a is not type(None)]
        base = inner[0] if optional and len(inner) == 1 else hint
        default = field_.default if field_.default is not dataclasses.MISSING else None
        help_text = f"{field_.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_text, dest=name)
        if typing.get_origin(base) is list:
            kwargs.update(nargs="*", metavar="VALUE")
        elif base is bool:
            kwargs.update(type=_optional(_parse_bool) if optional else _parse_bool, metavar="{true,false}")
        elif base in (int, float):
            kwargs.update(type=_optional(base) if optional else base, metavar=base.__name__.upper())
        elif base is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        else:  # str and str-valued enums
            kwargs.update(type=_optional(str) if optional else str, metavar="TEXT")
        group.add_argument("--" + name.replace("_", "-"), **kwargs)


def _config_field_names() -> list[str]:
    from peft.config import PeftConfig

    from .vtg_prompt.config import VTGPromptConfig

    inherited = {f.name for f in dataclasses.fields(PeftConfig)}
    return [f.name for f in dataclasses.fields(VTGPromptConfig) if f.name not in inherited | _AUTO_CONFIG_FIELDS]


def _training_field_names() -> list[str]:
    from .training.arguments import VTGTrainingArguments

    return [f.name for f in dataclasses.fields(VTGTrainingArguments)]


def _settings(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Values for `names`: the config file's, overridden by the flags given."""
    values = {k: v for k, v in args.file_settings.items() if k in names}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


# ---------------------------------------------------------------- data and model arguments
def _add_data_arguments(parser: argparse.ArgumentParser, annotations_flag: str, required: bool) -> None:
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
    group.add_argument("--num-frames", type=_positive_int, default=None, help="frames sampled per video, or feature "
                       "bins (default: the encoder's fixed count, else 32 for videos, native length for features)")
    group.add_argument("--fps", type=_positive_float, default=None, help="sample videos at this rate (frames per "
                       "second) instead of --num-frames; --video-dir only")
    group.add_argument("--image-size", type=_positive_int, default=None, help="frame size in pixels (default: the "
                       "encoder's); --video-dir only")
    group.add_argument("--max-text-length", type=_positive_int, default=None,
                       help="truncate queries to this many tokens")


def _add_model_arguments(parser: argparse.ArgumentParser, adapter_required: bool, ensemble: bool = False) -> None:
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
    group.add_argument("--base-model", default=None, help="base model path or Hub id for AutoModel.from_pretrained "
                       "(default: the one recorded in the adapter)")
    group.add_argument("--tokenizer", default=None, help="tokenizer path or id (default: the base model's)")


# A Hugging Face Hub id: "name" or "namespace/name" (what from_pretrained would try to download).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _resolve_pretrained(name: str, what: str, marker: str) -> str:
    """The directory to load `what` from: `name` itself when it is a local directory, the cached snapshot of a Hub id
    while offline, else `name` (from_pretrained downloads it). Fails clearly, before any loading, on a path that does
    not exist and on a Hub id that cannot be had offline.

    Args:
        name: a local path or a Hub id.
        what: how messages name it, e.g. "--base-model /x" or "the base model the adapter records (/x)".
        marker: a file the directory must hold (config.json, adapter_config.json), to look up in the Hub cache.
    """
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{what} is a file; give the directory that holds {marker}.")
    if os.path.isabs(path) or name.startswith((".", "~")) or not _HUB_ID.match(name):
        raise FileNotFoundError(f"{what}: no such directory. Give the local directory that holds {marker}, or a Hub "
                                "id (namespace/name).")
    if _hub_offline():
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


def _check_adapter_dir(path: str, flag: str) -> dict[str, Any]:
    """The adapter config of a local adapter directory, after checking that it is a complete VTG adapter: a JSON
    `adapter_config.json` with `peft_type` VTG_PROMPT, and safetensors weights (pickled weights are refused)."""
    from .vtg_prompt.config import ADAPTER_WEIGHTS_NAME, PICKLED_WEIGHTS_NAMES

    config_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{flag} {path} has no adapter_config.json; give an adapter directory (what "
                                "`peft-vtg train` or save_pretrained writes).")
    with open(config_path, encoding="utf-8-sig") as handle:
        try:
            config = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path} is not valid JSON ({err}); save the adapter again.") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__}.")
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


def _load_model(args: argparse.Namespace, trainable: bool, config_settings: Optional[dict] = None):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from .vtg_prompt.config import VTGPromptConfig

    adapters = _adapter_flags(args)
    first = adapters[0] if adapters else None
    adapter_path, recorded = None, None
    if first:
        adapter_path = _resolve_pretrained(first, f"--adapter {first}", "adapter_config.json")
        if os.path.isdir(adapter_path):
            recorded = _check_adapter_dir(adapter_path, "--adapter")
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
    base_path = _resolve_pretrained(base_name, what, "config.json")
    tokenizer_path = (_resolve_pretrained(args.tokenizer, f"--tokenizer {args.tokenizer}", "tokenizer_config.json")
                      if args.tokenizer else base_path)
    base = AutoModel.from_pretrained(base_path)
    if adapter_path:
        try:
            model = PeftModel.from_pretrained(base, adapter_path, is_trainable=trainable)
        except RuntimeError as err:  # load_state_dict: weights of another shape, i.e. another base model
            raise ValueError(f"The adapter {first} does not fit the base model {base_name} ({err}); give the "
                             "base model it was trained on (--base-model).") from err
        # A prompt ensemble's other members, under the names `_ensemble_names` gives them.
        for name, member in zip(_ensemble_names(args)[1:] if len(adapters) > 1 else [], adapters[1:]):
            path = _resolve_pretrained(member, f"--adapter {member}", "adapter_config.json")
            if os.path.isdir(path):
                member_base = _check_adapter_dir(path, "--adapter").get("base_model_name_or_path")
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


def _adapter_flags(args: argparse.Namespace) -> list[str]:
    """The --adapter values: one for train, one or more (a prompt ensemble) for evaluate and predict."""
    given = args.adapter
    adapters = [] if not given else [given] if isinstance(given, str) else list(given)
    repeated = sorted({a for a in adapters if adapters.count(a) > 1})
    if repeated:
        raise ValueError(f"--adapter {repeated[0]} is given more than once; give each adapter of an ensemble once.")
    return adapters


def _ensemble_names(args: argparse.Namespace) -> Optional[list[str]]:
    """The loaded names of a prompt ensemble's adapters ("default" for the first, "member1", ... in the order
    given), or None for a single --adapter."""
    adapters = _adapter_flags(args)
    if len(adapters) < 2:
        return None
    return ["default"] + [f"member{k}" for k in range(1, len(adapters))]


def _read_annotations(args: argparse.Namespace, path: str):
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


def _video_setup(args: argparse.Namespace, model: Any) -> tuple[Any, Optional[int], str]:
    """(video source, frames per clip for the collator, description) from the data flags."""
    from .data.video import FeatureDirectory, VideoFiles
    from .inference import DEFAULT_NUM_FRAMES

    bound = model.base_model.model.vtg_prompts.bound
    if getattr(args, "cache_dir", None):
        return _cache_setup(args, model)
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
    num_frames = args.num_frames or (None if args.fps else bound.required_num_frames or DEFAULT_NUM_FRAMES)
    image_size = args.image_size or (bound.video.extra.get("image_size") if bound.video else None) or 224
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=args.fps, image_size=image_size,
                        suffix=args.video_suffix)
    return source, num_frames, f"videos: {args.video_dir}"


def _cache_setup(args: argparse.Namespace, model: Any) -> tuple[Any, None, str]:
    """(cache source, None, description) for `--cache-dir`, after checking that the cache belongs to `model`, its
    adapter and the sampling flags given (each mismatch is named, with the fix)."""
    from .cache import CachedVideoStates

    given = [flag for flag, value in (("--features-dir", args.features_dir), ("--video-dir", args.video_dir)) if value]
    if given:
        raise ValueError(f"Give one video source: --cache-dir or {given[0]}, not both.")
    source = CachedVideoStates(args.cache_dir, model, num_frames=args.num_frames, fps=args.fps,
                               image_size=args.image_size)
    return source, None, f"cache: {args.cache_dir} (layer {source.layer})"


def _check_video_ids(source: Any, rows: Any) -> None:
    """Fail before the run, naming them, when annotated videos have no file in the source (or ids that are not plain
    file names), rather than at the first batch that needs one."""
    missing = source.missing(rows["vid"])
    if missing:
        where = getattr(source, "root", "the video source")
        raise FileNotFoundError(f"{len(missing)} annotated video(s) have no file in {where}: "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Check --features-dir / "
                                "--video-dir (and --video-suffix) against the annotation file.")


def _check_output_file(path: Optional[str], flag: str) -> None:
    """Fail before a long run when an output file could not be written afterwards."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file name.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {path}: the directory {parent} does not exist.")


def _check_output_dir(path: str, flag: str) -> None:
    """Fail before a long run when the output directory is an existing file (or lies under one)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file; give a directory (new or existing) for the outputs.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: {parent} is a file, so the directory cannot be created there.")


# ---------------------------------------------------------------- train / evaluate / predict / push
def _path_identity(path: Optional[str]) -> Optional[str]:
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


def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from .data.collate import GroundingCollator
    from .training import NonFiniteError, OutputDirInUseError, VTGTrainingArguments, train

    training_args = VTGTrainingArguments(**_settings(args, _training_field_names()))
    _check_output_dir(training_args.output_dir, "--output-dir")
    resume = training_args.resume_from_checkpoint
    if resume and resume != "latest" and not os.path.isdir(resume):  # before anything is loaded or written
        raise FileNotFoundError(f"--resume-from-checkpoint {resume}: no such checkpoint directory; give one under "
                                f"{os.path.join(training_args.output_dir, 'checkpoints')} or 'latest'.")
    # Before the model is built: a new adapter's initial prompts and heads are random draws. (set_seed does not
    # create a PartialState, which must wait for train()'s Accelerator; see below.)
    set_seed(training_args.seed)
    # The cheap checks first: a bad annotation file fails before the model is loaded. (Reading annotations draws no
    # random numbers, so the adapter's initial weights still follow the seed.)
    train_rows = _read_annotations(args, args.train_annotations)
    eval_rows = _read_annotations(args, args.eval_annotations) if args.eval_annotations else None
    config_settings = _settings(args, _config_field_names())
    if config_settings.get("predict_saliency") is None and not args.adapter:
        # Auto: a saliency head where the training data has highlight labels to train it (QVHighlights).
        config_settings["predict_saliency"] = any(row.get("relevant_clip_ids") for row in train_rows)
    model, tokenizer, base_name = _load_model(args, trainable=True, config_settings=config_settings)
    source, num_frames, described = _video_setup(args, model)
    for rows in (train_rows, eval_rows):
        if rows is not None:
            _check_video_ids(source, rows)
    collator = GroundingCollator(tokenizer, source, num_frames=num_frames, max_text_length=args.max_text_length)
    # run.json is the local record of the run (paths as given); `push` never uploads it.
    run_info = {"base_model": base_name, "train_annotations": args.train_annotations,
                "eval_annotations": args.eval_annotations, "format": args.format, "video_source": described}
    data_fingerprint = {
        "train_annotations": _path_identity(args.train_annotations),
        "eval_annotations": _path_identity(args.eval_annotations),
        "durations": _path_identity(args.durations),
        "video_source": _path_identity(args.features_dir or args.video_dir or args.cache_dir),
        "format": args.format, "features_key": args.features_key, "video_suffix": args.video_suffix,
        "num_frames": args.num_frames, "fps": args.fps, "image_size": args.image_size,
        "max_text_length": args.max_text_length, "tokenizer": args.tokenizer or base_name,
    }
    try:
        result = train(model, train_rows, collator, training_args, eval_dataset=eval_rows, run_info=run_info,
                       data_fingerprint=data_fingerprint)
    except (NonFiniteError, OutputDirInUseError) as err:
        # Every process raises the same error; one line from the main one is enough. (The lock is checked after
        # train()'s Accelerator exists, so PartialState is safe here.)
        if PartialState().is_main_process:
            print(f"peft-vtg train: error: {err}", file=sys.stderr)
        return 2
    # Only after train(): its Accelerator sets up the process group; an earlier PartialState() would not see
    # ACCELERATE_USE_CPU and would pin every process to a single-process state.
    if PartialState().is_main_process:
        if result.metrics:
            print(format_table(result.metrics))
        size = os.path.getsize(os.path.join(training_args.output_dir, "adapter_model.safetensors"))
        print(f"adapter saved to {os.path.abspath(training_args.output_dir)} ({size / 1e6:.2f} MB)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .data.collate import GroundingCollator
    from .batch_predict import ground_rows_by_video
    from .data.video import VideoFiles
    from .inference import LONG_VIDEO_FACTOR, long_video_window_seconds, predicts_saliency
    from .training import EnsembleGroundingModule, GroundingModule, grounding_metrics, predict_grounding
    from .training.evaluation import GroundingPredictions, clip_length_of

    # The cheap checks first: a bad annotation file or output path fails before the model is loaded.
    _check_output_file(args.predictions_out, "--predictions-out")
    rows = _read_annotations(args, args.annotations)
    model, tokenizer, _ = _load_model(args, trainable=False)
    source, num_frames, _ = _video_setup(args, model)
    _check_video_ids(source, rows)
    names = _ensemble_names(args)
    accelerator = Accelerator()
    # Video files longer than 1.5 of the adapter's trained windows go window by window (`ground_queries`, as
    # `predict` does); the rest, and all feature or cache inputs, through the batched single pass.
    long_rows: list[int] = []
    window = long_video_window_seconds(model, args.window_seconds, names) if isinstance(source, VideoFiles) else None
    if window is not None:
        long_rows = [i for i, row in enumerate(rows) if row["duration"] > LONG_VIDEO_FACTOR * window]
    short = rows.select([i for i in range(len(rows)) if i not in set(long_rows)]) if long_rows else rows
    predictions = GroundingPredictions(moments={}, clip_length=clip_length_of(rows))
    if len(short):
        collator = GroundingCollator(tokenizer, source, num_frames=num_frames, max_text_length=args.max_text_length)
        wrapped = GroundingModule(model) if names is None else EnsembleGroundingModule(model, names)
        module, loader = accelerator.prepare(wrapped, DataLoader(short, batch_size=args.batch_size,
                                                                 collate_fn=collator))
        predictions = predict_grounding(module, loader, accelerator, top_k=args.top_k,
                                        nms_threshold=args.nms_threshold, clip_length=clip_length_of(rows))
    if long_rows:
        selected = [rows[i] for i in long_rows]
        saliency = predicts_saliency(model, names)
        items = ground_rows_by_video(
            model, tokenizer, selected, {row["vid"]: source.path(row["vid"]) for row in selected},
            process_index=accelerator.process_index, num_processes=accelerator.num_processes,
            disable_tqdm=not accelerator.is_local_main_process, num_frames=args.num_frames, fps=args.fps,
            image_size=args.image_size, top_k=args.top_k, nms_threshold=args.nms_threshold,
            max_text_length=args.max_text_length, return_saliency=saliency, clip_length=clip_length_of(rows),
            window_seconds=args.window_seconds, window_overlap=args.window_overlap, adapter_names=names)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            items = gather_object(items)
        for qid, moments, clip_scores in items:
            predictions.moments[qid] = moments
            if clip_scores is not None:
                predictions.saliency[qid] = clip_scores
    metrics = grounding_metrics(predictions, rows)
    if accelerator.is_main_process:
        if args.predictions_out:
            # The QVHighlights submission format (peft_vtg.submission); a NaN score (a broken model) raises instead
            # of writing a file no evaluator can read.
            lines = submission_lines(predictions.moments, predictions.saliency, rows)
            write_text_atomic(args.predictions_out, "".join(lines))
        print(json.dumps(metrics, allow_nan=False) if args.json else format_table(metrics))
    return 0


def _predict_batch(args: argparse.Namespace) -> int:
    """`predict --videos ... --queries ... --output ...`: many videos and queries, resumable (`batch_predict`)."""
    from .batch_predict import predict_to_file, read_query_file, video_paths

    given = [flag for flag, value in (("--video", args.video), ("--query", args.query)) if value is not None]
    missing = [flag for flag, value in (("--videos", args.videos), ("--queries", args.queries),
                                        ("--output", args.output)) if value is None]
    if given or missing:
        fix = "missing " + ", ".join(missing) if missing else "drop " + ", ".join(given)
        raise ValueError(f"Batch prediction takes --videos DIR_OR_LIST, --queries FILE and --output FILE (not "
                         f"--video / --query); {fix}.")
    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample the videos).")
    _check_output_file(args.output, "--output")
    rows = read_query_file(args.queries, args.format)  # the cheap checks before the model is loaded
    paths = video_paths(args.videos, [row["vid"] for row in rows], args.video_suffix)
    model, tokenizer, _ = _load_model(args, trainable=False)
    counts = predict_to_file(model, tokenizer, rows, paths, args.output, disable_tqdm=args.disable_tqdm,
                             num_frames=args.num_frames, fps=args.fps, image_size=args.image_size, top_k=args.top_k,
                             nms_threshold=args.nms_threshold, return_saliency=args.saliency,
                             window_seconds=args.window_seconds, window_overlap=args.window_overlap,
                             adapter_names=_ensemble_names(args))
    print(f"wrote {counts['written']} predictions for {counts['videos']} videos to {os.path.abspath(args.output)}"
          + (f" ({counts['resumed']} already there)" if counts["resumed"] else ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import ground

    if args.videos is not None or args.queries is not None or args.output is not None:
        return _predict_batch(args)
    if args.video is None or args.query is None:
        raise ValueError("Give --video FILE and --query TEXT (one video), or --videos, --queries and --output "
                         "(batch prediction).")
    if not os.path.isfile(args.video):  # before the model is loaded
        raise FileNotFoundError(f"--video {args.video}: no such file.")
    if not args.query.strip():
        raise ValueError("--query is empty; give the sentence to ground.")
    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample the video).")
    model, tokenizer, _ = _load_model(args, trainable=False)
    result = ground(model, args.video, args.query, tokenizer=tokenizer, num_frames=args.num_frames, fps=args.fps,
                    image_size=args.image_size, top_k=args.top_k, nms_threshold=args.nms_threshold,
                    return_saliency=args.saliency, window_seconds=args.window_seconds,
                    window_overlap=args.window_overlap, adapter_names=_ensemble_names(args))
    moments = result.moments if args.saliency else result
    as_dicts = [{"start": s, "end": e, "score": p} for s, e, p in moments]
    if args.json:
        output: Any = as_dicts
        if args.saliency:
            clips = [{"start": s, "end": e, "score": p} for s, e, p in result.saliency]
            output = {"moments": as_dicts, "saliency": clips}
        print(json.dumps(output, allow_nan=False))
    else:
        for start, end, score in moments:
            print(f"{start:8.2f} s  {end:8.2f} s  score {score:.3f}")
        if args.saliency:
            print("saliency per clip (logit; higher = more of a highlight):")
            for start, end, score in result.saliency:
                print(f"{start:8.2f} s  {end:8.2f} s  {score:+.3f}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    from .cache import build_cache
    from .data.video import VideoFiles
    from .inference import DEFAULT_NUM_FRAMES
    from .injection import bind_architecture

    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample each video).")
    if args.layer < 0:
        raise ValueError(f"--layer must be >= 0 (the video layer whose input is cached), got {args.layer}.")
    durations: dict[str, float] = {}
    for path in args.annotations:  # before the model is loaded: a bad file fails fast
        for row in _read_annotations(args, path):
            durations.setdefault(row["vid"], float(row["duration"]))
    base_path = _resolve_pretrained(args.base_model, f"--base-model {args.base_model}", "config.json")
    model = AutoModel.from_pretrained(base_path)
    bound = bind_architecture(model)
    num_frames = args.num_frames or (None if args.fps else bound.required_num_frames or DEFAULT_NUM_FRAMES)
    image_size = args.image_size or (bound.video.extra.get("image_size") if bound.video else None) or 224
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=args.fps, image_size=image_size,
                        suffix=args.video_suffix)
    _check_video_ids(source, {"vid": list(durations)})
    manifest = build_cache(model, list(durations), source, args.layer, args.output_dir,
                           feature_layers=args.feature_layers, dtype=args.dtype,
                           batch_size=args.batch_size, base_model_name=args.base_model, durations=durations,
                           num_workers=args.num_workers, disable_tqdm=args.disable_tqdm)
    from accelerate import PartialState  # only after build_cache's Accelerator (see _train)

    if PartialState().is_main_process:
        size = sum(os.path.getsize(os.path.join(args.output_dir, name)) for name in os.listdir(args.output_dir))
        if manifest["layer"] < manifest["num_layers"]:
            what = f"hidden states entering video layer {manifest['layer']} of {manifest['num_layers']}"
        else:
            layers = manifest.get("feature_layers") or 1
            what = (f"final outputs of the last {layers} video layers" if layers > 1 else "final video states") + (
                f", {manifest['tokens']} token(s) per frame")
        print(f"cached {len(manifest['videos'])} videos ({what}, {manifest['dtype']}) in "
              f"{os.path.abspath(args.output_dir)} ({size / 1e6:.2f} MB)")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    from .data.video import VideoFiles
    from .extract import MOMENT_DETR_FPS, extract_features
    from .inference import DEFAULT_NUM_FRAMES
    from .injection import bind_architecture

    if args.num_frames is not None and args.fps is not None:
        raise ValueError("Give at most one of --num-frames and --fps (how to sample each video).")
    fps = args.fps
    if args.format == "moment_detr":
        if args.num_frames is not None or (fps is not None and fps != MOMENT_DETR_FPS):
            raise ValueError(f"--format moment_detr writes one feature per 2-second clip (--fps {MOMENT_DETR_FPS}); "
                             "drop --num-frames / --fps.")
        fps = MOMENT_DETR_FPS
    if not os.path.isdir(args.video_dir):
        raise FileNotFoundError(f"--video-dir {args.video_dir}: no such directory.")
    vids = sorted(name[: -len(args.video_suffix)] for name in os.listdir(args.video_dir)
                  if name.endswith(args.video_suffix))
    if not vids:
        raise ValueError(f"--video-dir {args.video_dir} has no {args.video_suffix} files (see --video-suffix).")
    base_path = _resolve_pretrained(args.base_model, f"--base-model {args.base_model}", "config.json")
    model = AutoModel.from_pretrained(base_path)
    bound = bind_architecture(model)
    num_frames = args.num_frames or (None if fps else bound.required_num_frames or DEFAULT_NUM_FRAMES)
    image_size = args.image_size or (bound.video.extra.get("image_size") if bound.video else None) or 224
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=fps, image_size=image_size,
                        suffix=args.video_suffix)
    manifest = extract_features(model, vids, source, args.output_dir, file_format=args.format, dtype=args.dtype,
                                base_model_name=args.base_model, disable_tqdm=args.disable_tqdm)
    print(f"features of {len(manifest['videos'])} videos ({manifest['feature_size']} values per frame, "
          f"{args.format}) in {os.path.abspath(args.output_dir)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_adapter

    url = push_adapter(args.adapter, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.adapter} to {args.repo_id}: {url}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_main

    _check_output_dir(args.output_dir, "--output-dir")
    return demo_main(args)


def _load_config_file(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: accept a byte-order mark (Windows editors write one)
            settings = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"--config {path} is not a JSON file of settings ({err}); write one JSON object, e.g. "
                         '{"num_video_tokens": 8, "learning_rate": 0.001}, saved as UTF-8.') from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object of settings.")
    known = set(_config_field_names()) | set(_training_field_names())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{path} has unknown settings {unknown}; see `peft-vtg train --help` for the names "
                         "(underscores, e.g. num_video_tokens).")
    return settings


def build_parser() -> argparse.ArgumentParser:
    from .training.arguments import VTGTrainingArguments
    from .vtg_prompt.config import VTGPromptConfig

    parser = argparse.ArgumentParser(prog="peft-vtg", description="Parameter-efficient video temporal grounding.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="prompt-tune a base model for grounding",
        description="Prompt-tune a base model (video + text prompts and a grounding head) on an annotation file. "
        "Runs on one process or, under `accelerate launch --num_processes N -m peft_vtg train ...`, with DDP. The "
        "output directory receives the adapter (best on --metric-for-best-model when --eval-annotations is given), "
        "metrics.json and run.json.",
    )
    train.add_argument("--config", default=None, help="JSON file of settings (adapter and training fields, "
                       "underscore names); flags given on the command line win")
    _add_model_arguments(train, adapter_required=False)
    _add_data_arguments(train, "--train-annotations", required=True)
    train.add_argument("--eval-annotations", default=None, help="annotation file evaluated during training")
    _add_fields(train.add_argument_group("adapter (VTGPromptConfig)"), VTGPromptConfig, _config_field_names())
    _add_fields(train.add_argument_group("training (VTGTrainingArguments)"), VTGTrainingArguments,
                _training_field_names())
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of an adapter on an annotation file",
                                   description="Evaluate an adapter: R@1/R@5 at IoU 0.1/0.3/0.5/0.7 and mIoU.")
    _add_model_arguments(evaluate, adapter_required=True, ensemble=True)
    _add_data_arguments(evaluate, "--annotations", required=True)
    evaluate.add_argument("--batch-size", type=_positive_int, default=16, help="pairs per batch (default: 16)")
    evaluate.add_argument("--top-k", type=_positive_int, default=10,
                          help="moments per query (default: 10, as Moment-DETR submissions; R@1 and R@5 read the "
                          "first 1 and 5, which do not depend on it)")
    evaluate.add_argument("--nms-threshold", type=_optional(_iou), default=0.5, help="NMS IoU (default: 0.5)")
    evaluate.add_argument("--predictions-out", default=None,
                          help="also write the predictions in QVHighlights' submission format (JSON lines: qid, "
                          "query, vid, pred_relevant_windows, pred_saliency_scores), which `score` and Moment-DETR's "
                          "evaluator read")
    evaluate.add_argument("--window-seconds", type=_positive_float, default=None,
                          help="with --video-dir: a video longer than 1.5 x this is grounded window by window, as "
                          "`predict` does (default: the window the adapter was trained on, recorded in its config)")
    evaluate.add_argument("--window-overlap", type=float, default=0.5,
                          help="fraction of a window shared with the next one, in [0, 1) (default: 0.5)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser(
        "predict", help="moments of a query in a video file, or of many queries in many videos",
        description="Print the moments (start and end in seconds, score) that a query describes in a video file, best "
        "first (--video, --query). Batch mode (--videos, --queries, --output): every query of a JSON-lines file "
        "{\"qid\", \"vid\", \"query\"} grounded in its video, each video decoded and encoded once for all of its "
        "queries, written as QVHighlights submission lines (what `score` reads); rerunning after an interruption "
        "skips the queries already written. Videos of any length: a video longer than 1.5 trained windows is "
        "grounded window by window.")
    _add_model_arguments(predict, adapter_required=True, ensemble=True)
    predict.add_argument("--video", default=None, help="video file (decoded with PyAV)")
    predict.add_argument("--query", default=None, help="the sentence to ground")
    predict.add_argument("--videos", default=None, help="batch: a directory of <vid><suffix> video files, or a text "
                         "file listing video paths (vid = file name without extension)")
    predict.add_argument("--queries", default=None, help="batch: JSON lines {\"qid\", \"vid\", \"query\"} (or an "
                         "annotation file, see --format)")
    predict.add_argument("--output", default=None, help="batch: where the predictions go (JSON lines; resumed)")
    predict.add_argument("--video-suffix", default=".mp4", help="batch: video file suffix (default: .mp4)")
    predict.add_argument("--format", default=None, choices=["jsonl", "charades_sta", "activitynet_captions", "tacos",
                                                           "qvhighlights"],
                         help="batch: format of --queries (default: JSON lines of qid, vid, query)")
    predict.add_argument("--disable-tqdm", action="store_true", help="batch: no progress bar")
    predict.add_argument("--num-frames", type=_positive_int, default=None, help="frames sampled (default: the "
                         "encoder's fixed count, else 32; batch: the adapter's trained frames per video)")
    predict.add_argument("--fps", type=_positive_float, default=None, help="sample at this rate (frames per second) "
                         "instead of --num-frames")
    predict.add_argument("--image-size", type=_positive_int, default=None, help="frame size in pixels (default: the "
                         "encoder's)")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="moments to print (default: 5)")
    predict.add_argument("--nms-threshold", type=_optional(_iou), default=0.5, help="NMS IoU (default: 0.5)")
    predict.add_argument("--window-seconds", type=_positive_float, default=None,
                         help="a video longer than 1.5 x this is grounded window by window, with memory bounded by "
                         "a window (default: the window the adapter was trained on, recorded in its config)")
    predict.add_argument("--window-overlap", type=float, default=0.5,
                         help="fraction of a window shared with the next one, in [0, 1) (default: 0.5)")
    predict.add_argument("--saliency", action="store_true",
                         help="also print the highlight score of every 2-second clip (adapters trained with a "
                         "saliency head); with --json the output becomes {\"moments\": [...], \"saliency\": [...]}")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.set_defaults(run=_predict)

    extract = commands.add_parser(
        "extract", help="per-frame features of your own videos, for --features-dir",
        description="Run the frozen video encoder of a base model over every video file of a directory and write "
        "per-video per-frame features (what the grounding head reads; equal to encode_video) with a manifest of how "
        "they were made: <vid>.npy by default, .safetensors / .h5 on request, or --format moment_detr: <vid>.npz "
        "with a 'features' array at one row per 2-second clip, as Moment-DETR-family tools read them. Resumable.")
    extract.add_argument("--base-model", required=True, help="base model path or Hub id (AutoModel.from_pretrained)")
    extract.add_argument("--video-dir", required=True, help="directory of video files <vid><suffix>")
    extract.add_argument("--video-suffix", default=".mp4", help="video file suffix (default: .mp4)")
    extract.add_argument("--num-frames", type=_positive_int, default=None, help="frames sampled per video (default: "
                         "the encoder's fixed count, else 32)")
    extract.add_argument("--fps", type=_positive_float, default=None, help="sample at this rate (frames per second) "
                         "instead of --num-frames")
    extract.add_argument("--image-size", type=_positive_int, default=None, help="frame size in pixels (default: the "
                         "encoder's)")
    extract.add_argument("--output-dir", required=True, help="feature directory (an unfinished one is resumed)")
    extract.add_argument("--format", default="npy", choices=["npy", "safetensors", "h5", "moment_detr"],
                         help="file format (default: npy)")
    extract.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="storage dtype (default: fp32)")
    extract.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    extract.set_defaults(run=_extract)

    cache = commands.add_parser(
        "cache", help="store the frozen video encoder's hidden states at a layer, once per video",
        description="Run the frozen video encoder of a base model once over the videos of annotation files, up to "
        "video layer --layer k, and store the hidden states entering layer k (frames, tokens, dim) per video in "
        "safetensors shards with a manifest. `train` / `evaluate --cache-dir` then run only layers k and above "
        "(video prompts must start at layer >= k; k = the number of layers stores the final states, for adapters "
        "without video prompts: only the tokens the encoder pools, e.g. CLIP's CLS, and with --feature-layers m "
        "those of the last m layers, for heads with --head-video-layers m). Resumable: rerun the same command after an interruption. Several processes: "
        "`accelerate launch --num_processes N -m peft_vtg cache ...`.",
    )
    cache.add_argument("--base-model", required=True, help="base model path or Hub id (AutoModel.from_pretrained)")
    cache.add_argument("--annotations", required=True, nargs="+", metavar="FILE",
                       help="annotation file(s) naming the videos (e.g. the train and the test split)")
    cache.add_argument("--format", default=None, choices=["jsonl", "charades_sta", "activitynet_captions", "tacos",
                                                         "qvhighlights"],
                       help="annotation format (default: detected from the file)")
    cache.add_argument("--durations", default=None, help="Charades-STA: the Charades csv with video lengths")
    cache.add_argument("--strict", action="store_true", help="raise on the first bad annotation row")
    cache.add_argument("--video-dir", required=True, help="directory of video files <vid><suffix>, decoded with PyAV")
    cache.add_argument("--video-suffix", default=".mp4", help="video file suffix (default: .mp4)")
    cache.add_argument("--num-frames", type=_positive_int, default=None, help="frames sampled per video (default: "
                       "the encoder's fixed count, else 32)")
    cache.add_argument("--fps", type=_positive_float, default=None, help="sample at this rate (frames per second) "
                       "instead of --num-frames")
    cache.add_argument("--image-size", type=_positive_int, default=None, help="frame size in pixels (default: the "
                       "encoder's)")
    cache.add_argument("--layer", type=int, required=True, help="k: cache the hidden states entering video layer k "
                       "(0 = after the embeddings; the number of layers = the final states)")
    cache.add_argument("--feature-layers", type=_positive_int, default=1,
                       help="with --layer L (final states): store the outputs of the last m layers, for adapters "
                       "whose head reads several (--head-video-layers m) (default: 1)")
    cache.add_argument("--output-dir", required=True, help="cache directory (an unfinished cache there is resumed)")
    cache.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                       help="storage dtype (default: fp16; fp32 reproduces the uncached path exactly)")
    cache.add_argument("--batch-size", type=_positive_int, default=8, help="videos per forward and per shard "
                       "(default: 8); memory holds one batch")
    cache.add_argument("--num-workers", type=int, default=0, help="processes decoding videos ahead (default: 0)")
    cache.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    cache.set_defaults(run=_cache)

    push = commands.add_parser("push", help="upload an adapter with a model card to the Hub",
                               description="Write a model card (base model, config, data, metrics, how to load) "
                               "into the adapter directory and upload it to a Hub repository.")
    push.add_argument("--adapter", required=True, help="adapter directory")
    push.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/xclip-charades-vtg")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.set_defaults(run=_push)

    demo = commands.add_parser(
        "demo", help="the embedded default: prompt-tune the shipped backbone on SynthVTG and evaluate",
        description="Prompt-tune the shipped SynthVTG backbone (a small pre-trained CLIP) with VTG prompts and a "
        "grounding head on SynthVTG's train split, keep the best adapter on val, reload it and evaluate on test. "
        "Prints the metrics, the trainable parameters (count and share of the base) and the adapter size. Offline; "
        "a few minutes on 2 CPU cores with the defaults.",
    )
    demo.add_argument("--output-dir", default="vtg-demo-adapter", help="where the adapter is saved")
    # The same defaults as peft_vtg.demo.run_demo (a test keeps them equal; importing it here would slow --help).
    demo.add_argument("--train-videos", type=_positive_int, default=1500, help="SynthVTG train videos (2 queries each)")
    demo.add_argument("--val-videos", type=_positive_int, default=150, help="validation videos")
    demo.add_argument("--test-videos", type=_positive_int, default=300, help="test videos")
    demo.add_argument("--max-steps", type=_positive_int, default=400, help="optimizer steps")
    demo.add_argument("--batch-size", type=_positive_int, default=32, help="training pairs per step")
    demo.add_argument("--learning-rate", type=_positive_float, default=3e-2, help="peak learning rate of the prompts")
    demo.add_argument("--head-learning-rate", type=_positive_float, default=3e-3, help="peak learning rate of the head")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument("--domain", default="plain", choices=("cluttered", "plain"),
                      help="how the videos look: plain (as in the backbone's pre-training) or cluttered (a domain "
                           "shift: busy coloured backgrounds, stronger noise)")
    demo.add_argument("--highlights", action="store_true",
                      help="also train a saliency head on SynthVTG's highlight labels and report highlight detection "
                      "(HL-mAP, HL-Hit1); it costs 1-3 points of R1@0.5 at this budget (BENCHMARKS.md)")
    demo.add_argument("--json", action="store_true", help="print only the test metrics, as one JSON object")
    demo.set_defaults(run=_demo)
    score = commands.add_parser(
        "score",
        help="R@n IoU@m, mIoU, mAP and highlight metrics (percent) of predictions against ground truth.",
        description="Score moment (and highlight) predictions: R@1/R@5 at IoU 0.1/0.3/0.5/0.7 and mIoU, and "
        "Moment-DETR's standalone_eval keys (MR-full-mAP, MR-full-mAP@0.5/0.75, MR-short/middle/long-mAP, "
        "MR-full-R1@0.5/0.7, and with highlight labels HL-min-Fair/Good/VeryGood-mAP/Hit1). Predictions: the "
        "QVHighlights submission format that Moment-DETR and lighthouse write, JSON lines {\"qid\", "
        "\"pred_relevant_windows\": [[start, end, score], ...] (scores optional: then ranked as listed), "
        "\"pred_saliency_scores\": [one per 2-s clip] (optional)}; peft_vtg's older \"pred_windows\" works too. "
        "Ground truth: JSON lines {\"qid\", \"duration\", \"windows\"}, QVHighlights files "
        "(highlight_val_release.jsonl, highlight_test_with_gt.jsonl), or a native annotation file (Charades-STA .txt with --durations, ActivityNet "
        "Captions / TACoS .json); native files get qids '<vid>_<k>' (k = the pair's index within its video). "
        "Predictions for rows the ground-truth reader drops are set aside with a note.",
    )
    score.add_argument("--predictions", required=True, help="predictions, JSON lines")
    score.add_argument("--ground-truth", required=True, help="ground truth: JSON lines or a native annotation file")
    score.add_argument("--format", default=None,
                       choices=["jsonl", "charades_sta", "activitynet_captions", "tacos", "qvhighlights"],
                       help="ground-truth format (default: detected from the file)")
    score.add_argument("--durations", default=None, help="Charades-STA only: the Charades csv with video lengths")
    score.add_argument("--nms-threshold", type=_iou, default=None,
                       help="apply temporal NMS at this IoU before taking the top n (default: none)")
    score.add_argument("--rank-as-listed", action="store_true",
                       help="R@n takes the windows in the order given instead of ranking them by score (the first "
                       "listed is the top-1): then R1@m equals Moment-DETR's MR-full-R1@m")
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    score.set_defaults(run=_score)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.file_settings = _load_config_file(getattr(args, "config", None))
        return args.run(args)
    except (ValueError, OSError, KeyError) as err:
        # Bad input (files, flags, settings): one line on stderr, no traceback. OSError covers unreadable paths
        # (a directory given as a file, permissions) and the Hub client's network errors.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
        print(f"peft-vtg {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
