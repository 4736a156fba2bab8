"""Interval arithmetic on the video timeline: temporal IoU, temporal NMS, and the seconds <-> frame-index mapping.

This is the lowest layer of peft_vtg (no torch, no model): decoding, the dataset readers and the metrics all use it,
so a window means the same thing everywhere.

Frame convention: a clip of `duration` seconds sampled into `num_frames` features or frames is split into equal
bins; frame `i` covers `[i * duration / num_frames, (i + 1) * duration / num_frames)` seconds. A window in seconds
maps to the frames whose bins it touches, and a frame span `[i, j]` (inclusive) maps back to
`[i * step, (j + 1) * step]`. The round trip seconds -> frames -> seconds therefore moves each boundary outwards by
less than one frame (`step = duration / num_frames`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Optional

Window = Sequence[float]  # (start_s, end_s) or (start_s, end_s, score)


def check_window(window: Window, what: str = "window") -> tuple[float, float]:
    """`(start, end)` of `window` as floats; raises if it is not a sequence of at least two numbers, a bound is NaN or
    infinite, or it ends before it starts."""
    try:  # numbers, numpy or 0-d torch scalars; not text, not bools
        if isinstance(window, (str, bytes)) or len(window) < 2:
            raise TypeError
        first, second = window[0], window[1]
        if isinstance(first, (str, bytes, bool)) or isinstance(second, (str, bytes, bool)):
            raise TypeError
        start, end = float(first), float(second)
    except (TypeError, ValueError, KeyError, IndexError):
        raise ValueError(f"{what} {window!r} must be [start, end] (numbers), optionally with a score.") from None
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"{what} {list(window)!r} has a bound that is not a finite number.")
    if end < start:
        raise ValueError(f"{what} {list(window)!r} ends before it starts (end < start).")
    return start, end


def is_finite_number(value: numbers.Real) -> bool:
    """math.isfinite that says False, rather than raising OverflowError, for an integer beyond float range (JSON's
    integers have no size limit: `10**400` in a file must be an input error, not a traceback)."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def check_windows(windows: object, what: str, with_score: bool) -> None:
    """Raise `ValueError` naming `what` unless `windows` is a list of `[start, end]` (or, with `with_score`,
    `[start, end, score]`) of finite numbers with start <= end (seconds)."""
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise ValueError(f"{what}: expected a list of windows, got {windows!r}.")
    lengths = (2, 3) if with_score else (2,)
    shape = "[start, end] or [start, end, score]" if with_score else "[start, end]"
    for k, window in enumerate(windows):
        if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) not in lengths:
            raise ValueError(f"{what}, window {k}: expected {shape} in seconds, got {window!r}.")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in window):
            raise ValueError(f"{what}, window {k}: {list(window)!r} holds a value that is not a number.")
        if not all(is_finite_number(v) for v in window):
            raise ValueError(f"{what}, window {k}: {list(window)!r} holds NaN or Inf; only finite start, end and "
                             "score values can be ranked and scored.")
        if window[1] < window[0]:
            raise ValueError(f"{what}, window {k}: {list(window)!r} ends before it starts (end < start).")
    if with_score and len({len(window) for window in windows}) > 1:
        # A window without a score ranks as score 0, so mixing the two orders the windows arbitrarily.
        raise ValueError(f"{what}: some windows have a score and some do not; give every window as [start, end, "
                         "score] (or none of them a score, to rank them in the order given).")


def temporal_iou(a: Window, b: Window) -> float:
    """IoU of two windows given in the same unit (seconds or frames), in [0, 1].

    intersection = max(0, min(e1, e2) - max(s1, s2)) over union = max(e1, e2) - min(s1, s2), the span of the two,
    as the community's evaluators compute it (Moment-DETR's R1, 2D-TAN, VSLNet): for windows that overlap it equals
    length + length - intersection, but it rounds differently, which decides an IoU that is exactly a threshold
    (0.5 must be 0.5, not 0.4999999999999999). Windows that do not overlap have IoU 0; two zero-length windows
    have 1 if they coincide, else 0.
    """
    return _iou(*check_window(a), *check_window(b))


