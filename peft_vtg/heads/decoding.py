"""Span decoding: from per-frame start/end logits to ranked moments in frames and in seconds."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch

from ..timeline import check_nms_threshold, frames_to_seconds, is_finite_number, temporal_nms

FrameSpan = tuple[int, int, float]  # (first_frame, last_frame inclusive, score)
Moment = tuple[float, float, float]  # (start_s, end_s, score)


def span_log_scores(
    start_logits: torch.Tensor, end_logits: torch.Tensor, num_frames: int, max_span_frames: Optional[int] = None
) -> torch.Tensor:
    """Log-score of every span of one clip: log p_start(i) + log p_end(j) for i <= j < i + max_span_frames, else -inf.

    Log space keeps peaked distributions from underflowing to ties at 0.

    Args:
        start_logits, end_logits: (frames,) logits of one clip (entries beyond `num_frames` are padding, ignored).
        num_frames: number of real frames.
        max_span_frames: longest span allowed, in frames (None = the whole clip).

    Returns:
        (num_frames, num_frames) matrix; entry [i, j] scores the span from frame i to frame j inclusive.
    """
    log_start = torch.log_softmax(start_logits[:num_frames].float(), dim=0)
    log_end = torch.log_softmax(end_logits[:num_frames].float(), dim=0)
    scores = log_start.unsqueeze(1) + log_end.unsqueeze(0)  # (frames, frames)
    # At most the clip: a limit past it is no limit (and a huge one would overflow torch's comparison below).
    longest = num_frames if max_span_frames is None else max(1, min(num_frames, int(max_span_frames)))
    rows = torch.arange(num_frames, device=scores.device).unsqueeze(1)
    cols = torch.arange(num_frames, device=scores.device).unsqueeze(0)
    allowed = (cols >= rows) & (cols - rows < longest)  # the band i <= j <= i + longest - 1
    return scores.masked_fill(~allowed, float("-inf"))


def top_spans(scores: torch.Tensor, top_k: int, nms_threshold: Optional[float]) -> list[FrameSpan]:
    """The `top_k` best spans of a (frames, frames) score matrix (entry [i, j] scores frames i..j; -inf = not
    allowed), best first, after temporal NMS when `nms_threshold` is given. Scores are returned as in the matrix."""
    length = scores.shape[0]
    flat = scores.flatten()
    allowed = int(torch.isfinite(flat).sum())
    # NMS can discard many near-duplicates; take a generous pool of candidates before suppressing.
    pool = min(allowed, top_k if nms_threshold is None else max(50 * top_k, 200))
    values, indices = flat.topk(pool)
    # Windows as [first, last + 1) so that adjacent one-frame spans do not overlap in NMS.
    candidates = [
        (float(i), float(j + 1), float(v))
        for i, j, v in zip((indices // length).tolist(), (indices % length).tolist(), values.tolist())
    ]
    kept = candidates[:top_k] if nms_threshold is None else temporal_nms(candidates, nms_threshold, top_k)
    return [(int(s), int(e) - 1, score) for s, e, score in kept]


def _check_decoding(start_logits: Any, end_logits: Any, frame_mask: Any, top_k: Any, nms_threshold: Any) -> None:
    """Raise `ValueError` naming the argument when the decoding inputs cannot give meaningful moments."""
    for name, value in (("start_logits", start_logits), ("end_logits", end_logits)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a tensor (batch, frames), got {type(value).__name__}.")
    if start_logits.shape != end_logits.shape or start_logits.dim() != 2:
        raise ValueError(
            f"start_logits and end_logits must both be (batch, frames), got {tuple(start_logits.shape)} and "
            f"{tuple(end_logits.shape)}."
        )
    if frame_mask is not None and (not isinstance(frame_mask, torch.Tensor) or frame_mask.shape != start_logits.shape):
        raise ValueError(f"frame_mask must be a tensor of the logits' shape {tuple(start_logits.shape)}, got "
                         f"{tuple(frame_mask.shape) if isinstance(frame_mask, torch.Tensor) else frame_mask!r}.")
    check_top_k(top_k)
    check_nms_threshold(nms_threshold)
    if frame_mask is not None:
        # Decoding reads a clip's real frames as its first mask.sum() frames (how every collator pads): a mask of
        # other values, or with padding first, would decode padding as frames.
        values = frame_mask.float()
        not_binary = (values != 0) & (values != 1)  # (batch, frames)
        padding_first = values[:, 1:] > values[:, :-1]  # a real frame after a padded one
        if bool(not_binary.any()) or bool(padding_first.any()):
            rows = sorted({int(r) for r in not_binary.nonzero()[:, 0].tolist()}
                          | {int(r) for r in padding_first.nonzero()[:, 0].tolist()})
            raise ValueError(f"frame_mask must be 1 for each clip's real frames and 0 for the padding after them "
                             f"(right padding); clip(s) {rows[:10]} are not.")
    real = frame_mask.bool() if frame_mask is not None else torch.ones_like(start_logits, dtype=torch.bool)
    for name, value in (("start_logits", start_logits), ("end_logits", end_logits)):
        check_finite_logits(name, value, real)


def check_finite_logits(name: str, value: torch.Tensor, real: Optional[torch.Tensor] = None) -> None:
    """Raise `ValueError` when `value` (batch, frames) or (frames,) holds NaN or Inf at real frames (`real`, a bool
    mask of its shape; None: every frame): a NaN scores every span NaN, and decoding would silently return no
    moment."""
    bad = ~torch.isfinite(value.float())
    if real is not None:
        bad &= real
    if bool(bad.any()):
        rows = sorted({int(r) for r in bad.reshape(-1, bad.shape[-1]).nonzero()[:, 0].tolist()})
        where = f"clip(s) {rows[:10]}" if value.dim() > 1 else "its frames"
        raise ValueError(f"{name} hold NaN or Inf at real frames of {where}; the model's output is broken (check "
                         "its inputs and weights).")


def check_top_k(top_k: Any) -> int:
    """`top_k` (spans or moments to return) as a whole number >= 1; a `ValueError` naming it otherwise."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}.")
    return int(top_k)


