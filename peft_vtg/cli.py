"""The `peft-vtg` command line (also `python -m peft_vtg`, and `accelerate launch -m peft_vtg train ...`).

Subcommands:

- `train`: prompt-tune a base model on an annotation file with a video source; every `VTGPromptConfig` and
  `VTGTrainingArguments` field is a flag, and `--config FILE.json` supplies any of them (flags win).
- `evaluate`: the metrics of an adapter on an annotation file (table or `--json`).
- `predict`: moments of a query in a video file, in seconds.
- `push`: upload an adapter with a model card to the Hugging Face Hub.
- `score`: R@n IoU@m and mIoU of a predictions file against ground truth.
- `demo`: the embedded default, prompt-tuning the shipped backbone on SynthVTG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
import warnings
from collections.abc import Sequence
from typing import Any, Optional

from .data.annotations import iter_json_lines, load_annotations
from .metrics import evaluate_moments, format_table


def read_predictions(path: str) -> dict[str, list[list[float]]]:
    """JSON lines `{"qid": ..., "pred_windows": [[start_s, end_s, score], ...]}` -> qid (as a string) -> windows."""
    predictions: dict[str, list[list[float]]] = {}
    duplicates = []
    for number, entry in iter_json_lines(path):
        if "qid" not in entry or "pred_windows" not in entry:
            raise ValueError(f"{path}, line {number}: needs 'qid' and 'pred_windows', got keys {sorted(entry)}.")
        windows = entry["pred_windows"]
        if not isinstance(windows, list) or not all(isinstance(w, list) and len(w) in (2, 3) for w in windows):
            raise ValueError(f"{path}, line {number}: 'pred_windows' must be a list of [start, end, score].")
        qid = str(entry["qid"])
        if qid in predictions:
            duplicates.append(qid)
        predictions[qid] = windows
    if duplicates:
        raise ValueError(f"{path}: duplicate qids {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''} "
                         f"({len(duplicates)}); give each query one line.")
    return predictions


def _score(args: argparse.Namespace) -> int:
    ground_truth = _read_annotations(args, args.ground_truth)
    predictions = read_predictions(args.predictions)
    metrics = evaluate_moments(
        predictions,
        {row["qid"]: row["windows"] for row in ground_truth},
        nms_threshold=args.nms_threshold,
    )
    print(json.dumps(metrics) if args.json else format_table(metrics))
    return 0


# ---------------------------------------------------------------- dataclass fields as flags
# Filled in automatically when an adapter is created, or PEFT bookkeeping: not user settings.
_AUTO_CONFIG_FIELDS = {"num_virtual_tokens", "base_architecture", "video_hidden_size", "text_hidden_size",
                       "video_feature_size", "text_feature_size"}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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
    group.add_argument("--num-frames", type=int, default=None, help="frames sampled per video, or feature bins "
                       "(default: the encoder's fixed count, else 32 for videos, native length for features)")
    group.add_argument("--fps", type=float, default=None, help="sample videos at this rate instead of --num-frames")
    group.add_argument("--image-size", type=int, default=None, help="frame size (default: the encoder's)")
    group.add_argument("--max-text-length", type=int, default=None, help="truncate queries to this many tokens")


def _add_model_arguments(parser: argparse.ArgumentParser, adapter_required: bool) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--adapter", required=adapter_required, default=None,
                       help="adapter directory (or Hub id)" + ("" if adapter_required else
                                                              " to continue training; default: a new adapter"))
    group.add_argument("--base-model", default=None, help="base model path or Hub id for AutoModel.from_pretrained "
                       "(default: the one recorded in the adapter)")
    group.add_argument("--tokenizer", default=None, help="tokenizer path or id (default: the base model's)")


def _load_model(args: argparse.Namespace, trainable: bool, config_settings: Optional[dict] = None):
    from peft import PeftConfig, PeftModel, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from .vtg_prompt.config import VTGPromptConfig

    base_name = args.base_model
    if base_name is None and args.adapter:
        base_name = PeftConfig.from_pretrained(args.adapter).base_model_name_or_path
    if not base_name:
        raise ValueError("Give --base-model (a path or Hub id); the adapter does not record one.")
    if args.adapter and config_settings:
        raise ValueError(
            f"Adapter settings {sorted(config_settings)} cannot change the existing adapter {args.adapter}; drop them "
            "to continue training it, or leave out --adapter to create a new one."
        )
    base = AutoModel.from_pretrained(base_name)
    if args.adapter:
        model = PeftModel.from_pretrained(base, args.adapter, is_trainable=trainable)
    else:
        model = get_peft_model(base, VTGPromptConfig(**(config_settings or {})))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or base_name)
    return model, tokenizer, base_name


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
    if bool(args.features_dir) == bool(args.video_dir):
        raise ValueError("Give exactly one of --features-dir (pre-extracted features) and --video-dir (video files).")
    if args.features_dir:
        return (FeatureDirectory(args.features_dir, key=args.features_key), args.num_frames,
                f"features: {args.features_dir}")
    num_frames = args.num_frames or (None if args.fps else bound.required_num_frames or DEFAULT_NUM_FRAMES)
    image_size = args.image_size or (bound.video.extra.get("image_size") if bound.video else None) or 224
    source = VideoFiles(args.video_dir, num_frames=num_frames, fps=args.fps, image_size=image_size,
                        suffix=args.video_suffix)
    return source, num_frames, f"videos: {args.video_dir}"


# ---------------------------------------------------------------- train / evaluate / predict / push
def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .data.collate import GroundingCollator
    from .training import VTGTrainingArguments, train

    training_args = VTGTrainingArguments(**_settings(args, _training_field_names()))
    model, tokenizer, base_name = _load_model(args, trainable=True,
                                              config_settings=_settings(args, _config_field_names()))
    source, num_frames, described = _video_setup(args, model)
    collator = GroundingCollator(tokenizer, source, num_frames=num_frames, max_text_length=args.max_text_length)
    train_rows = _read_annotations(args, args.train_annotations)
    eval_rows = _read_annotations(args, args.eval_annotations) if args.eval_annotations else None
    result = train(model, train_rows, collator, training_args, eval_dataset=eval_rows)
    # Only after train(): its Accelerator sets up the process group; an earlier PartialState() would not see
    # ACCELERATE_USE_CPU and would pin every process to a single-process state.
    if PartialState().is_main_process:
        run = {"base_model": base_name, "train_annotations": args.train_annotations,
               "eval_annotations": args.eval_annotations, "format": args.format, "video_source": described,
               "training_arguments": dataclasses.asdict(training_args)}
        with open(os.path.join(training_args.output_dir, "run.json"), "w") as handle:
            json.dump(run, handle, indent=2)
        if result.metrics:
            print(format_table(result.metrics))
        size = os.path.getsize(os.path.join(training_args.output_dir, "adapter_model.safetensors"))
        print(f"adapter saved to {os.path.abspath(training_args.output_dir)} ({size / 1e6:.2f} MB)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .data.collate import GroundingCollator
    from .training import GroundingModule, evaluate_grounding

    model, tokenizer, _ = _load_model(args, trainable=False)
    source, num_frames, _ = _video_setup(args, model)
    collator = GroundingCollator(tokenizer, source, num_frames=num_frames, max_text_length=args.max_text_length)
    rows = _read_annotations(args, args.annotations)
    accelerator = Accelerator()
    module, loader = accelerator.prepare(GroundingModule(model), DataLoader(rows, batch_size=args.batch_size,
                                                                            collate_fn=collator))
    metrics, predictions = evaluate_grounding(module, loader, rows, accelerator, top_k=args.top_k,
                                              nms_threshold=args.nms_threshold)
    if accelerator.is_main_process:
        if args.predictions_out:
            with open(args.predictions_out, "w") as handle:
                for qid, moments in predictions.items():
                    handle.write(json.dumps({"qid": qid, "pred_windows": [list(m) for m in moments]}) + "\n")
        print(json.dumps(metrics) if args.json else format_table(metrics))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import ground

    model, tokenizer, _ = _load_model(args, trainable=False)
    moments = ground(model, args.video, args.query, tokenizer=tokenizer, num_frames=args.num_frames, fps=args.fps,
                     image_size=args.image_size, top_k=args.top_k, nms_threshold=args.nms_threshold)
    if args.json:
        print(json.dumps([{"start": s, "end": e, "score": p} for s, e, p in moments]))
    else:
        for start, end, score in moments:
            print(f"{start:8.2f} s  {end:8.2f} s  score {score:.3f}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_adapter

    url = push_adapter(args.adapter, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.adapter} to {args.repo_id}: {url}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_main

    return demo_main(args)


def _load_config_file(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
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
    _add_model_arguments(evaluate, adapter_required=True)
    _add_data_arguments(evaluate, "--annotations", required=True)
    evaluate.add_argument("--batch-size", type=int, default=16, help="pairs per batch (default: 16)")
    evaluate.add_argument("--top-k", type=int, default=5, help="moments per query (default: 5)")
    evaluate.add_argument("--nms-threshold", type=_optional(float), default=0.5, help="NMS IoU (default: 0.5)")
    evaluate.add_argument("--predictions-out", default=None, help="also write the predictions as JSON lines")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="moments of a query in a video file",
                                  description="Print the moments (start and end in seconds, score) that a query "
                                  "describes in a video file, best first.")
    _add_model_arguments(predict, adapter_required=True)
    predict.add_argument("--video", required=True, help="video file (decoded with PyAV)")
    predict.add_argument("--query", required=True, help="the sentence to ground")
    predict.add_argument("--num-frames", type=int, default=None, help="frames sampled (default: the encoder's "
                         "fixed count, else 32)")
    predict.add_argument("--fps", type=float, default=None, help="sample at this rate instead of --num-frames")
    predict.add_argument("--image-size", type=int, default=None, help="frame size (default: the encoder's)")
    predict.add_argument("--top-k", type=int, default=5, help="moments to print (default: 5)")
    predict.add_argument("--nms-threshold", type=_optional(float), default=0.5, help="NMS IoU (default: 0.5)")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.set_defaults(run=_predict)

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
    demo.add_argument("--train-videos", type=int, default=1500, help="SynthVTG train videos (2 queries each)")
    demo.add_argument("--val-videos", type=int, default=150, help="validation videos")
    demo.add_argument("--test-videos", type=int, default=300, help="test videos")
    demo.add_argument("--max-steps", type=int, default=400, help="optimizer steps")
    demo.add_argument("--batch-size", type=int, default=32, help="training pairs per step")
    demo.add_argument("--learning-rate", type=float, default=3e-2, help="peak learning rate of the prompts")
    demo.add_argument("--head-learning-rate", type=float, default=3e-3, help="peak learning rate of the head")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument("--domain", default="plain", choices=("cluttered", "plain"),
                      help="how the videos look: plain (as in the backbone's pre-training) or cluttered (a domain "
                           "shift: busy coloured backgrounds, stronger noise)")
    demo.add_argument("--json", action="store_true", help="print only the test metrics, as one JSON object")
    demo.set_defaults(run=_demo)
    score = commands.add_parser(
        "score",
        help="R@1/R@5 at IoU 0.1/0.3/0.5/0.7 and mIoU (percent) of predictions against ground truth.",
        description="Score moment predictions. Predictions: JSON lines {\"qid\", \"pred_windows\": [[start, end, "
        "score], ...]} in seconds. Ground truth: JSON lines {\"qid\", \"duration\", \"windows\": [[start, end], ...]}, "
        "or a native annotation file (Charades-STA .txt with --durations, ActivityNet Captions / TACoS .json, "
        "QVHighlights .jsonl); native files get qids '<vid>_<k>' (k = the pair's index within its video).",
    )
    score.add_argument("--predictions", required=True, help="predictions, JSON lines")
    score.add_argument("--ground-truth", required=True, help="ground truth: JSON lines or a native annotation file")
    score.add_argument("--format", default=None,
                       choices=["jsonl", "charades_sta", "activitynet_captions", "tacos", "qvhighlights"],
                       help="ground-truth format (default: detected from the file)")
    score.add_argument("--durations", default=None, help="Charades-STA only: the Charades csv with video lengths")
    score.add_argument("--nms-threshold", type=float, default=None,
                       help="apply temporal NMS at this IoU before taking the top n (default: none)")
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    score.set_defaults(run=_score)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.file_settings = _load_config_file(getattr(args, "config", None))
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"peft-vtg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
