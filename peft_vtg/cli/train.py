"""`peft-vtg train`: prompt-tune a base model for grounding on an annotation file."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from ..metrics import format_table
from .common import (
    add_data_arguments,
    add_model_arguments,
    check_output_dir,
    check_queries_fit,
    check_video_ids,
    config_field_names,
    dataclass_flags,
    fraction,
    load_model,
    path_identity,
    read_annotations,
    settings_from,
    training_field_names,
    video_setup,
)


def _check_output_apart(output_dir: str, args: argparse.Namespace) -> None:
    """Refuse an --output-dir that is one of the run's inputs: the adapter written there would replace the adapter
    being continued (--adapter), or land among a base model's or a dataset's files."""
    if not os.path.isdir(output_dir):
        return
    for flag in ("--adapter", "--base-model", "--features-dir", "--video-dir", "--cache-dir"):
        given = getattr(args, flag[2:].replace("-", "_"), None)
        if isinstance(given, str) and os.path.isdir(given) and os.path.samefile(given, output_dir):
            raise ValueError(f"--output-dir {output_dir} is the {flag} directory; the trained adapter, checkpoints "
                             f"and metrics would be written into it. Give another --output-dir.")


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from ..data.collate import GroundingCollator
    from ..training import NonFiniteError, OutputDirInUseError, VTGTrainingArguments, release_process_group, train

    training_args = VTGTrainingArguments(**settings_from(args, training_field_names()))
    check_output_dir(training_args.output_dir, "--output-dir")
    _check_output_apart(training_args.output_dir, args)
    if args.long_video_absent_fraction is not None and not args.long_video_windows:
        raise ValueError("--long-video-absent-fraction applies to the windows of --long-video-windows, which is 0 "
                         "(whole videos only); give --long-video-windows FRACTION too, or drop it.")
    if args.long_video_absent_fraction is None:
        args.long_video_absent_fraction = 0.5
    resume = training_args.resume_from_checkpoint
    if resume and resume != "latest" and not os.path.isdir(resume):  # before anything is loaded or written
        raise FileNotFoundError(f"--resume-from-checkpoint {resume}: no such checkpoint directory; give one under "
                                f"{os.path.join(training_args.output_dir, 'checkpoints')} or 'latest'.")
    # Before the model is built: a new adapter's initial prompts and heads are random draws. (set_seed does not
    # create a PartialState, which must wait for train()'s Accelerator; see below.)
    set_seed(training_args.seed)
    # The cheap checks first: a bad annotation file fails before the model is loaded. (Reading annotations draws no
    # random numbers, so the adapter's initial weights still follow the seed.)
    train_rows = read_annotations(args, args.train_annotations)
    eval_rows = read_annotations(args, args.eval_annotations) if args.eval_annotations else None
    config_settings = settings_from(args, config_field_names())
    if config_settings.get("predict_saliency") is None and not args.adapter:
        # Auto: a saliency head where the training data has highlight labels to train it (QVHighlights).
        config_settings["predict_saliency"] = any(row.get("relevant_clip_ids") for row in train_rows)
    model, tokenizer, base_name = load_model(args, trainable=True, config_settings=config_settings)
    source, num_frames, described = video_setup(args, model)
    for rows in (train_rows, eval_rows):
        if rows is not None:
            check_video_ids(source, rows)
            check_queries_fit(args, model, tokenizer, [f"qid {qid}" for qid in rows["qid"]], rows["query"])
    if args.long_video_windows:
        collator = long_video_collator(args, tokenizer, source, num_frames, train_rows, training_args.seed)
    else:
        collator = GroundingCollator(tokenizer, source, num_frames=num_frames, max_text_length=args.max_text_length)
    # run.json is the local record of the run (paths as given); `push` never uploads it.
    run_info = {"base_model": base_name, "train_annotations": args.train_annotations,
                "eval_annotations": args.eval_annotations, "format": args.format, "video_source": described}
    data_fingerprint = {
        "train_annotations": path_identity(args.train_annotations),
        "eval_annotations": path_identity(args.eval_annotations),
        "durations": path_identity(args.durations),
        "video_source": path_identity(args.features_dir or args.video_dir or args.cache_dir),
        "format": args.format, "features_key": args.features_key, "video_suffix": args.video_suffix,
        "num_frames": args.num_frames, "fps": args.fps, "image_size": args.image_size,
        "max_text_length": args.max_text_length, "tokenizer": args.tokenizer or base_name,
        "long_video_windows": args.long_video_windows, "long_video_absent_fraction": args.long_video_absent_fraction,
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
    del model, result
    release_process_group()
    return 0


def long_video_collator(args: argparse.Namespace, tokenizer: Any, source: Any, num_frames: Optional[int],
                        train_rows: Any, seed: int) -> Any:
    """`--long-video-windows`: a `LongVideoWindowCollator` over the training videos, each read at the window's
    rate (frames per window / the median duration), which is the rate `ground` samples long videos at."""
    from ..data.collate import median_duration
    from ..data.video import VideoFiles
    from ..data.windows import LongVideoWindowCollator

    if args.cache_dir:
        raise ValueError("--long-video-windows cuts windows from whole videos; a --cache-dir holds a fixed number of "
                         "frames per video. Train from --video-dir or --features-dir.")
    seconds = median_duration(train_rows)
    if num_frames is None:  # --fps: the window holds what that rate gives over the median duration
        num_frames = max(1, int(round(seconds * args.fps))) if args.fps else None
    if num_frames is None:
        raise ValueError("--long-video-windows needs the frames per window: give --num-frames (or --fps).")
    if isinstance(source, VideoFiles):
        # Whole videos at the window's rate, not at a fixed count each (a long video would get sparser frames).
        source = VideoFiles(args.video_dir, fps=num_frames / seconds, suffix=args.video_suffix, **source.preprocess)
    return LongVideoWindowCollator(tokenizer, source, train_rows, window_frames=num_frames, window_seconds=seconds,
                                   window_fraction=args.long_video_windows,
                                   absent_fraction=args.long_video_absent_fraction,
                                   max_text_length=args.max_text_length, seed=seed)


def add_parser(commands: Any) -> None:
    """Add `train` to the `peft-vtg` subcommands."""
    from ..training.arguments import VTGTrainingArguments
    from ..vtg_prompt.config import VTGPromptConfig

    # The flags other than the dataclasses' come first, as a parent parser, so --help lists them first.
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--config", default=None, help="JSON file of settings (adapter and training fields, "
                     "underscore names); flags given on the command line win")
    add_model_arguments(own, adapter_required=False)
    add_data_arguments(own, "--train-annotations", required=True)
    own.add_argument("--eval-annotations", default=None, help="annotation file evaluated during training")
    own.add_argument("--long-video-windows", type=fraction("--long-video-windows"), default=0.0, metavar="FRACTION",
                     help="train for long videos: this fraction of the rows see a window of the training videos put "
                     "one after another instead of their whole video, as `predict` grounds long videos "
                     "(LongVideoWindowCollator; default 0: whole videos only). Needs --num-frames or --fps")
    own.add_argument("--long-video-absent-fraction", type=fraction("--long-video-absent-fraction"), default=None,
                     metavar="FRACTION", help="of those windows, the fraction that miss the row's moment and are "
                     "trained as 'not here' (default 0.5)")
    train = commands.add_parser(
        "train", help="prompt-tune a base model for grounding",
        description="Prompt-tune a base model (video + text prompts and a grounding head) on an annotation file. "
        "Runs on one process or, under `accelerate launch --num_processes N -m peft_vtg train ...`, with DDP. The "
        "output directory receives the adapter (best on --metric-for-best-model when --eval-annotations is given), "
        "metrics.json and run.json. Every VTGPromptConfig and VTGTrainingArguments field is a flag (--field-name or "
        "--field_name); --config FILE.json supplies any of them.",
        parents=[own, dataclass_flags(VTGPromptConfig, config_field_names(), "adapter (VTGPromptConfig)"),
                 dataclass_flags(VTGTrainingArguments, training_field_names(), "training (VTGTrainingArguments)")],
    )
    train.set_defaults(run=run)
