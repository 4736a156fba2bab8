"""Training on the windows that long videos are grounded in: `LongVideoWindowCollator`.

`peft_vtg.ground` cuts a long video into windows of the trained length, scores each window's best spans, and keeps
the best-scored spans of the whole video. An adapter trained only on whole short videos has never seen a clip that
does not hold its query's moment, nor one that starts or ends in the middle of another scene: its scores say which
span of a clip fits best, not whether the clip holds the moment at all, so across the windows of an hour the right
window's span is outscored by other windows' (BENCHMARKS.md, "An hour-long video"). This collator trains on what
inference sees: the training videos are put one after another (each row's video between other rows' videos, as in
a long recording), a window of `window_seconds` is cut from that stream at the inference rate, and the window either
holds the row's moment (a span target in window frames) or does not (`moment_present` False: no span target, and
every frame's inside target is 0; see `peft_vtg.heads.grounding.grounding_loss`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from ..timeline import is_finite_number
from .collate import GroundingCollator, check_rows, median_duration, row_column
from .video import VideoSource, check_num_frames


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}.")
    return float(value)


class LongVideoWindowCollator(GroundingCollator):
    """`GroundingCollator` whose clips are windows of a long video made of the training videos one after another.

    For each row: with probability `1 - window_fraction` its whole video, sampled to `window_frames` frames (what
    `GroundingCollator(num_frames=window_frames)` gives); otherwise a window of `window_seconds` sampled at
    `window_frames / window_seconds` frames per second, the rate `ground` samples long videos at, cut from the row's
    video with randomly drawn other videos of `rows` before and after it. Of the windows, `absent_fraction` do not
    overlap the row's moment (a hard negative: mostly the row's own video before or after the moment, and its
    neighbours) and are labelled `moment_present=False`; the others hold the whole moment, placed uniformly at random.
    A moment longer than the window, or a video whose neighbours cannot make a window without the moment, falls
    back to the whole video.

    Args:
        tokenizer, video_source, max_text_length: as for `GroundingCollator`. The source must give each video's
            frames (or per-frame features) over its whole duration at its own rate, not resampled to a fixed count:
            e.g. `VideoFiles(fps=...)`, `FeatureDirectory`, `FrameSource` without `num_frames`.
        rows: the training rows (`vid`, `duration`): the videos that neighbours are drawn from.
        window_frames: frames per window and per whole video (the adapter's trained frames).
        window_seconds: the window's length; default the median duration of `rows`' videos, what training records
            as the adapter's window (`trained_window_seconds`) and `ground` cuts long videos into.
        window_fraction: fraction of rows given as a window rather than their whole video.
        absent_fraction: fraction of the windows that do not hold the row's moment.
        seed: with the epoch (`set_epoch`) and the row's `qid`, what each row's draw is made from.

    Each row's draw (whole video or window, with or without the moment, where, which neighbours) is a function of
    (`seed`, epoch, `qid`) alone, not of a shared random stream: a run resumed from a checkpoint, data loaders that
    fetch batches ahead, and several processes each collating their shard all draw the same windows. The training
    loop calls `set_epoch` at each epoch; a loop of your own should too, or every epoch draws the same windows.

    A neighbour video may happen to show the row's query too (another instance of the same action); such a window
    is still labelled as absent. Rows' highlight labels are kept only for whole videos (a window's clips are not the
    video's); with video-text matching heads, a window without the row's moment is a mismatched pair (label 0), so
    the match probability that `ground` scales each window's spans by learns whether the window holds the moment.
    """

    def __init__(
        self,
        tokenizer: Any,
        video_source: VideoSource,
        rows: Sequence[Mapping[str, Any]],
        window_frames: int,
        window_seconds: Optional[float] = None,
        window_fraction: float = 0.5,
        absent_fraction: float = 0.5,
        max_text_length: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        window_frames = check_num_frames(window_frames)
        super().__init__(tokenizer, video_source, num_frames=window_frames, max_text_length=max_text_length)
        self.window_fraction = _check_fraction(window_fraction, "window_fraction")
        self.absent_fraction = _check_fraction(absent_fraction, "absent_fraction")
        vids, durations = row_column(rows, "vid"), row_column(rows, "duration")
        self.durations: dict[str, float] = {}
        for vid, duration in zip(vids, durations):
            if not isinstance(duration, (int, float)) or not is_finite_number(duration) or duration <= 0:
                raise ValueError(f"rows: video {vid!r} has duration {duration!r}; durations must be seconds > 0.")
            self.durations[str(vid)] = float(duration)
        if len(self.durations) < 2:
            raise ValueError(f"rows must hold at least 2 videos to put side by side, got {len(self.durations)}.")
        self.vids = sorted(self.durations)
        if window_seconds is None:
            window_seconds = median_duration(rows)
        if isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float)) \
                or not is_finite_number(window_seconds) or window_seconds <= 0:
            raise ValueError(f"window_seconds must be a number of seconds > 0, got {window_seconds!r}.")
        self.window_seconds = float(window_seconds)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be a whole number, got {seed!r}.")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's windows (called by the training loop at the start of each epoch)."""
        self.epoch = int(epoch)

    def _generator(self, row: Mapping[str, Any]) -> torch.Generator:
        key = f"{self.seed}:{self.epoch}:{row['qid']}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    def for_evaluation(self) -> GroundingCollator:
        """The collator evaluation uses (the training loop calls it): every row's whole video at `window_frames`,
        with no random draw, as `ground` takes a short video."""
        return _WholeVideoCollator(self)

    # ------------------------------------------------------------------ sampling
    def _neighbours(self, vid: str, seconds: float, generator: torch.Generator) -> list[str]:
        """Random videos of other ids lasting together at least `seconds`."""
        chosen: list[str] = []
        total = 0.0
        while total < seconds:
            other = self.vids[int(torch.randint(len(self.vids), (), generator=generator))]
            if other == vid:
                continue
            chosen.append(other)
            total += self.durations[other]
        return chosen

    def _window(self, row: Mapping[str, Any]) -> Optional[tuple[list[tuple[str, float, float]], float, bool]]:
        """A window for `row`: (the stream's videos `(vid, offset_s, duration_s)`, the window's start in the stream
        in seconds, whether it holds the moment), or None when this row takes its whole video."""
        generator = self._generator(row)
        draws = torch.rand(4, generator=generator).tolist()  # window?, holds the moment?, where, which side
        if draws[0] >= self.window_fraction or not row["windows"]:
            return None
        length = self.window_seconds
        duration = float(row["duration"])
        start, end = (float(t) for t in row["windows"][0])
        start, end = max(0.0, min(start, duration)), max(0.0, min(end, duration))
        if end - start > length:
            return None
        before = self._neighbours(row["vid"], length, generator)
        after = self._neighbours(row["vid"], length, generator)
        stream: list[tuple[str, float, float]] = []
        offset = 0.0
        for vid in list(reversed(before)) + [row["vid"]] + after:
            seconds = self.durations[vid] if vid != row["vid"] else duration
            stream.append((vid, offset, seconds))
            offset += seconds
        here = len(before)
        moment_start, moment_end = stream[here][1] + start, stream[here][1] + end
        last = offset - length  # the latest window start inside the stream
        present = draws[1] >= self.absent_fraction
        if present:
            low, high = max(0.0, moment_end - length), min(last, moment_start)
            return stream, low + draws[2] * max(0.0, high - low), True
        # Window starts that miss the moment: [0, moment_start - length] and [moment_end, last].
        left, right = max(0.0, moment_start - length), max(0.0, last - moment_end)
        if left + right <= 0:
            return None
        draw = draws[3] * (left + right)
        return stream, (draw if draw < left else moment_end + (draw - left)), False

    def _window_clip(self, stream: list[tuple[str, float, float]], window_start: float) -> torch.Tensor:
        """The window's `window_frames` frames (bin centres), each from the stream video it falls in."""
        step = self.window_seconds / self.num_frames
        times = [window_start + (k + 0.5) * step for k in range(self.num_frames)]
        loaded: dict[str, torch.Tensor] = {}  # by vid: a neighbour drawn twice is read once
        frames = []
        for t in times:
            index = next((i for i, (_, offset, seconds) in enumerate(stream) if t < offset + seconds),
                         len(stream) - 1)
            vid, offset, seconds = stream[index]
            if vid not in loaded:
                loaded[vid] = self._load_video(vid, None)  # the whole video at its own rate
            video = loaded[vid]
            position = int((t - offset) / seconds * video.shape[0])
            frames.append(video[min(max(position, 0), video.shape[0] - 1)])
        return torch.stack(frames)

    def _whole_clip(self, vid: str) -> torch.Tensor:
        video = self._load_video(vid, None)
        picks = ((torch.arange(self.num_frames) + 0.5) * video.shape[0] / self.num_frames).long()
        return video[picks.clamp_max(video.shape[0] - 1)]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if rows is None or (isinstance(rows, Sequence) and not rows):
            raise ValueError("Cannot collate an empty batch.")
        check_rows(rows)
        clips, clip_rows, present = [], [], []
        for row in rows:
            window = self._window(row)
            if window is None:
                clips.append(self._whole_clip(row["vid"]))
                clip_rows.append(row)
                present.append(True)
                continue
            stream, window_start, holds = window
            clips.append(self._window_clip(stream, window_start))
            if holds:
                offset = next(o for vid, o, _ in stream if vid == row["vid"])
                start, end = (float(t) + offset - window_start for t in row["windows"][0])
                windows = [[max(0.0, start), min(self.window_seconds, end)]]
            else:
                windows = [[0.0, 0.0]]  # placeholder: moment_present=False drops its span target
            clip_rows.append({**row, "duration": self.window_seconds, "windows": windows,
                              "relevant_clip_ids": [], "saliency_scores": [], "clip_length": None})
            present.append(holds)
        self._check_durations(rows)
        batch = self._batch(clip_rows, clips)
        batch["moment_present"] = torch.tensor(present, dtype=torch.bool)
        batch["windows"] = [row["windows"] if keep else [] for row, keep in zip(clip_rows, present)]
        return batch


class _WholeVideoCollator(GroundingCollator):
    """Each row's whole video sampled to the window collator's `window_frames` (bin centres), nothing drawn."""

    def __init__(self, windows: LongVideoWindowCollator) -> None:
        super().__init__(windows.tokenizer, windows.video_source, num_frames=windows.num_frames,
                         max_text_length=windows.max_text_length)
        self._windows = windows

    def _video(self, vid: str) -> torch.Tensor:
        return self._windows._whole_clip(vid)