def check_max_span_frames(max_span_frames: Any) -> Optional[int]:
    """`max_span_frames` as a whole number of frames >= 1, or None; a `ValueError` naming it otherwise."""
    if max_span_frames is None:
        return None
    if isinstance(max_span_frames, bool) or not isinstance(max_span_frames, numbers.Integral) or max_span_frames < 1:
        raise ValueError(f"max_span_frames must be a whole number of frames >= 1 or None, got {max_span_frames!r}.")
    return int(max_span_frames)


def decode_frame_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    frame_mask: Optional[torch.Tensor] = None,
    top_k: int = 5,
    max_span_frames: Optional[int] = None,
    nms_threshold: Optional[float] = 0.5,
) -> list[list[FrameSpan]]:
    """Top-k spans per clip, in frame indices, by descending score p_start(i) * p_end(j).

    Args:
        start_logits, end_logits: (batch, frames).
        frame_mask: (batch, frames), 1 for real frames; None = all real.
        top_k: spans to return per clip (fewer when the clip has fewer distinct spans left after NMS).
        max_span_frames: longest span in frames (None = unlimited).
        nms_threshold: temporal NMS IoU threshold (on frame intervals `[i, j + 1)`); None = no NMS.

    Returns:
        One list per clip of `(first_frame, last_frame, score)`, best first; the first entry is the argmax span.
    """
    _check_decoding(start_logits, end_logits, frame_mask, top_k, nms_threshold)
    max_span_frames = check_max_span_frames(max_span_frames)
    lengths = (
        frame_mask.sum(dim=1).tolist() if frame_mask is not None else [start_logits.shape[1]] * start_logits.shape[0]
    )
    results = []
    for row, length in enumerate(int(n) for n in lengths):
        if length < 1:
            raise ValueError(f"Clip {row} has no real frames (frame_mask is all zero).")
        log_scores = span_log_scores(start_logits[row], end_logits[row], length, max_span_frames)
        spans = top_spans(log_scores, top_k, nms_threshold)
        results.append([(first, last, math.exp(score)) for first, last, score in spans])
    return results


