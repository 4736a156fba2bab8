"""Readers of the four VTG benchmarks' annotation files, into one `datasets.Dataset` schema.

Schema (`MOMENT_FEATURES`), one row per (video, query) pair:

- `qid` (string): the file's own query id where it has one (QVHighlights, JSON lines), else `"{vid}_{k}"` with `k`
  the pair's index among that video's pairs in file order (as the unified TACoS release names its queries; the
  unified Charades-STA release numbers them instead, 12404 on, so predictions made from it are scored against it).
- `vid` (string), `query` (string), `duration` (seconds), `windows`: ground-truth `[start, end]` pairs in seconds
  (several for QVHighlights; empty for an unlabelled split).
- Files with highlight labels (QVHighlights' `relevant_clip_ids` + `saliency_scores`) also give every row
  (`HIGHLIGHT_FEATURES`): `relevant_clip_ids` (clip indices, clip i covering [i * clip_length, (i + 1) *
  clip_length) seconds), `saliency_scores` (per listed clip, one score in 0..4 per annotator; QVHighlights has
  three) and `clip_length` (seconds; 2 for QVHighlights, or the file's own `clip_length`). A row of such a file
  without labels has empty lists.

Every file is read as UTF-8 with or without a byte-order mark (`utf-8-sig`).

Bad-row policy (the same for every reader). The benchmarks' own files have known dirt, which is repaired and
reported; anything a correct export could not contain is an error:

- **error**, always, naming the file, the row (line or video) and the field: a file with no rows (empty, or only
  blank lines); JSON that is not the expected shape (a top-level list where an object of videos is expected, a row
  that is not an object, a key given twice); a missing required key (`qid`, `duration`; `timestamps` / `sentences`);
  a field of the wrong type (a query that is not a string, a qid or vid that is not a string or integer, windows
  that are not a list of `[start, end]` pairs, a number given as text); a duration that is not a finite number > 0;
  a window with a non-finite time (NaN, Inf); a qid given twice; and a file in which no pair is usable at all.
- **clipped**, counted, with a warning naming the first rows: a window starting before 0 or ending after the video's
  duration is clipped to `[0, duration]` (562 windows end late in Charades-STA test); a highlight clip id beyond
  the video's last clip (`int(duration / clip_length)` clips) is removed with its scores. Differences below 1
  microsecond are floating-point noise of the files and are clipped silently (as is a start of -1e-7).
- **dropped**, counted by reason, with a warning naming the first rows: an empty query; a video whose duration is
  unknown (a Charades-STA video missing from the durations csv); a window with end < start; a window starting at or
  after the video's end or ending at or before its start (nothing left to clip); a labelled query whose window list
  is empty.
- with `strict=True` the first row that would be clipped or dropped raises a `ValueError` too.
- Malformed highlight labels are errors: ids that are not whole numbers >= 0 or repeat, scores that are not lists of
  finite numbers (one list per id, all of one length), one of the two keys without the other.

The counts, and the qids of dropped rows (so that a scorer can set their predictions aside), are also kept in
`dataset.info.description` (JSON) so they travel with the dataset.
"""

from __future__ import annotations

import csv
import errno
import inspect
import io
import json
import math
import numbers
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional, Union

import datasets

from ..timeline import check_clip_count

PathLike = Union[str, os.PathLike]

MOMENT_FEATURES = datasets.Features(
    {
        "qid": datasets.Value("string"),
        "vid": datasets.Value("string"),
        "query": datasets.Value("string"),
        "duration": datasets.Value("float64"),
        "windows": datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=2)),
    }
)
HIGHLIGHT_FEATURES = datasets.Features(
    {
        **MOMENT_FEATURES,
        "relevant_clip_ids": datasets.Sequence(datasets.Value("int64")),
        "saliency_scores": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
        "clip_length": datasets.Value("float64"),
    }
)
HIGHLIGHT_KEYS = ("relevant_clip_ids", "saliency_scores", "clip_length")
QVHIGHLIGHTS_CLIP_SECONDS = 2.0

