"""File operations that never leave a half-written file behind: write to a temporary name, fsync, rename into place.

The lowest layer (it imports nothing of peft_vtg): the training loop's checkpoints and kept adapter, the Hub push's
consistency check and the CLI's output files all go through it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from typing import Any, Callable, Optional


def fsync_path(path: str) -> None:
    """Flush a file's (or a directory's entries') data to disk, so a rename that follows cannot outlive it."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on platforms that cannot open them; the rename is then best effort
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # some filesystems do not fsync directories
            raise
    finally:
        os.close(fd)


def fsync_tree(directory: str) -> None:
    """fsync every file below `directory`, then the directories themselves (deepest first)."""
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that a reader, or a crash, sees the old file or the new one, never a part.

    The temporary file sits beside `path` (a rename within one filesystem is atomic) and is removed if the write
    fails."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_file_atomic(path, write)


def write_file_atomic(path: str, write: Callable[[str], None]) -> None:
    """Create `path` through `write(temporary_path)` (e.g. a library's own save function) so that a reader, or a
    crash, sees the old file or the complete new one, never a part: the temporary file sits beside `path`, is
    fsynced, renamed into place and removed if `write` fails."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        write(temporary)
        fsync_path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    fsync_path(os.path.dirname(os.path.abspath(path)))


# safetensors' `save_file` (checked with 0.8: its Rust side, through the `tempfile` crate) writes its target through
# a file named ".tmp" and six random letters or digits in the target's directory, then renames it; a kill between
# the two leaves that file behind, beside our own `<name>.tmp-<pid>`.
# `write_file_atomic`'s temporaries end in ".tmp-<pid>"; a video id may contain ".tmp-" itself (take.tmp-2.npy).
_OWN_TEMPORARY = re.compile(r".+\.tmp-\d+")
_SAFETENSORS_TEMPORARY = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def is_interrupted_write(name: str) -> bool:
    """Whether `name`, a file name in a directory this package writes, is what a killed write leaves behind: a
    temporary of `write_file_atomic` (`<name>.tmp-<pid>`) or one that safetensors' `save_file` makes beside its
    target (`.tmp` and six random characters)."""
    return _OWN_TEMPORARY.fullmatch(name) is not None or _SAFETENSORS_TEMPORARY.fullmatch(name) is not None


def remove_interrupted_writes(directory: str) -> list[str]:
    """Remove the leftovers of killed writes (`is_interrupted_write`) from `directory` (not below it), before a
    rerun writes there again; returns the names removed."""
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if is_interrupted_write(name) and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def read_json(path: str, fix: str, shown_as: Optional[str] = None) -> Any:
    """The JSON value in `path` (UTF-8, with or without a byte-order mark); a file that is not readable JSON (bad
    syntax, not text, nested too deeply for Python's parser, an integer too long to convert) is a `ValueError` naming
    it (`shown_as` when `path` is a private copy), then `fix` (what the user should do)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply to read" if isinstance(err, RecursionError) else str(err)
        raise ValueError(f"{shown_as or path} is not readable JSON ({reason}); {fix}") from None


def read_json_object(path: str, fix: str, shown_as: Optional[str] = None) -> dict[str, Any]:
    """`read_json` of a file that must hold a JSON object; anything else is a `ValueError` naming the file."""
    value = read_json(path, fix, shown_as)
    if not isinstance(value, dict):
        raise ValueError(f"{shown_as or path} must hold a JSON object, got {type(value).__name__}; {fix}")
    return value


def write_json_atomic(path: str, data: Any, indent: Optional[int] = 2) -> None:
    """`write_text_atomic` of `data` as JSON; NaN and Inf raise (`allow_nan=False`) instead of writing bad JSON."""
    write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False))


def sha256_file(path: str) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_tree_atomically(path: str, graveyard_name: str) -> None:
    """Delete a directory so that no reader ever sees it half deleted: rename it out of the way, then remove it.

    A crash during the removal leaves `graveyard_name` (in the same parent), which the next run cleans up.
    """
    parent = os.path.dirname(path)
    graveyard = os.path.join(parent, graveyard_name)
    if os.path.exists(graveyard):
        shutil.rmtree(graveyard, ignore_errors=True)
    os.rename(path, graveyard)
    fsync_path(parent)
    shutil.rmtree(graveyard, ignore_errors=True)
