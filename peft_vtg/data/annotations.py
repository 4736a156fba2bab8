"""Readers of the four VTG benchmarks' annotation files, into one `datasets.Dataset` schema.

Schema (`MOMENT_FEATURES`), one row per (video, query) pair:

- `qid` (string): the file's own query id where it has one (QVHighlights, JSON lines), else `"{vid}_{k}"` with `k`
  the pair's index among that video's pairs in file order (the convention of the unified JSON-lines releases).
- `vid` (string), `query` (string), `duration` (seconds), `windows`: ground-truth `[start, end]` pairs in seconds
  (several for QVHighlights; empty for an unlabelled split).

Bad-row policy (the same for every reader):

- **clipped**, counted, with a warning: a window starting before 0 or ending after the video's duration is clipped to
  `[0, duration]`. Differences below 1 microsecond are floating-point noise of the files and are clipped silently.
- **dropped**, counted by reason, with a warning: an empty query; a video whose duration is unknown or not
  positive; a window with end < start, with non-finite times, or starting at or after the duration (nothing
  left to clip); a labelled query without any usable window.
- **error** with `strict=True`: the first row that would be clipped or dropped raises a `ValueError` naming the
  file, the row and the reason.

The counts are also kept in `dataset.info.description` (JSON) so they travel with the dataset.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import datasets

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

    def summary(self) -> str:
        parts = [f"{self.source}: {self.kept} of {self.total} pairs kept"]
        if self.clipped:
            parts.append("clipped " + ", ".join(f"{n} ({reason})" for reason, n in sorted(self.clipped.items())))
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} ({reason})" for reason, n in sorted(self.dropped.items())))
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "total": self.total, "kept": self.kept, "clipped": dict(self.clipped),
                "dropped": dict(self.dropped)}


class _RowPolicy:
    """Applies the module's bad-row policy and keeps the report."""

    def __init__(self, source: str, strict: bool) -> None:
        self.report = ReadReport(source=source)
        self.strict = strict
        self.rows: list[dict[str, Any]] = []

    def _bad(self, where: str, reason: str, kind: str) -> None:
        if self.strict:
            raise ValueError(f"{self.report.source}, {where}: {reason}. (strict=True; strict=False would "
                             f"{'clip' if kind == 'clip' else 'drop'} it.)")
        (self.report.clipped if kind == "clip" else self.report.dropped)[reason] += 1

    def add(
        self, where: str, qid: str, vid: str, query: Any, duration: Optional[float], windows: Optional[Iterable]
    ) -> None:
        """Check one pair; `windows=None` marks an unlabelled query (allowed, kept with no windows)."""
        self.report.total += 1
        query = "" if query is None else str(query).strip()
        if not query:
            return self._bad(where, "empty query", "drop")
        try:
            duration = float(duration) if duration is not None else None
        except (TypeError, ValueError):
            duration = None
        if duration is None or not math.isfinite(duration) or duration <= 0:
            return self._bad(where, "unknown video or duration", "drop")
        kept_windows, clips = [], []
        if windows is not None:
            for window in windows:
                try:
                    start, end = float(window[0]), float(window[1])
                except (TypeError, ValueError, IndexError):
                    return self._bad(where, "malformed window", "drop")
                if not (math.isfinite(start) and math.isfinite(end)):
                    return self._bad(where, "non-finite time", "drop")
                if end < start:
                    return self._bad(where, "end before start", "drop")
                if start >= duration:
                    return self._bad(where, "window starts at or after the video's end", "drop")
                if start < -_NOISE_SECONDS:
                    clips.append("start before 0")
                if end > duration + _NOISE_SECONDS:
                    clips.append("end beyond duration")
                kept_windows.append([max(start, 0.0), min(end, duration)])
            if not kept_windows:
                return self._bad(where, "no ground-truth window", "drop")
        for reason in dict.fromkeys(clips):  # counted once per pair, and only for pairs that are kept
            self._bad(where, reason, "clip")
        self.report.kept += 1
        self.rows.append({"qid": str(qid), "vid": str(vid), "query": query, "duration": duration,
                          "windows": kept_windows})

    def dataset(self) -> datasets.Dataset:
        report = self.report
        if report.clipped or report.dropped:
            warnings.warn(report.summary(), stacklevel=3)
        columns = {name: [row[name] for row in self.rows] for name in MOMENT_FEATURES}
        info = datasets.DatasetInfo(description=json.dumps(report.as_dict()), features=MOMENT_FEATURES)
        return datasets.Dataset.from_dict(columns, features=MOMENT_FEATURES, info=info)


def read_report(dataset: datasets.Dataset) -> dict[str, Any]:
    """The reader's counts (total, kept, clipped and dropped by reason) stored with a dataset."""
    try:
        return json.loads(dataset.info.description)
    except (TypeError, ValueError) as err:
        raise ValueError("This dataset was not made by a peft_vtg reader; it carries no read report.") from err


def _load_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}).") from err


def _numbered(vid: str, counters: Counter) -> str:
    k = counters[vid]
    counters[vid] += 1
    return f"{vid}_{k}"