# Pairs per split as published, and what the files shipped with each benchmark hold.
PUBLISHED_SPLIT_SIZES: dict[tuple[str, str], int] = {
    # Gao et al. 2017 (TALL); 2D-TAN Table 1.
    ("charades_sta", "train"): 12408,
    ("charades_sta", "test"): 3720,
    # Krishna et al. 2017; val_1 / val_2 as used for grounding (2D-TAN Table 1).
    ("activitynet_captions", "train"): 37417,
    ("activitynet_captions", "val_1"): 17505,
    ("activitynet_captions", "val_2"): 17031,
    # TACoS, 2D-TAN split: pairs in the released train/val/test json files. (The 2D-TAN paper's table lists
    # 10,146 / 4,589 / 4,083; the released files, and every loader reading them, have these counts.)
    ("tacos", "train"): 9790,
    ("tacos", "val"): 4436,
    ("tacos", "test"): 4001,
    # Lei et al. 2021 (Moment-DETR).
    ("qvhighlights", "train"): 7218,
    ("qvhighlights", "val"): 1550,
    ("qvhighlights", "test"): 1542,
}

_NOISE_SECONDS = 1e-6


@dataclass
class ReadReport:
    """What a reader did with the rows of one file."""

    source: str
    total: int = 0
    kept: int = 0
    clipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    # The first few rows (e.g. "line 4") of each reason, so that a warning points at them.
    examples: dict[str, list[str]] = field(default_factory=dict)
    # qids of the dropped pairs (a qid is known once a row's id fields are valid).
    dropped_qids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.source}: {self.kept} of {self.total} pairs kept"]
        if self.clipped:
            parts.append("clipped " + ", ".join(f"{n} ({reason})" for reason, n in sorted(self.clipped.items())))
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} ({reason})" for reason, n in sorted(self.dropped.items())))
        if self.examples:
            parts.append("first rows: " + "; ".join(f"{reason}: {', '.join(rows)}"
                                                    for reason, rows in sorted(self.examples.items())))
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "total": self.total, "kept": self.kept, "clipped": dict(self.clipped),
                "dropped": dict(self.dropped), "dropped_qids": list(self.dropped_qids)}


_EXAMPLES_PER_REASON = 3
_FIX = "fix or remove the row"


def _decimal(text: str) -> float:
    """A number written in a text file, as float() reads it but without Python-only spellings: float() also takes
    "1_0" (as 10.0) and surrounding whitespace, which no export means; raises ValueError."""
    if "_" in text or text != text.strip():
        raise ValueError(f"not a plain decimal number: {text!r}")
    return float(text)