def decode_moments(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    durations: list[float],
    frame_mask: Optional[torch.Tensor] = None,
    top_k: int = 5,
    max_span_seconds: Optional[float] = None,
    nms_threshold: Optional[float] = 0.5,
) -> list[list[Moment]]:
    """Top-k moments per clip in seconds: `decode_frame_spans`, then frame spans -> seconds.

    Args:
        durations: duration of each clip in seconds; frame i of a clip with n real frames covers
            `[i * d / n, (i + 1) * d / n)` (see `peft_vtg.timeline`).
        max_span_seconds: longest moment in seconds (converted per clip to frames, rounded up); None = unlimited.

    Returns:
        One list per clip of `(start_s, end_s, score)`, best first.
    """
    _check_decoding(start_logits, end_logits, frame_mask, top_k, nms_threshold)
    batch = start_logits.shape[0]
    if isinstance(durations, (str, bytes)) or not hasattr(durations, "__len__"):
        raise ValueError(f"durations must be a list of seconds, one per clip, got {durations!r}.")
    if len(durations) != batch:
        raise ValueError(f"durations has {len(durations)} entries for a batch of {batch} clips.")
    for row, duration in enumerate(durations):
        if isinstance(duration, torch.Tensor) and duration.numel() == 1:
            duration = duration.item()
        if isinstance(duration, bool) or not isinstance(duration, numbers.Real) or not is_finite_number(duration) \
                or duration <= 0:
            raise ValueError(f"durations[{row}] must be a finite number of seconds > 0, got {duration!r}.")
    if max_span_seconds is not None and (isinstance(max_span_seconds, bool)
                                         or not isinstance(max_span_seconds, numbers.Real)
                                         or not is_finite_number(max_span_seconds) or max_span_seconds <= 0):
        raise ValueError(f"max_span_seconds must be a finite number of seconds > 0 or None, got {max_span_seconds!r}.")
    lengths = frame_mask.sum(dim=1).tolist() if frame_mask is not None else [start_logits.shape[1]] * batch
    results = []
    for row in range(batch):
        length, duration = int(lengths[row]), float(durations[row])
        max_frames = None
        if max_span_seconds is not None:
            max_frames = max(1, int(-(-max_span_seconds * length // duration)))  # ceil without float surprises
        mask_row = frame_mask[row : row + 1] if frame_mask is not None else None
        (spans,) = decode_frame_spans(
            start_logits[row : row + 1], end_logits[row : row + 1], mask_row, top_k, max_frames, nms_threshold
        )
        results.append([(*frames_to_seconds(first, last, duration, length), score) for first, last, score in spans])
    return results


# ---------------------------------------------------------------- long videos: one video seen window by window
WindowSpan = tuple[int, int, float]  # (first_frame, last_frame inclusive, score) on the whole video's frame grid


def window_starts(total_frames: int, window_frames: int, stride_frames: int) -> list[int]:
    """First frame of each window of `window_frames` frames that together cover `total_frames` frames, `stride_frames`
    apart; the last window is moved back to end on the last frame. One window when the video fits in one."""
    if min(total_frames, window_frames, stride_frames) < 1:
        raise ValueError(f"total_frames, window_frames and stride_frames must be >= 1, got {total_frames}, "
                         f"{window_frames}, {stride_frames}.")
    if total_frames <= window_frames:
        return [0]
    starts = list(range(0, total_frames - window_frames + 1, stride_frames))
    if starts[-1] + window_frames < total_frames:
        starts.append(total_frames - window_frames)
    return starts


# Exponents of the long-video span score (`calibrated_spans`), chosen on 286 queries of three SynthVTG hours that the
# benchmark's hour does not share (BENCHMARKS.md, "An hour-long video"): the window's presence, squared, is what
# ranks the right window first most often; the span probability's square root keeps a confident boundary from
# outweighing it.
SPAN_PROBABILITY_EXPONENT = 0.5
WINDOW_PRESENCE_EXPONENT = 2.0


def window_presence(inside_logits: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How much of a clip the adapter sees the moment in: the mean inside probability (sigmoid of the inside logits)
    over the clip's real frames. `inside_logits` (..., frames), `frame_mask` the same shape or None (every frame
    real) -> (...). What `calibrated_spans` ranks a long video's windows by, and what the presence contrast trains
    (`VTGTaskHeads._presence_contrast_loss`)."""
    inside = torch.sigmoid(inside_logits.float())
    if frame_mask is None:
        return inside.mean(-1)
    real = frame_mask.float()
    return (inside * real).sum(-1) / real.sum(-1).clamp_min(1.0)


def calibrated_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    inside_logits: Optional[torch.Tensor],
    top_k: int,
    max_span_frames: Optional[int] = None,
    match_probability: Optional[float] = None,
    span_exponent: float = SPAN_PROBABILITY_EXPONENT,
    presence_exponent: float = WINDOW_PRESENCE_EXPONENT,
) -> list[FrameSpan]:
    """The best spans of one window, with scores comparable across windows.

    A window's start/end softmax sums to 1 whether or not the moment is in it, so its span probability alone ranks a
    window without the moment as high as the one with it. With inside logits (a per-frame "inside the moment"
    judgement, trained on windows without the moment as all-zero, see `LongVideoWindowCollator`) the score is

        p_span ** span_exponent  *  mean inside probability over the span  *  presence ** presence_exponent

    where `presence`, the mean inside probability over all of the window's frames, says how much of the window the
    adapter sees the moment in: a window the query has nothing to do with has it near 0 whatever its best span.
    Without inside logits the score is the span probability alone. Either way it is scaled by the window's
    video-text match probability when the adapter has a matching head (`match_probability`, see
    `match_probabilities`): those heads are trained with negatives, video and query that do not belong together.

    Args:
        start_logits, end_logits: (frames,) of one window; inside_logits: (frames,) or None.
        top_k: spans to keep (no NMS here: windows are merged first, then suppressed once over the video).
        max_span_frames: longest span, in frames (None: the whole window).
        match_probability: the window's match probability in [0, 1], or None.
        span_exponent, presence_exponent: the exponents above (defaults: `SPAN_PROBABILITY_EXPONENT`,
            `WINDOW_PRESENCE_EXPONENT`), numbers >= 0; `1.0, 0.0` is the span probability times the span's inside
            probability alone, without the window's presence.

    Returns:
        Up to `top_k` spans `(first_frame, last_frame, score)`, best first, frames inclusive and in the window.
    """
    for name, value in (("span_exponent", span_exponent), ("presence_exponent", presence_exponent)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < math.inf:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    check_top_k(top_k)
    max_span_frames = check_max_span_frames(max_span_frames)
    for name, value in (("start_logits", start_logits), ("end_logits", end_logits), ("inside_logits", inside_logits)):
        if value is not None:
            check_finite_logits(name, value)
    if match_probability is not None and not (is_finite_number(match_probability) and 0 <= match_probability <= 1):
        raise ValueError(f"match_probability must be a probability in [0, 1] or None, got {match_probability!r}; the "
                         "model's matching head output is broken (check its inputs and weights).")
    scores = span_log_scores(start_logits, end_logits, len(start_logits), max_span_frames)
    spans = top_spans(scores, top_k * 3, None)
    relevance = 1.0 if match_probability is None else float(match_probability)
    if inside_logits is None:
        return [(i, j, math.exp(score) * relevance) for i, j, score in spans[:top_k]]
    inside = torch.sigmoid(inside_logits.float())
    window = relevance * float(window_presence(inside_logits)) ** presence_exponent
    cumulative = torch.cat([inside.new_zeros(1), inside.cumsum(0)])  # mean over [i, j] from two lookups
    rescored = [(i, j, math.exp(span_exponent * score) * float((cumulative[j + 1] - cumulative[i]) / (j - i + 1))
                 * window) for i, j, score in spans]
    return sorted(rescored, key=lambda span: -span[2])[:top_k]


def match_probabilities(output: Any) -> Optional[torch.Tensor]:
    """Per row, the probability that video and query match, from the adapter's video-text matching heads (VIOLET:
    sigmoid of its logit; All-in-One: softmax of (mismatch, match); their mean when both exist), shape (batch,), or
    None for an adapter without them."""
    probabilities = []
    violet = getattr(output, "violet_vtm_logits", None)
    if violet is not None:
        probabilities.append(torch.sigmoid(violet.float()))
    all_in_one = getattr(output, "all_in_one_vtm_logits", None)
    if all_in_one is not None:
        probabilities.append(torch.softmax(all_in_one.float(), dim=-1)[:, 1])
    return torch.stack(probabilities).mean(dim=0) if probabilities else None


def merge_window_spans(
    per_window: list[list[WindowSpan]], starts: list[int], window_frames: int, max_open: int = 5
) -> list[WindowSpan]:
    """All windows' spans (already on the whole video's frame grid) plus the joins of spans cut by a window edge.

    A moment that crosses the end of window w is seen there as a span ending on w's last frame, and in window w+1
    (which overlaps w) as a span that starts inside the first one and runs on past it. Such pairs are joined into one
    span from the first's start to the second's end, scored with the weaker of the two (a join is no surer than its
    less sure half); a join that again ends on its window's last frame can be extended by the next window, so
    moments longer than a window are recovered. Joins are kept once per (start, end), and at most `max_open` spans,
    the best, stay open from one window to the next, so the work stays linear in the number of windows.
    """
    merged: dict[tuple[int, int], float] = {}

    def keep(first: int, last: int, score: float) -> None:
        if score > merged.get((first, last), float("-inf")):
            merged[(first, last)] = score

    open_spans: list[WindowSpan] = []  # spans (or joins) ending on the previous window's last frame
    for w, spans in enumerate(per_window):
        for span in spans:
            keep(*span)
        last_frame = starts[w] + window_frames - 1
        joined = []
        for first, last, score in open_spans:
            for start, end, other in spans:
                if first <= start <= last < end:  # starts inside the open span and runs on past it
                    joined.append((first, end, min(score, other)))
        for span in joined:
            keep(*span)
        ending = {(first, last): score for first, last, score in spans + joined if last >= last_frame}
        open_spans = sorted(((f, l, s) for (f, l), s in ending.items()), key=lambda span: -span[2])[:max_open]
    return [(first, last, score) for (first, last), score in merged.items()]