def _iou(s1: float, e1: float, s2: float, e2: float) -> float:
    """`temporal_iou` of checked bounds (the inner loop of NMS checks each window once, not once per pair)."""
    intersection = min(e1, e2) - max(s1, s2)
    if intersection <= 0.0:
        return 1.0 if (s1, e1) == (s2, e2) else 0.0
    return intersection / (max(e1, e2) - min(s1, s2))


def rank_windows(windows: Sequence[Window]) -> list[Window]:
    """Windows by descending score (third element; missing = 0); ties keep their given order."""
    return sorted(windows, key=lambda w: -float(w[2]) if len(w) > 2 else 0.0)


def check_nms_threshold(value: object) -> Optional[float]:
    """`value` as an NMS IoU threshold: None (no NMS) or a real number in [0, 1]; raises `ValueError` otherwise."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                              or not 0.0 <= value <= 1.0):  # also false for NaN
        raise ValueError(f"nms_threshold must be an IoU in [0, 1] or None, got {value!r}.")
    return value


def temporal_nms(windows: Sequence[Window], iou_threshold: float, max_windows: Optional[int] = None) -> list[Window]:
    """Greedy temporal non-maximum suppression: keep the best-scored window, drop every later window whose IoU with a
    kept one exceeds `iou_threshold`, repeat. Returns the kept windows by descending score (at most `max_windows`,
    a whole number >= 1, or all)."""
    if check_nms_threshold(iou_threshold) is None:
        raise ValueError("iou_threshold must be an IoU in [0, 1], got None.")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, numbers.Integral)
                                    or max_windows < 1):
        raise ValueError(f"max_windows must be a whole number >= 1 or None, got {max_windows!r}.")
    for window in windows:
        # a NaN score sorts anywhere and would suppress a real window
        if len(window) > 2 and not _is_finite_score(window[2]):
            raise ValueError(f"window {list(window)!r}: its score must be a finite number.")
    kept: list[Window] = []
    kept_bounds: list[tuple[float, float]] = []
    for window in rank_windows(windows):
        start, end = check_window(window)
        if all(_iou(start, end, *other) <= iou_threshold for other in kept_bounds):
            kept.append(window)
            kept_bounds.append((start, end))
            if max_windows is not None and len(kept) >= max_windows:
                break
    return kept


def _is_finite_score(value: object) -> bool:
    if isinstance(value, (str, bytes, bool)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _check_clip(duration: float, num_frames: int) -> float:
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames!r}.")
    return duration / num_frames


def seconds_to_frames(start: float, end: float, duration: float, num_frames: int) -> tuple[int, int]:
    """Inclusive frame span `(first, last)` of the window `[start, end]` seconds in a clip of `num_frames` bins.

    `first` is the bin containing `start`, `last` the bin containing the final instant before `end`; both are clamped
    to `[0, num_frames - 1]` and `last >= first`, so even a zero-length window gets one frame.
    """
    step = _check_clip(duration, num_frames)
    first = min(max(int(math.floor(start / step)), 0), num_frames - 1)
    # ceil(end / step) - 1: a window ending exactly on a bin edge does not reach into the next bin.
    last = min(max(int(math.ceil(end / step)) - 1, first), num_frames - 1)
    return first, last


def frames_to_seconds(first: int, last: int, duration: float, num_frames: int) -> tuple[float, float]:
    """Window in seconds covered by the inclusive frame span `[first, last]`: `(first * step, (last + 1) * step)`."""
    step = _check_clip(duration, num_frames)
    if not 0 <= first <= last < num_frames:
        raise ValueError(f"Frame span [{first}, {last}] is not inside 0..{num_frames - 1} with first <= last.")
    return first * step, min((last + 1) * step, duration)


def _overlaps(bins: int, bin_seconds: float, cells: int, cell_seconds: float) -> "list[list[tuple[int, float]]]":
    """For each of `bins` intervals of `bin_seconds` from 0, the (cell index, seconds of overlap) of the `cells`
    intervals of `cell_seconds` from 0 that it overlaps."""
    result = []
    for index in range(bins):
        start, end = index * bin_seconds, (index + 1) * bin_seconds
        first, last = int(math.floor(start / cell_seconds)), int(math.ceil(end / cell_seconds))
        pieces = []
        for cell in range(max(first, 0), min(last, cells)):
            overlap = min(end, (cell + 1) * cell_seconds) - max(start, cell * cell_seconds)
            if overlap > 0:
                pieces.append((cell, overlap))
        result.append(pieces)
    return result


# An hour at 10 clips per second is 36,000 clips; a million means a clip length given in other units than seconds
# (and would allocate gigabytes of labels).
MAX_CLIPS = 1_000_000
# More frames than this sampled from one video is a setting in the wrong unit, not a video (a 24-hour video at
# 10 fps is 864,000).
MAX_SAMPLED_FRAMES = 1_000_000


def check_clip_length(clip_length: object, what: Optional[str] = None) -> float:
    """`clip_length` (seconds per highlight clip) as a float, or a `ValueError` (led by `what`, when given) unless it
    is a finite number > 0."""
    if isinstance(clip_length, bool) or not isinstance(clip_length, numbers.Real) \
            or not is_finite_number(clip_length) or clip_length <= 0:
        raise ValueError(f"{what + ': ' if what else ''}clip_length must be a finite number of seconds > 0 "
                         f"(QVHighlights: 2), got {clip_length!r}.")
    return float(clip_length)


def check_clip_count(duration: float, clip_length: float, what: str) -> int:
    """The number of whole clips of `clip_length` seconds in a `duration`-second video, or `ValueError` naming `what`
    when `clip_length` is no length (`check_clip_length`) or the count exceeds `MAX_CLIPS`."""
    check_clip_length(clip_length, what)
    clips = duration / clip_length
    if clips > MAX_CLIPS:
        raise ValueError(f"{what}: a clip_length of {clip_length!r} s cuts the {duration!r} s video into more than "
                         f"{MAX_CLIPS:,} clips; clip_length is in seconds (QVHighlights: 2).")
    return int(clips)


def clip_scores_to_frames(
    clip_scores: Sequence[float], clip_length: float, duration: float, num_frames: int
) -> tuple[list[float], list[bool]]:
    """Per-clip scores (clip `c` covers `[c * clip_length, (c + 1) * clip_length)` seconds, e.g. QVHighlights'
    2-second clips) on the frame grid: frame `i`'s value is the mean of the scores of the clips its bin overlaps,
    weighted by the seconds of overlap. Frames whose bin overlaps no clip (a tail of the video shorter than a clip)
    have no value: `(values, known)`, both of length `num_frames`."""
    step = _check_clip(duration, num_frames)
    check_clip_length(clip_length)
    values, known = [], []
    for pieces in _overlaps(num_frames, step, len(clip_scores), clip_length):
        weight = sum(overlap for _, overlap in pieces)
        known.append(weight > 0)
        values.append(sum(clip_scores[c] * overlap for c, overlap in pieces) / weight if weight > 0 else 0.0)
    return values, known


def frame_scores_to_clips(frame_scores: Sequence[float], duration: float, clip_length: float) -> list[float]:
    """Per-frame scores (frame `i` covering its bin of `duration / len(frame_scores)` seconds) as one score per clip of
    `clip_length` seconds, `ceil(duration / clip_length)` clips from the video's start (the last one may be short):
    the mean of the frames each clip overlaps, weighted by the seconds of overlap."""
    step = _check_clip(duration, len(frame_scores))
    check_clip_count(duration, clip_length, "clip_length")  # millions of clips: a length in the wrong unit
    clips = max(1, int(math.ceil(duration / clip_length - 1e-9)))
    scores = []
    for clip, pieces in enumerate(_overlaps(clips, clip_length, len(frame_scores), step)):
        weight = sum(overlap for _, overlap in pieces)
        scores.append(sum(frame_scores[f] * overlap for f, overlap in pieces) / weight if weight > 0 else
                      float(frame_scores[-1]))
    return scores