# ---------------------------------------------------------------- Charades-STA
def read_charades_durations(csv_path: PathLike) -> dict[str, float]:
    """Video durations (seconds) from the Charades metadata csv (`id` and `length` columns)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"id", "length"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} needs the Charades csv columns 'id' and 'length', got {reader.fieldnames}.")
        return {row["id"]: float(row["length"]) for row in reader if row["length"]}


def read_charades_sta(
    path: PathLike, durations: Union[PathLike, Mapping[str, float]], strict: bool = False
) -> datasets.Dataset:
    """Charades-STA: lines `vid start end##sentence` (seconds).

    Args:
        path: the annotation file, e.g. `charades_sta_test.txt`.
        durations: video durations in seconds, as the Charades csv (`Charades_v1_test.csv`, its `length` column) or a
            mapping vid -> seconds (e.g. from feature lengths: `num_features / feature_fps`). The lines carry none.
        strict: raise on the first bad row instead of clipping / dropping (see the module docstring).
    """
    if not isinstance(durations, Mapping):
        durations = read_charades_durations(durations)
    policy = _RowPolicy(os.fspath(path), strict)
    counters: Counter = Counter()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            head, sep, sentence = line.rstrip("\n").partition("##")
            fields = head.split()
            if not sep or len(fields) != 3:
                raise ValueError(f"{path}, line {number}: expected 'vid start end##sentence', got {line.strip()!r}.")
            vid, start, end = fields
            try:
                window = [float(start), float(end)]
            except ValueError as err:
                raise ValueError(f"{path}, line {number}: start/end are not numbers: {line.strip()!r}.") from err
            policy.add(f"line {number}", _numbered(vid, counters), vid, sentence, durations.get(vid), [window])
    return policy.dataset()


# ---------------------------------------------------------------- ActivityNet Captions / per-video json
def _read_per_video_json(path: PathLike, data: Mapping, strict: bool, frames: bool) -> datasets.Dataset:
    policy = _RowPolicy(os.fspath(path), strict)
    for key, entry in data.items():
        vid = key[:-4] if key.endswith(".avi") else key
        timestamps, sentences = entry.get("timestamps"), entry.get("sentences")
        if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
            raise ValueError(
                f"{path}, video {key!r}: 'timestamps' and 'sentences' must be lists of equal length, got "
                f"{type(timestamps).__name__} / {type(sentences).__name__}."
            )
        if frames:  # 2D-TAN TACoS: times in frames at `fps`
            fps, num_frames = entry.get("fps"), entry.get("num_frames")
            valid = isinstance(fps, (int, float)) and fps > 0 and isinstance(num_frames, (int, float))
            duration = num_frames / fps if valid else None
            windows = [[t[0] / fps, t[1] / fps] if valid else t for t in timestamps]
        else:
            duration, windows = entry.get("duration"), timestamps
        for k, (window, sentence) in enumerate(zip(windows, sentences)):
            policy.add(f"video {key!r} pair {k}", f"{vid}_{k}", vid, sentence, duration, [window])
    return policy.dataset()


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
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path} is not a TACoS json object of videos.")
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
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err}).") from err
            if not isinstance(entry, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(entry).__name__}.")
            yield number, entry


def read_moment_jsonl(path: PathLike, strict: bool = False) -> datasets.Dataset:
    """JSON lines with one query per line: QVHighlights (`qid, query, duration, vid, relevant_windows`), the unified
    releases of other benchmarks in that form, and peft_vtg's ground-truth format (`qid, duration, windows`; `vid` and
    `query` optional). A line without any window key is an unlabelled query (kept with no windows)."""
    policy = _RowPolicy(os.fspath(path), strict)
    seen: set[str] = set()
    for number, entry in iter_json_lines(path):
        if "qid" not in entry:
            raise ValueError(f"{path}, line {number}: no 'qid'.")
        qid = str(entry["qid"])
        if qid in seen:
            raise ValueError(f"{path}, line {number}: duplicate qid {qid!r}.")
        seen.add(qid)
        windows = entry.get("relevant_windows", entry.get("windows"))
        query = entry.get("query", "") if "query" in entry else f"<{qid}>"  # GT files for scoring carry no text
        policy.add(f"line {number}", qid, entry.get("vid", qid), query, entry.get("duration"), windows)
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
    if name.endswith(".txt"):
        return "charades_sta"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        data = _load_json(path)
        first = next(iter(data.values()), None) if isinstance(data, Mapping) else None
        if isinstance(first, Mapping) and "fps" in first:
            return "tacos"
        if isinstance(first, Mapping) and "duration" in first and "timestamps" in first:
            return "activitynet_captions"
    raise ValueError(
        f"Cannot tell the annotation format of {path}; pass format= one of {sorted(READERS)}."
    )


def load_annotations(path: PathLike, format: Optional[str] = None, **kwargs: Any) -> datasets.Dataset:
    """Read any supported annotation file into the common schema; `format` defaults to `detect_format(path)`.

    `kwargs` go to the reader (e.g. `durations=` for Charades-STA, `strict=True`).
    """
    format = format or detect_format(path)
    if format not in READERS:
        raise ValueError(f"format={format!r} is not known; choose one of {sorted(READERS)}.")
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