def _number(value: Any) -> Optional[float]:
    """`value` as a float if it is a JSON/Python number (bools and numeric text are not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range (JSON allows 1000...0 with 400 digits): not finite
        return math.inf if value > 0 else -math.inf


class _RowPolicy:
    """Checks each pair, applies the module's bad-row policy and keeps the report."""

    def __init__(self, source: str, strict: bool) -> None:
        if not isinstance(strict, bool):  # strict="no" would be truthy
            raise ValueError(f"strict must be True or False, got {strict!r}.")
        self.report = ReadReport(source=source)
        self.strict = strict
        self.rows: list[dict[str, Any]] = []
        self._qids: set[str] = set()

    def error(self, where: str, message: str) -> NoReturn:
        raise ValueError(f"{self.report.source}, {where}: {message}")

    def _bad(self, where: str, reason: str, kind: str, qid: Optional[str] = None) -> None:
        if self.strict:
            raise ValueError(f"{self.report.source}, {where}: {reason}. (strict=True; strict=False would "
                             f"{'clip' if kind == 'clip' else 'drop'} it.)")
        (self.report.clipped if kind == "clip" else self.report.dropped)[reason] += 1
        if kind == "drop" and qid is not None:
            self.report.dropped_qids.append(qid)
        examples = self.report.examples.setdefault(reason, [])
        if len(examples) < _EXAMPLES_PER_REASON:
            examples.append(where)

    def _identifier(self, where: str, name: str, value: Any) -> str:
        # Integers are fine (QVHighlights qids are); a float, list or null id is a broken export.
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value):
            self.error(where, f"'{name}' must be a non-empty string or an integer, got {value!r}.")
        return self._text(where, name, str(value))

    def _text(self, where: str, name: str, value: str) -> str:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"), which no UTF-8 file, tokenizer or dataset can hold.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            self.error(where, f"'{name}' holds a character that is not valid Unicode text ({err.reason} at "
                              f"position {err.start}); {_FIX}.")
        return value

    def _window(self, where: str, name: str, window: Any, per_second: float) -> tuple[float, float]:
        """(start, end) in seconds of one window given in units of which `per_second` make a second (frames at that
        fps; 1: seconds); raises on a malformed one.

        `name` says which window for messages ("'timestamps'", "'relevant_windows' item 2")."""
        unit = "frames" if per_second != 1.0 else "seconds"
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            hint = "; for a single window write [[start, end]]" if _number(window) is not None else ""
            self.error(where, f"{name} must be [start, end] ({unit}), got {window!r}{hint}. {_FIX}.")
        start, end = _number(window[0]), _number(window[1])
        if start is None or end is None:
            bad = window[0] if start is None else window[1]
            self.error(where, f"{name} {list(window)!r}: start and end must be numbers ({unit}), got "
                              f"{type(bad).__name__} {bad!r}. {_FIX}.")
        if not (math.isfinite(start) and math.isfinite(end)):
            self.error(where, f"{name} {list(window)!r} has a non-finite time (NaN or Inf); {_FIX}.")
        # end < start and a start before 0 are dirt the benchmarks' files are known to carry (the policy drops /
        # clips them in `add`), not a malformed export.
        # Divided, not multiplied by 1 / fps: frame / fps is what 2D-TAN's readers and the unified releases compute,
        # and the last bit decides a window of exactly 10 s (short or middle bucket) and an IoU of exactly m.
        return start / per_second, end / per_second

    def add(
        self,
        where: str,
        qid: Any,
        vid: Any,
        query: Any,
        duration: Any,
        windows: Any,
        field_name: str = "windows",
        per_second: float = 1.0,
        highlights: Optional[Mapping[str, Any]] = None,
        unknown_duration_drops: bool = False,
    ) -> None:
        """Check one pair.

        Args:
            where: the row, for messages ("line 3", "video 'v_x' pair 0").
            duration: seconds. None is an error (a file's `null`), except with `unknown_duration_drops`: a video
                the Charades-STA csv does not list, whose pair is dropped.
            windows: `[[start, end], ...]` in units of which `per_second` make a second (see `_window`), or None
                for an unlabelled query (kept with no windows).
            field_name: the file's name of the windows field, for messages.
            highlights: the row's `relevant_clip_ids`, `saliency_scores` and `clip_length` (None or empty dict: the
                file has no highlight labels; a dict with `clip_length` only: this row has none).
        """
        self.report.total += 1
        qid = self._identifier(where, "qid", qid)
        vid = self._identifier(where, "vid", vid)
        if qid in self._qids:
            self.error(where, f"duplicate qid {qid!r}; every query needs its own id.")
        self._qids.add(qid)
        if not isinstance(query, str):
            self.error(where, f"'query' must be a string, got {type(query).__name__} {query!r}. {_FIX}.")
        if duration is not None or not unknown_duration_drops:
            seconds = _number(duration)
            if seconds is None or not math.isfinite(seconds) or seconds <= 0:
                self.error(where, f"'duration' must be a finite number of seconds > 0, got {duration!r}. {_FIX}.")
            duration = seconds
        if windows is not None and not isinstance(windows, (list, tuple)):
            self.error(where, f"'{field_name}' must be a list of [start, end] windows, got {windows!r}. {_FIX}.")
        several = windows is not None and len(windows) > 1
        checked = [self._window(where, f"'{field_name}'" + (f" item {k}" if several else ""), window, per_second)
                   for k, window in enumerate(windows or [])]
        labels = self._highlights(where, highlights) if highlights else None
        query = self._text(where, "query", query).strip()
        if not query:
            return self._bad(where, "empty query", "drop", qid)
        if duration is None:
            return self._bad(where, "unknown video or duration", "drop", qid)
        kept_windows, clips = [], []
        if windows is not None:
            for start, end in checked:
                if end < start:
                    return self._bad(where, "end before start", "drop", qid)
                if start >= duration:
                    return self._bad(where, "window starts at or after the video's end", "drop", qid)
                if end <= _NOISE_SECONDS:  # clipping would leave [0, end <= 0]: nothing of the video
                    return self._bad(where, "window ends at or before the video's start", "drop", qid)
                if start < -_NOISE_SECONDS:
                    clips.append("start before 0")
                if end > duration + _NOISE_SECONDS:
                    clips.append("end beyond duration")
                kept_windows.append([max(start, 0.0), min(end, duration)])
            if not kept_windows:
                return self._bad(where, "no ground-truth window", "drop", qid)
        row = {"qid": qid, "vid": vid, "query": query, "duration": duration, "windows": kept_windows}
        if labels is not None:
            try:
                clips_in_video = check_clip_count(duration, labels["clip_length"], "'clip_length'")
            except ValueError as err:
                self.error(where, str(err))
            inside = [k for k, clip in enumerate(labels["relevant_clip_ids"]) if clip < clips_in_video]
            if len(inside) < len(labels["relevant_clip_ids"]):
                clips.append("highlight clip beyond the video")
            row.update(relevant_clip_ids=[labels["relevant_clip_ids"][k] for k in inside],
                       saliency_scores=[labels["saliency_scores"][k] for k in inside],
                       clip_length=labels["clip_length"])
        for reason in dict.fromkeys(clips):  # counted once per pair, and only for pairs that are kept
            self._bad(where, reason, "clip")
        self.report.kept += 1
        self.rows.append(row)

    def _highlights(self, where: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The row's highlight labels, checked: ids whole numbers >= 0 without repeats, one list of finite scores per
        id (all of one length), a clip length > 0 (seconds)."""
        clip_length = _number(given.get("clip_length"))
        if clip_length is None or not math.isfinite(clip_length) or clip_length <= 0:
            self.error(where, f"'clip_length' must be a finite number of seconds > 0, got "
                              f"{given.get('clip_length')!r}.")
        ids, scores = given.get("relevant_clip_ids"), given.get("saliency_scores")
        if (ids is None) != (scores is None):
            present, absent = ("relevant_clip_ids", "saliency_scores") if scores is None else (
                "saliency_scores", "relevant_clip_ids")
            self.error(where, f"'{present}' is given without '{absent}'; highlight labels need both. {_FIX}.")
        if ids is None:
            return {"relevant_clip_ids": [], "saliency_scores": [], "clip_length": clip_length}
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                for i in ids):
            self.error(where, f"'relevant_clip_ids' must be a list of clip indices (whole numbers >= 0), got {ids!r}. "
                              f"{_FIX}.")
        if len(set(ids)) != len(ids):
            self.error(where, f"'relevant_clip_ids' lists a clip twice: {ids!r}. {_FIX}.")
        if not isinstance(scores, list) or len(scores) != len(ids):
            self.error(where, f"'saliency_scores' must hold one list of scores per relevant clip ({len(ids)}), got "
                              f"{scores!r}. {_FIX}.")
        widths = set()
        for k, row in enumerate(scores):
            values = [_number(v) for v in row] if isinstance(row, list) else None
            if not values or any(v is None or not math.isfinite(v) for v in values):
                self.error(where, f"'saliency_scores' item {k} must be a non-empty list of finite numbers (one per "
                                  f"annotator), got {row!r}. {_FIX}.")
            widths.add(len(values))
        if len(widths) > 1:
            self.error(where, f"'saliency_scores' items have different numbers of annotators {sorted(widths)}; every "
                              f"clip needs a score from each annotator. {_FIX}.")
        return {"relevant_clip_ids": list(ids), "saliency_scores": [[float(v) for v in row] for row in scores],
                "clip_length": clip_length}

    def dataset(self) -> datasets.Dataset:
        report = self.report
        if report.total == 0:
            raise ValueError(f"{report.source} holds no annotation rows (the file is empty or has only blank lines); "
                             "give a file with at least one (video, query) pair.")
        if report.kept == 0:
            raise ValueError(f"None of the pairs in {report.source} is usable: {report.summary()}. Check that the "
                             "file (and for Charades-STA the durations csv) belong to the same split.")
        if report.clipped or report.dropped:
            warnings.warn(report.summary(), stacklevel=3)
        features = HIGHLIGHT_FEATURES if any("clip_length" in row for row in self.rows) else MOMENT_FEATURES
        columns = {name: [row[name] for row in self.rows] for name in features}
        info = datasets.DatasetInfo(description=json.dumps(report.as_dict()), features=features)
        return datasets.Dataset.from_dict(columns, features=features, info=info)


def read_report(dataset: datasets.Dataset) -> dict[str, Any]:
    """The reader's counts (total, kept, clipped and dropped by reason) stored with a dataset."""
    try:
        return json.loads(dataset.info.description)
    except (TypeError, ValueError) as err:
        raise ValueError("This dataset was not made by a peft_vtg reader; it carries no read report.") from err


def _check_path(path: Any, what: str = "annotation file") -> None:
    # open(5) would read file descriptor 5 (open(0): standard input) instead of failing.
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"The {what} must be a path (str or os.PathLike), got {type(path).__name__} {path!r}.")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"is a directory; give the {what} itself", os.fspath(path))
    if not os.path.exists(path):  # before the format is guessed from the name: "no such file", not "which format?"
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))


