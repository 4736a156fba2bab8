"""The `peft-vtg` command line (also `python -m peft_vtg`, and `accelerate launch -m peft_vtg train ...`).

One module per command, each with `add_parser(commands)` (its flags) and `run(args)` (what it does); what they share
is in `common.py`:

- `train`: prompt-tune a base model on an annotation file with a video source; every `VTGPromptConfig` and
  `VTGTrainingArguments` field is a flag (built by transformers' `HfArgumentParser`), and `--config FILE.json`
  supplies any of them (flags win).
- `evaluate`: the metrics of an adapter, or of a prompt ensemble (`--adapter` several times), on an annotation file
  (table or `--json`); long videos window by window.
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
import sys
from collections.abc import Sequence
from typing import Optional

from ..locks import OutputDirInUseError
from . import cache, demo, evaluate, extract, predict, push, score, train
from .common import load_config_file
from .score import read_predictions

# The order of `peft-vtg --help`.
COMMANDS = (train, evaluate, predict, extract, cache, push, demo, score)

__all__ = ["build_parser", "main", "read_predictions"]


def build_parser() -> argparse.ArgumentParser:
    """The `peft-vtg` parser: one subcommand per module of `COMMANDS`, each parsed args carrying its `run`."""
    parser = argparse.ArgumentParser(prog="peft-vtg", description="Parameter-efficient video temporal grounding.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `peft-vtg` with `argv` (default: the process's arguments); returns the exit status (2: bad input, named
    on stderr in one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.file_settings = load_config_file(getattr(args, "config", None))
        return args.run(args)
    except (ValueError, OSError, KeyError, OutputDirInUseError) as err:
        # Bad input (files, flags, settings): one line on stderr, no traceback. OSError covers unreadable paths
        # (a directory given as a file, permissions) and the Hub client's network errors.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
        if isinstance(err, OSError):
            message = _os_error_message(err, args)
        print(f"peft-vtg {args.command}: error: {message}", file=sys.stderr)
        return 2


def _os_error_message(err: OSError, args: argparse.Namespace) -> str:
    """An OS error on a path the user gave, led by the flag that gave it (`--queries q.jsonl: No such file or
    directory`) rather than Python's `[Errno 2] ...: 'q.jsonl'`; other OS errors as they are."""
    if err.filename is None or err.strerror is None:
        return str(err)
    for dest, value in vars(args).items():
        given = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and v == err.filename for v in given):
            return f"--{dest.replace('_', '-')} {err.filename}: {err.strerror}."
    return str(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
