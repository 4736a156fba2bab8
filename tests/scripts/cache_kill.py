"""Build a frozen-prefix cache of a tiny CLIP (7 videos, batches of 2), and optionally SIGKILL itself at a chosen
moment of a write; run by tests/test_cache.py to check that a killed build resumes to the files of an uninterrupted
one.

    python tests/scripts/cache_kill.py OUTPUT_DIR

Environment:
    KILL_AT: where to kill this process (default: nowhere):
        shard-write:N   while the N-th shard of this run is written (half its temporary file is on disk)
        shard-rename:N  with the N-th shard of this run complete under its temporary name, before the rename
        shard-save:N    while safetensors' save_file writes the N-th shard through its own temporary file, which
                        it puts beside the target as ".tmp" and six random characters (half of it on disk)
        manifest:N      while the N-th manifest of this run is written (half its temporary file is on disk)
    VIDEO_SLEEP: seconds to sleep per decoded video (gives random-time kills something to hit).
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the tiny models

import peft_vtg.cache as cache  # noqa: E402
from test_cache import Frames  # noqa: E402
from tiny_models import tiny_clip  # noqa: E402

VIDEOS = [f"v{i}" for i in range(7)]
LAYER = 1
BATCH_SIZE = 2


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_call(name: str, number: int, kind: str) -> None:
    """Replace `cache.<name>` (a write function taking the final path first) so that its `number`-th call dies:
    "half" after writing half of the temporary file, "rename" after writing all of it but before the rename, "save"
    with half of it under the name safetensors' own temporary would have."""
    real = getattr(cache, name)
    calls = [0]

    def patched(path, *args, **kwargs):
        calls[0] += 1
        if calls[0] != number:
            return real(path, *args, **kwargs)
        temporary = f"{path}.tmp-{os.getpid()}"
        if name == "write_file_atomic":
            args[0](temporary)
            if kind == "save":  # what safetensors leaves when killed inside save_file: its temporary, not ours
                data = Path(temporary).read_bytes()
                os.remove(temporary)
                temporary = os.path.join(os.path.dirname(path), ".tmpK1ll9d")
                Path(temporary).write_bytes(data)
        else:  # write_json_atomic(path, data, ...)
            Path(temporary).write_text(str(args[0]))
        if kind in ("half", "save"):
            with open(temporary, "r+b") as handle:
                handle.truncate(os.path.getsize(temporary) // 2)
        die()

    setattr(cache, name, patched)


def main() -> None:
    output = sys.argv[1]
    kind, _, number = os.environ.get("KILL_AT", "").partition(":")
    if kind == "shard-write":
        kill_on_call("write_file_atomic", int(number), "half")
    elif kind == "shard-save":
        kill_on_call("write_file_atomic", int(number), "save")
    elif kind == "shard-rename":
        kill_on_call("write_file_atomic", int(number), "rename")
    elif kind == "manifest":
        cache.MANIFEST_INTERVAL_SECONDS = 0.0  # a manifest after every batch, so there is one to kill
        kill_on_call("write_json_atomic", int(number), "half")
    elif kind:
        raise SystemExit(f"unknown KILL_AT {kind!r}")
    sleep = float(os.environ.get("VIDEO_SLEEP", "0"))

    class SlowFrames(Frames):
        def __call__(self, vid: str) -> torch.Tensor:
            time.sleep(sleep)
            return super().__call__(vid)

    frames = SlowFrames()
    torch.manual_seed(0)
    model = tiny_clip()
    print("started", flush=True)
    cache.build_cache(model, VIDEOS, frames, LAYER, output, batch_size=BATCH_SIZE, disable_tqdm=True)
    print(f"finished, encoded {sorted(frames.calls)}", flush=True)


if __name__ == "__main__":
    main()