def _source(path: Any) -> str:
    _check_path(path)
    return os.fspath(path)


def _read_text(path: PathLike, newline: Optional[str] = None) -> str:
    """The whole file as text: UTF-8, a leading byte-order mark dropped (files saved by Excel / Notepad have one)."""
    _check_path(path)
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); is it the right file? Save it as UTF-8.") from err


class DuplicateKeyError(ValueError):
    """A JSON object gives one key twice (`unique_keys`); `args[0]` is the key."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json: the object as a dict, or `DuplicateKeyError` for a key given twice."""
    # json.load keeps the last of two equal keys without a word: for a file keyed by video id that silently loses
    # a video's annotations.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def conflicting_keys(entry: Mapping[str, Any], keys: Sequence[str]) -> Optional[tuple[str, str]]:
    """The first two of `keys` (names of one thing, e.g. `relevant_windows` / `windows`) that `entry` gives, not
    null, with different values; None when it gives at most one or they agree."""
    held = [key for key in keys if entry.get(key) is not None]
    return (held[0], held[1]) if len(held) > 1 and entry[held[0]] != entry[held[1]] else None


def shown(items: Iterable[Any], limit: int = 8) -> str:
    """`items` for a one-line message: the first `limit` as a list, then how many there are in all (a wrong file can
    have thousands of keys, or a whole JSON document as its csv header)."""
    items = list(items)
    clipped = [item if not isinstance(item, str) or len(item) <= 80 else item[:77] + "..." for item in items[:limit]]
    return f"{clipped}" + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKeyError as err:
        raise ValueError(f"{where}: the key {err.args[0]!r} appears twice in one object; give each key once.") from None
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data" and where.lower().endswith(".json"):
            hint = " If it is JSON lines (one object per line), give format='jsonl' (--format jsonl)."
        raise ValueError(f"{where} is not valid JSON ({err}).{hint}") from err
    except ValueError as err:  # e.g. an integer literal of more than 4,300 digits
        raise ValueError(f"{where}: a value cannot be read ({err}); no annotation holds such a number, is it the right "
                         "file?") from None
    except RecursionError:
        raise ValueError(f"{where}: the JSON is nested too deeply to read (thousands of levels); no annotation "
                         "file has that shape, is it the right file?") from None


