"""One writer per output: a lock file beside what a long run writes (a training run's directory, a predictions file,
a feature or cache directory), so that a second run into the same output is refused at once instead of interleaving
its writes with the first's (or deleting its half-written files as leftovers of a kill).

The lowest layer: it imports nothing of peft_vtg.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from typing import Any, Optional


# Lock files of this interpreter, so that a second `train()` into the same directory from this process (a thread, a
# nested call) is refused like any other, while a lock that merely carries this pid (left by a previous boot whose
# pid got reused by us) counts as stale.
_HELD_LOCKS: set[str] = set()


class OutputDirInUseError(RuntimeError):
    """Another live run holds the lock of the output it would write."""


def note(message: str) -> None:
    """A one-line note on stderr: something the run decided on its own that the user should know about."""
    print(f"peft_vtg: note: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- one run per output directory
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _read_lock(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            owner = json.load(handle)
    except (OSError, ValueError):
        return None
    # Both fields decide whether the lock is stale; a lock without them counts as unreadable.
    valid = isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("hostname"), str)
    return owner if valid else None


class RunLock:
    """`directory/name`: at most one run writes the output it guards (by default a training run's output directory).

    The lock file is created with `O_CREAT | O_EXCL` (atomic on local filesystems and NFSv3+) and holds the owner's
    pid, hostname and start time. A lock whose owner is on this host and no longer alive is stale and is taken over
    with a note; a lock of another host cannot be checked and is never taken over.

    Args:
        output_dir: the directory the lock file goes in (created if needed).
        name: the lock file's name.
        what: the kind of run, for messages ("training run", "predict run").
        target: what is in use, for messages (default: `output_dir`); flag: how messages name the setting to change.
    """

    def __init__(self, output_dir: str, name: str = ".peft-vtg-train.lock", what: str = "training run",
                 target: Optional[str] = None, flag: str = "output_dir") -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, name)
        self.what, self.target, self.flag = what, target or output_dir, flag
        self.held = False

    def acquire(self) -> "RunLock":
        os.makedirs(self.output_dir, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD_LOCKS:
            raise OutputDirInUseError(f"{self.target} is in use by another {self.what} in this process "
                                      f"(pid {os.getpid()}); use another {self.flag}.")
        me = {"pid": os.getpid(), "hostname": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing(me)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            _HELD_LOCKS.add(key)
            return self
        raise OutputDirInUseError(f"Could not take the lock {self.path}: other processes keep creating it.")

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _handle_existing(self, me: dict[str, Any]) -> None:
        owner = _read_lock(self.path)
        if owner is None:
            # Created but not yet written (its owner is between open and write), or left empty by a crash at that
            # moment: give a live owner time to finish before calling it stale.
            try:
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                return
            if age < 5.0:
                time.sleep(0.2)
                return
            self._take_over(None, "it is empty or unreadable (left by a crash while it was created)")
            return
        if owner["hostname"] == me["hostname"] and (owner["pid"] == me["pid"] or not _pid_alive(owner["pid"])):
            self._take_over(owner, f"its owner (pid {owner['pid']} on {owner['hostname']}, since "
                                   f"{owner.get('started', '?')}) is no longer running")
            return
        where = "this host" if owner["hostname"] == me["hostname"] else f"host {owner['hostname']}"
        raise OutputDirInUseError(
            f"{self.target} is in use by another {self.what} (pid {owner['pid']} on {where}, since "
            f"{owner.get('started', '?')}). Wait for it to finish or choose another {self.flag}; if that run is "
            f"gone (e.g. a crashed node), delete {self.path}."
        )

    def _take_over(self, owner: Optional[dict[str, Any]], why: str) -> None:
        # Move the stale lock aside first and check it is still the one judged stale: two processes that both found
        # it stale must not both end up holding the lock (the second would otherwise move the first's fresh lock).
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else moved it; retry
        moved = _read_lock(aside)
        if owner is not None and moved != owner:
            try:
                os.link(aside, self.path)  # put the fresh lock back (fails if yet another one exists)
            except FileExistsError:
                pass
            os.remove(aside)
            return
        os.remove(aside)
        note(f"took over the stale lock {self.path}: {why}.")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD_LOCKS.discard(os.path.realpath(self.path))
        owner = _read_lock(self.path)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("hostname") == socket.gethostname():
            os.remove(self.path)
