"""Run safety: the errors a run stops with, and the output-directory lock (`peft_vtg.locks`; atomic file operations:
`peft_vtg.files`).

Nothing here knows about models; `loop.py` and `checkpoints.py` use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..locks import OutputDirInUseError, RunLock, note

__all__ = ["LOCK_FILE", "NonFiniteError", "OutputDirInUseError", "RunLock", "note"]


class NonFiniteError(RuntimeError):
    """Training met a NaN or infinite loss, gradient or parameter; nothing from that step was applied or saved.

    Attributes:
        step: the optimizer step (1-based, as in the logs) that failed; 0 = the weights before training.
        kind: "loss", "gradient" or "parameters".
        processes: the process indices on which the value was non-finite.
        video_ids / query_ids: of the batches on those processes (empty when unknown or when every sample of the
            accumulation window is involved, e.g. for parameters).
    """

    def __init__(self, message: str, *, step: int = 0, kind: str = "loss", processes: Sequence[int] = (),
                 video_ids: Sequence[str] = (), query_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.step, self.kind = step, kind
        self.processes, self.video_ids, self.query_ids = list(processes), list(video_ids), list(query_ids)


LOCK_FILE = ".peft-vtg-train.lock"