def _load_json(path: PathLike) -> Any:
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"{path} holds no annotation rows (the file is empty).")
    return _parse_json(text, str(path))


def _numbered(vid: str, counters: Counter) -> str:
    k = counters[vid]
    counters[vid] += 1
    return f"{vid}_{k}"


# ---------------------------------------------------------------- Charades-STA
def read_charades_durations(csv_path: PathLike) -> dict[str, float]:
    """Video durations (seconds) from the Charades metadata csv (`id` and `length` columns).

    Rows with an empty `length` are skipped (the video's pairs are then dropped as of unknown duration); a length that
    is not a finite number > 0, or one id with two different lengths, is an error naming the row.
    """
    reader = csv.DictReader(io.StringIO(_read_text(csv_path, newline="")))
    if not reader.fieldnames or not {"id", "length"} <= set(reader.fieldnames):
        raise ValueError(f"{csv_path} needs the Charades csv columns 'id' and 'length' (e.g. Charades_v1_test.csv), "
                         f"got {shown(reader.fieldnames)}.")
    durations: dict[str, float] = {}
    for row in reader:
        vid, length = (row["id"] or "").strip(), (row["length"] or "").strip()
        if not vid or not length:
            continue
        try:
            seconds = _decimal(length)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"{csv_path}, line {reader.line_num}: video {vid!r} has length {length!r}; it must be a "
                             "finite number of seconds > 0.")
        if vid in durations and durations[vid] != seconds:
            raise ValueError(f"{csv_path}, line {reader.line_num}: video {vid!r} is listed twice with different "
                             f"lengths ({durations[vid]} and {seconds} s); keep one.")
        durations[vid] = seconds
    if not durations:
        raise ValueError(f"{csv_path} lists no video with a length; is it the Charades metadata csv?")
    return durations


