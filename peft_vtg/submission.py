"""Prediction files: the QVHighlights submission format that Moment-DETR, lighthouse, QD-DETR, CG-DETR and UniVTG
write, which `peft-vtg evaluate --predictions-out` writes too and `peft-vtg score` reads.

One JSON object per line:

- `qid`: the query id (an integer for QVHighlights; peft_vtg writes a qid made of digits alone as an integer, so
  that Moment-DETR's own evaluator matches it to its ground truth).
- `pred_relevant_windows`: `[[start_s, end_s, score], ...]`, best first; `[start_s, end_s]` without scores is read
  too, ranked in the order given. peft_vtg's older `pred_windows` key is read as the same thing.
- `pred_saliency_scores` (optional): one highlight score per clip of 2 seconds from the video's start.
- anything else (`query`, `vid`) is carried along and not read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .data.annotations import PathLike, conflicting_keys, iter_json_lines, shown
from .metrics import check_windows
from .moment_detr_eval import check_saliency_scores

WINDOW_KEYS = ("pred_relevant_windows", "pred_windows")


@dataclass
class Submission:
    """The predictions of one file: qid -> windows `[start, end, score]` (as listed; windows given without scores
    get scores that rank them as listed) and qid -> per-clip saliency scores."""

    windows: dict[str, list[list[float]]] = field(default_factory=dict)
    saliency: dict[str, list[float]] = field(default_factory=dict)
    scored: bool = True
    """False when the file's windows carried no scores (their order is their rank)."""

    def without(self, qids: set[str]) -> "Submission":
        """The same predictions without the queries `qids`."""
        return Submission({q: w for q, w in self.windows.items() if q not in qids},
                          {q: s for q, s in self.saliency.items() if q not in qids}, self.scored)


def read_submission(path: PathLike) -> Submission:
    """Read a prediction file (see the module docstring); every line is checked and an error names the line, the qid
    and the field. A qid given twice, windows that are not finite `[start, end(, score)]` with start <= end, a mix
    of windows with and without scores, or saliency scores that are not finite numbers are errors."""
    submission = Submission()
    seen: set[str] = set()
    duplicates: list[str] = []
    scored_lines, unscored_lines = 0, 0
    for number, entry in iter_json_lines(path):
        where = f"{path}, line {number}"
        if "qid" not in entry:
            raise ValueError(f"{where}: no 'qid' (keys given: {shown(sorted(entry))}).")
        qid = entry["qid"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise ValueError(f"{where}: 'qid' must be a string or an integer, got {qid!r}.")
        qid = str(qid)
        conflict = conflicting_keys(entry, WINDOW_KEYS)
        if conflict:
            raise ValueError(f"{where} (qid {qid!r}): both '{conflict[0]}' and '{conflict[1]}' hold windows, and they "
                             "differ; give one of the two keys.")
        key = next((name for name in WINDOW_KEYS if name in entry), None)
        if key is None and "pred_saliency_scores" not in entry:
            raise ValueError(f"{where} (qid {qid!r}): needs 'pred_relevant_windows' (or 'pred_windows') and/or "
                             f"'pred_saliency_scores', got keys {shown(sorted(entry))}.")
        if qid in seen:
            duplicates.append(qid)
        seen.add(qid)
        if key is not None:
            windows = entry[key]
            check_windows(windows, f"{where} (qid {qid!r}): '{key}'", with_score=True)
            if not windows:
                raise ValueError(f"{where} (qid {qid!r}): '{key}' is empty; give at least one predicted window (a "
                                 "line with saliency scores only leaves the key out).")
            if windows and len(windows[0]) == 2:
                unscored_lines += 1
                # Ranked as listed: a descending score per position (the first listed is the best).
                windows = [[float(w[0]), float(w[1]), float(len(windows) - k)] for k, w in enumerate(windows)]
            else:
                scored_lines += bool(windows)
                windows = [[float(v) for v in w] for w in windows]
            submission.windows[qid] = windows
        if "pred_saliency_scores" in entry:
            scores = entry["pred_saliency_scores"]
            check_saliency_scores(scores, f"{where} (qid {qid!r}): 'pred_saliency_scores'")
            submission.saliency[qid] = [float(v) for v in scores]
    if duplicates:
        raise ValueError(f"{path}: duplicate qids {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''} "
                         f"({len(duplicates)}); give each query one line.")
    if not seen:
        raise ValueError(f"{path} holds no predictions (the file is empty).")
    if scored_lines and unscored_lines:
        raise ValueError(f"{path}: {scored_lines} lines give windows with scores and {unscored_lines} without; give "
                         "every window as [start, end, score], or none with a score (ranked as listed).")
    submission.scored = unscored_lines == 0
    return submission


def _qid_out(qid: str) -> Any:
    # QVHighlights' qids are integers: written back as integers, Moment-DETR's evaluator matches them.
    return int(qid) if qid.isdigit() and str(int(qid)) == qid else qid


def submission_lines(
    moments: Mapping[str, Sequence[Sequence[float]]],
    saliency: Optional[Mapping[str, Sequence[float]]] = None,
    rows: Optional[Sequence[Mapping[str, Any]]] = None,
) -> list[str]:
    """JSON lines of the submission format, one per qid of `moments` in its order: `qid`, `query` and `vid` (from
    `rows`, when given), `pred_relevant_windows` and, where given, `pred_saliency_scores`. NaN or Inf raise instead of
    writing a line no reader accepts."""
    by_qid = {row["qid"]: row for row in rows or []}
    lines = []
    for qid, windows in moments.items():
        entry: dict[str, Any] = {"qid": _qid_out(qid)}
        if qid in by_qid:
            entry.update(query=by_qid[qid]["query"], vid=by_qid[qid]["vid"])
        entry["pred_relevant_windows"] = [[float(v) for v in w] for w in windows]
        if saliency is not None and qid in saliency:
            entry["pred_saliency_scores"] = [float(v) for v in saliency[qid]]
        lines.append(json.dumps(entry, allow_nan=False) + "\n")
    return lines