def read_charades_sta(
    path: PathLike, durations: Optional[Union[PathLike, Mapping[str, float]]] = None, strict: bool = False
) -> datasets.Dataset:
    """Charades-STA: lines `vid start end##sentence` (seconds).

    Args:
        path: the annotation file, e.g. `charades_sta_test.txt`.
        durations: video durations in seconds, as the Charades csv (`Charades_v1_test.csv`, its `length` column) or a
            mapping vid -> seconds (e.g. from feature lengths: `num_features / feature_fps`). Required: the lines
            carry none.
        strict: raise on the first bad row instead of clipping / dropping (see the module docstring).
    """
    if durations is None:
        raise ValueError(
            f"{path}: Charades-STA lines ('vid start end##sentence') carry no video durations; pass durations= "
            "(command line: --durations) with the Charades metadata csv of the split, e.g. Charades_v1_test.csv "
            "(Charades_v1_train.csv for train), or a mapping vid -> seconds."
        )
    if not isinstance(durations, Mapping):
        _check_path(durations, "durations csv (or a mapping vid -> seconds)")
        durations = read_charades_durations(durations)
    policy = _RowPolicy(_source(path), strict)
    counters: Counter = Counter()
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        fields = head.split()
        if not sep or len(fields) != 3:
            raise ValueError(f"{path}, line {number}: expected 'vid start end##sentence', got {line.strip()!r}.")
        vid, start, end = fields
        try:
            window = [_decimal(start), _decimal(end)]
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: start/end are not numbers: {line.strip()!r}.") from err
        policy.add(f"line {number}", _numbered(vid, counters), vid, sentence, durations.get(vid), [window],
                   unknown_duration_drops=True)
    return policy.dataset()


# ---------------------------------------------------------------- ActivityNet Captions / per-video json
def _read_per_video_json(path: PathLike, data: Any, strict: bool, frames: bool) -> datasets.Dataset:
    policy = _RowPolicy(_source(path), strict)
    _check_videos_object(path, data)
    for key, entry in data.items():
        vid = key[:-4] if key.endswith(".avi") else key
        where = f"video {key!r}"
        if not isinstance(entry, Mapping):
            policy.error(where, f"expected an object with 'timestamps' and 'sentences', got {type(entry).__name__}.")
        missing = [name for name in ("timestamps", "sentences") + (("fps", "num_frames") if frames else ("duration",))
                   if name not in entry]
        if missing:
            policy.error(where, f"missing {missing}; every video needs 'timestamps', 'sentences' and "
                                f"{'fps and num_frames' if frames else 'duration'}.")
        timestamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
            raise ValueError(
                f"{path}, video {key!r}: 'timestamps' and 'sentences' must be lists of equal length, got "
                f"{type(timestamps).__name__} / {type(sentences).__name__}"
                + (f" of {len(timestamps)} / {len(sentences)} items." if isinstance(timestamps, list)
                   and isinstance(sentences, list) else ".")
            )
        per_second = 1.0
        if frames:  # 2D-TAN TACoS: times in frames at `fps`
            fps, num_frames = _number(entry["fps"]), _number(entry["num_frames"])
            if fps is None or not (math.isfinite(fps) and fps > 0) or num_frames is None or \
                    not (math.isfinite(num_frames) and num_frames > 0):
                policy.error(where, f"'fps' and 'num_frames' must be finite numbers > 0, got {entry['fps']!r} and "
                                    f"{entry['num_frames']!r}.")
            duration, per_second = num_frames / fps, fps
        else:
            duration = entry["duration"]
        for k, (window, sentence) in enumerate(zip(timestamps, sentences)):
            policy.add(f"video {key!r} pair {k}", f"{vid}_{k}", vid, sentence, duration, [window],
                       field_name="timestamps", per_second=per_second)
    return policy.dataset()


def _check_videos_object(path: PathLike, data: Any) -> None:
    if isinstance(data, list):
        raise ValueError(
            f"{path}: the top-level JSON value is a list, but this format is one object mapping video ids to "
            "{duration, timestamps, sentences}. For one row per query use JSON lines (.jsonl, format 'jsonl')."
        )
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object mapping video ids to annotations, got "
                         f"{type(data).__name__}.")
    if not data:
        raise ValueError(f"{path} holds no annotation rows (an empty JSON object).")


def read_activitynet_captions(path: PathLike, strict: bool = False) -> datasets.Dataset:
    """ActivityNet Captions (`train.json`, `val_1.json`, `val_2.json`): `{vid: {duration, timestamps, sentences}}`,
    times in seconds."""
    return _read_per_video_json(path, _load_json(path), strict, frames=False)


def read_tacos(path: PathLike, strict: bool = False) -> datasets.Dataset:
    """TACoS in either json form, detected per file:

    - 2D-TAN form: `{"s13-d21.avi": {timestamps (frames), sentences, fps, num_frames}}`; seconds = frames / fps and
      duration = num_frames / fps.
    - original (seconds) form: `{vid: {duration, timestamps (seconds), sentences}}`.

    Video ids drop the `.avi` suffix, so qids match the unified JSON-lines release (`s30-d52_0`).
    """
    data = _load_json(path)
    _check_videos_object(path, data)
    first = next(iter(data.values()))
    if isinstance(first, Mapping) and "fps" in first and "num_frames" in first:
        return _read_per_video_json(path, data, strict, frames=True)
    if isinstance(first, Mapping) and "duration" in first:
        return _read_per_video_json(path, data, strict, frames=False)
    raise ValueError(
        f"{path}: unknown TACoS form; expected entries with 'fps' and 'num_frames' (2D-TAN) or 'duration' (seconds)."
    )


# ---------------------------------------------------------------- QVHighlights / JSON lines
def iter_json_lines(path: PathLike) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of a JSON-lines file; a bad line raises naming its number."""
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        entry = _parse_json(line, f"{path}, line {number}")
        if isinstance(entry, list):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got a list; JSON lines hold one object "
                             "per line (not a JSON array of rows).")
        if not isinstance(entry, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(entry).__name__}.")
        yield number, entry


# The keys a JSON-lines row may give its ground-truth windows under, QVHighlights' first.
_WINDOW_KEYS = ("relevant_windows", "windows")


def read_moment_jsonl(path: PathLike, strict: bool = False) -> datasets.Dataset:
    """JSON lines with one query per line: QVHighlights (`qid, query, duration, vid, relevant_windows`), the unified
    releases of other benchmarks in that form, and peft_vtg's ground-truth format (`qid, duration, windows`; `vid` and
    `query` optional). A line without any window key (or with null) is an unlabelled query (kept with no windows);
    a key that looks like a misspelt window key (`relevant_window`) is an error. QVHighlights'
    highlight labels (`relevant_clip_ids`, `saliency_scores`; optional `clip_length`, default 2 s) are kept: see the
    module docstring."""
    policy = _RowPolicy(_source(path), strict)
    rows, highlighted = [], False
    for number, entry in iter_json_lines(path):
        where = f"line {number}"
        if "qid" not in entry:
            policy.error(where, f"no 'qid'; every line needs a query id (keys given: {shown(sorted(entry))}).")
        if "duration" not in entry:
            policy.error(where, f"no 'duration' (the video's length in seconds), qid {entry['qid']!r}.")
        conflict = conflicting_keys(entry, _WINDOW_KEYS)
        if conflict:
            policy.error(where, f"both '{conflict[0]}' and '{conflict[1]}' hold windows (qid {entry['qid']!r}), and "
                                "they differ; give one of the two keys.")
        field_name = next((name for name in _WINDOW_KEYS if name in entry), "windows")
        misspelt = sorted(key for key in entry if "window" in key.lower() and key not in _WINDOW_KEYS)
        if misspelt:
            policy.error(where, f"unknown key {misspelt[0]!r} (qid {entry['qid']!r}); the ground-truth windows go "
                                "under 'relevant_windows' or 'windows'.")
        query = entry["query"] if "query" in entry else f"<{entry['qid']}>"  # GT files for scoring carry no text
        if any(key in entry for key in ("relevant_clip_ids", "saliency_scores")):
            highlighted = True
        highlights = ({key: entry.get(key) for key in ("relevant_clip_ids", "saliency_scores")}
                      | {"clip_length": entry.get("clip_length", QVHIGHLIGHTS_CLIP_SECONDS)})
        rows.append((where, entry, field_name, query, highlights))
    for where, entry, field_name, query, highlights in rows:
        # Highlight labels on any line make it a highlight file: every row then carries the columns (empty lists
        # where a line has none), so that one schema holds the whole file.
        policy.add(where, entry["qid"], entry.get("vid", entry["qid"]), query, entry["duration"],
                   entry.get(field_name), field_name=field_name, highlights=highlights if highlighted else None)
    return policy.dataset()


read_qvhighlights = read_moment_jsonl


# ---------------------------------------------------------------- dispatch
READERS = {
    "charades_sta": read_charades_sta,
    "activitynet_captions": read_activitynet_captions,
    "tacos": read_tacos,
    "qvhighlights": read_moment_jsonl,
    "jsonl": read_moment_jsonl,
}


def detect_format(path: PathLike) -> str:
    """Guess which reader fits `path`: `.txt` -> charades_sta, `.jsonl` -> jsonl, `.json` -> tacos (2D-TAN, with fps)
    or activitynet_captions (with duration)."""
    name = os.fspath(path).lower()
    if name.endswith(".json") and os.path.exists(path) and not os.path.isfile(path):
        # Guessing reads the file, and a pipe (e.g. <(...)) can be read only once: the reader would wait forever.
        raise ValueError(f"{path} is not a regular file (a pipe?), so its format cannot be guessed by reading it; "
                         f"pass format= (--format) one of {sorted(READERS)}.")
    if name.endswith(".txt"):
        return "charades_sta"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        data = _load_json(path)
        _check_videos_object(path, data)
        first = next(iter(data.values()), None)
        if isinstance(first, Mapping) and "fps" in first:
            return "tacos"
        if isinstance(first, Mapping) and "duration" in first and "timestamps" in first:
            return "activitynet_captions"
    raise ValueError(
        f"Cannot tell the annotation format of {path}; pass format= (--format) one of {sorted(READERS)}."
    )


def load_annotations(path: PathLike, format: Optional[str] = None, **kwargs: Any) -> datasets.Dataset:
    """Read any supported annotation file into the common schema; `format` defaults to `detect_format(path)`.

    `kwargs` go to the reader (e.g. `durations=` for Charades-STA, `strict=True`); one the reader does not take is an
    error rather than ignored.
    """
    _check_path(path)
    if format is not None and (not isinstance(format, str) or format not in READERS):
        raise ValueError(f"format={format!r} is not known; choose one of {sorted(READERS)}.")
    format = format or detect_format(path)
    reader = READERS[format]
    accepted = set(inspect.signature(reader).parameters) - {"path"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        flags = ", ".join(f"{name}= (--{name.replace('_', '-')})" for name in unknown)
        raise ValueError(f"{flags} does not apply to {path}, read as {format!r}; it takes only {sorted(accepted)}. "
                         "Drop it (durations are for Charades-STA .txt files only).")
    return READERS[format](path, **kwargs)


def check_split_size(dataset: datasets.Dataset, benchmark: str, split: str) -> None:
    """Raise if the number of pairs the reader saw differs from the published size of `benchmark`'s `split`.

    Counts the pairs read (kept + dropped), so a dirty row that was dropped does not hide a truncated file.
    """
    key = (benchmark, split)
    if key not in PUBLISHED_SPLIT_SIZES:
        raise ValueError(f"No published size for {key}; known: {sorted(PUBLISHED_SPLIT_SIZES)}.")
    seen = read_report(dataset)["total"]
    if seen != PUBLISHED_SPLIT_SIZES[key]:
        raise ValueError(
            f"{benchmark} {split}: the file holds {seen} pairs but the published split has "
            f"{PUBLISHED_SPLIT_SIZES[key]}; is the file truncated or from another release?"
        )
