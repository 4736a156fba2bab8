"""Batching: tokenized queries, videos padded to the longest in the batch with a frame mask, frame-space labels."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch

from ..timeline import check_clip_count, clip_scores_to_frames, is_finite_number, seconds_to_frames
from .video import (
    FeatureDirectory,
    H5FeatureFile,
    VideoSource,
    check_feature_array,
    check_num_frames,
    check_positive_int,
    duration_mismatch,
    resample_features,
    warn_duration_mismatches,
)


ROW_KEYS = ("qid", "vid", "query", "duration", "windows")


def check_tokenizer(tokenizer: Any) -> None:
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be the base model's tokenizer (e.g. AutoTokenizer.from_pretrained(base)), "
                         f"got {type(tokenizer).__name__}.")


def row_column(rows: Any, key: str) -> list[Any]:
    """`rows`' values of `key`: a `datasets.Dataset`'s column, or each mapping's entry of a list of rows."""
    return list(rows[key]) if hasattr(rows, "column_names") else [row[key] for row in rows]


def median_duration(rows: Any) -> float:
    """The median (upper middle) duration of `rows`' videos in seconds: the window an adapter trained on them
    records, and long videos are cut into."""
    durations = sorted(float(d) for d in row_column(rows, "duration"))
    return durations[len(durations) // 2]


# A datasets.Dataset in torch or numpy format gives tensors and arrays where rows hold numbers and lists.
_FORMATTED_HINT = (" A datasets.Dataset formatted with with_format('torch'/'numpy') gives tensors; give the rows as "
                   "Python values (dataset.with_format(None)).")


def check_rows(rows: Any) -> None:
    """Raise `ValueError` naming the row and the field unless `rows` are rows of the common schema (`qid, vid, query,
    duration, windows`, as `load_annotations` gives them) with a non-empty query, a finite duration > 0 and windows
    `[[start, end], ...]` of finite seconds with start <= end (an empty list or None: an unlabelled query)."""
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise ValueError(f"A batch must be a list of rows (mappings), got {type(rows).__name__}.")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"Row {i} of the batch is a {type(row).__name__}; rows are mappings with keys "
                             f"{list(ROW_KEYS)} (what load_annotations gives).")
        missing = [key for key in ROW_KEYS if key not in row]
        where = f"Row {i}" + (f" (qid {row['qid']!r})" if "qid" in row else "")
        if missing:
            raise ValueError(f"{where} has no {missing}; rows need {list(ROW_KEYS)} (what load_annotations gives).")
        if not isinstance(row["query"], str) or not row["query"].strip():
            raise ValueError(f"{where}: 'query' must be a non-empty string, got {row['query']!r}.")
        duration = row["duration"]
        if isinstance(duration, bool) or not isinstance(duration, numbers.Real) or not is_finite_number(duration) \
                or duration <= 0:
            raise ValueError(f"{where}: 'duration' must be a finite number of seconds > 0, got {duration!r}."
                             + _FORMATTED_HINT * isinstance(duration, (torch.Tensor, np.ndarray)))
        if has_highlight_labels(row):
            _check_highlight_labels(row, where)
        windows = row["windows"]
        if windows is None:
            continue
        if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
            raise ValueError(f"{where}: 'windows' must be a list of [start, end] windows, got {windows!r}."
                             + _FORMATTED_HINT * isinstance(windows, (torch.Tensor, np.ndarray)))
        for window in windows:
            ok = (isinstance(window, Sequence) and not isinstance(window, (str, bytes)) and len(window) == 2
                  and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and is_finite_number(v)
                          for v in window))
            if not ok or window[1] < window[0]:
                raise ValueError(f"{where}: 'windows' item {window!r} must be [start, end], finite seconds with "
                                 "start <= end; for a single window write [[start, end]].")
            if window[0] >= duration or window[1] < 0:  # its frame span would be clamped onto the video's edge
                raise ValueError(f"{where}: 'windows' item {list(window)!r} lies outside the video's {duration!r} s "
                                 "('duration'); fix the window or the duration (load_annotations clips windows to "
                                 "the video and drops those outside it).")


def has_highlight_labels(row: Mapping[str, Any]) -> bool:
    """Whether `row` has highlight labels: a non-empty `relevant_clip_ids` (a list, or any sized value, which
    `check_rows` then checks; `bool()` of a numpy array would raise)."""
    ids = row.get("relevant_clip_ids")
    return ids is not None and (len(ids) > 0 if hasattr(ids, "__len__") else True)


def _check_highlight_labels(row: Mapping[str, Any], where: str) -> None:
    ids, scores, clip_length = row["relevant_clip_ids"], row.get("saliency_scores"), row.get("clip_length")
    if isinstance(clip_length, bool) or not isinstance(clip_length, numbers.Real) or not is_finite_number(clip_length) \
            or clip_length <= 0:
        raise ValueError(f"{where}: highlight labels need 'clip_length', a finite number of seconds > 0 (2 for "
                         f"QVHighlights), got {clip_length!r}.")
    if isinstance(ids, (str, bytes, Mapping)) or not isinstance(ids, Sequence) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{where}: 'relevant_clip_ids' must be a list of clip indices (whole numbers >= 0), got "
                         f"{ids!r}.")
    # Whole clips only, as the annotation readers and the highlight metrics count them (QVHighlights: 75 in 150 s)
    clips = check_clip_count(float(row["duration"]), float(clip_length), f"{where}: 'clip_length'")
    beyond = [int(i) for i in ids if i >= clips]
    if beyond:
        raise ValueError(f"{where}: 'relevant_clip_ids' {beyond[:8]} lie beyond the video's {clips} clips of "
                         f"{clip_length!r} s ('duration' {row['duration']!r} s); fix the ids, the duration or "
                         "clip_length (load_annotations drops such clips).")
    if len(set(int(i) for i in ids)) != len(ids):
        raise ValueError(f"{where}: 'relevant_clip_ids' lists a clip twice: {list(ids)!r}; give each clip once.")
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence) or len(scores) != len(ids) or not all(
            isinstance(r, Sequence) and r and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                   and is_finite_number(v) for v in r) for r in scores):
        raise ValueError(f"{where}: 'saliency_scores' must hold one non-empty list of finite scores per relevant "
                         f"clip ({len(ids)}), got {scores!r}.")


def saliency_targets(row: Mapping[str, Any], num_frames: int) -> Optional[tuple[list[float], list[bool]]]:
    """Per-frame saliency targets of one row on a grid of `num_frames` frames: each clip's score is the mean over
    its annotators (0..4 for QVHighlights; clips outside `relevant_clip_ids` score 0), and a frame takes the mean of
    the clips its bin overlaps, weighted by the seconds of overlap (`peft_vtg.timeline.clip_scores_to_frames`).
    Returns `(targets, known)`, or None when the row has no highlight labels."""
    if not has_highlight_labels(row):
        return None
    ids = row["relevant_clip_ids"]
    duration, clip_length = float(row["duration"]), float(row["clip_length"])
    clips = np.zeros(max(int(math.ceil(duration / clip_length - 1e-9)), max(ids) + 1))
    for clip, scores in zip(ids, row["saliency_scores"]):
        clips[clip] = float(np.mean(scores))
    return clip_scores_to_frames(clips.tolist(), clip_length, duration, num_frames)


def check_max_text_length(tokenizer: Any, value: Any, name: str = "max_text_length") -> int:
    """`value` as a query length in tokens that leaves room for a word: more than the special tokens (BOS, EOS) the
    tokenizer adds to every query. Fewer would truncate every word away, and a length below the special tokens is
    ignored by the tokenizer (the query would go untruncated)."""
    value = check_positive_int(value, name, "tokens")
    special = getattr(tokenizer, "num_special_tokens_to_add", None)
    added = special() if callable(special) else 0
    if value <= added:
        raise ValueError(f"{name}={value} leaves no room for a word: the tokenizer adds {added} special token(s) to "
                         f"every query; give at least {added + 1}.")
    return value


def check_query_tokens(tokenizer: Any, input_ids: Any, attention_mask: Any, names: Sequence[str]) -> None:
    """Raise naming the query when it tokenizes to nothing but special tokens (BOS/EOS/padding): an empty or
    untokenizable query, or a max_text_length that truncates every word away; the model would ground nothing."""
    # The unknown-word token stands for a word (a query of rare words is still a query).
    special = set(getattr(tokenizer, "all_special_ids", None) or []) - {getattr(tokenizer, "unk_token_id", None)}
    if not special:
        return
    for name, ids, mask in zip(names, input_ids.tolist(), attention_mask.tolist()):
        if not any(m and t not in special for t, m in zip(ids, mask)):
            raise ValueError(f"{name} tokenizes to no word ({sum(mask)} special token(s) only): give a sentence the "
                             "tokenizer reads, or a larger max_text_length.")


def pad_videos(videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack videos of different lengths, zero-padded at the end to the longest.

    Args:
        videos: each (frames, dim) features or (frames, 3, H, W) frames, all of one kind.

    Returns:
        padded: (batch, longest, ...); frame_mask: (batch, longest) long, 1 for real frames.
    """
    if len({v.dim() for v in videos}) != 1:
        raise ValueError("The videos mix feature arrays and frames; use one kind of video input.")
    shapes = {tuple(v.shape[1:]) for v in videos}
    if len(shapes) > 1:
        raise ValueError(f"The videos of one batch must share their per-frame shape (only the number of frames may "
                         f"differ), got {sorted(shapes)}: features of another extractor, or frames of another size.")
    longest = max(v.shape[0] for v in videos)
    padded = videos[0].new_zeros((len(videos), longest) + tuple(videos[0].shape[1:]))
    frame_mask = torch.zeros(len(videos), longest, dtype=torch.long)
    for i, video in enumerate(videos):
        padded[i, : video.shape[0]] = video
        frame_mask[i, : video.shape[0]] = 1
    return padded, frame_mask


class GroundingCollator:
    """Turns rows of the common schema (`qid, vid, query, duration, windows`) into a `forward_grounding` batch.

    Args:
        tokenizer: a Hugging Face tokenizer for the base model's text encoder.
        video_source: vid -> per-frame features (frames, dim) or preprocessed frames (frames, 3, H, W); see
            `FeatureDirectory`, `H5FeatureFile`, `VideoFiles`. A source may name the `forward_grounding` argument its
            arrays go to (`batch_key`, e.g. "video_hidden_states" for `peft_vtg.cache.CachedVideoStates`, whose
            arrays are (frames, [layers,] tokens, hidden)) and constant entries for every batch (`batch_extras`, a mapping).
        num_frames: resample features to this many time bins (required for encoders with a fixed frame count,
            e.g. X-CLIP); None keeps each video's own length and pads to the longest in the batch.
        max_text_length: truncate queries to this many tokens (leave room for the text prompt tokens).

    The batch holds `input_ids`, `attention_mask`, `video_features` (features) or `pixel_values` (frames),
    `frame_mask` (1 = real frame), and, when every row has a window, `start_frames` / `end_frames`: the inclusive
    frame span of the row's first ground-truth window (`peft_vtg.timeline.seconds_to_frames` on the video's own
    number of frames). When some row has highlight labels (QVHighlights' `relevant_clip_ids` / `saliency_scores`),
    also `saliency_targets` (batch, frames), float, and `saliency_mask` (batch, frames), 1 where a target is known
    (see `saliency_targets`; rows without labels are all 0). `qid`, `video_ids`, `duration` (seconds) and `windows`
    are passed along for evaluation.

    Every video is checked as it is loaded: features must be finite (a NaN would silently make the loss NaN; the error
    names the video), and when the source records the decoded duration of its files (`VideoFiles`), a file much
    longer or shorter than its row's `duration` gets a warning naming the video (see
    `peft_vtg.data.video.DURATION_TOLERANCE_SECONDS`).
    """

    def __init__(
        self,
        tokenizer: Any,
        video_source: VideoSource,
        num_frames: Optional[int] = None,
        max_text_length: Optional[int] = None,
    ) -> None:
        check_tokenizer(tokenizer)
        if not callable(video_source):
            raise TypeError(f"video_source must be callable (vid -> features or frames: FeatureDirectory, VideoFiles, "
                            f"CachedVideoStates, or a function), got {type(video_source).__name__}.")
        if num_frames is not None:
            num_frames = check_num_frames(num_frames)
        if max_text_length is not None:
            max_text_length = check_max_text_length(tokenizer, max_text_length)
        self.tokenizer = tokenizer
        self.video_source = video_source
        self.num_frames = num_frames
        self.max_text_length = max_text_length
        self._duration_warned: set[str] = set()  # each mismatching video is named once, not once per epoch

    def _video(self, vid: str) -> torch.Tensor:
        return self._load_video(vid, self.num_frames)

    def _load_video(self, vid: str, num_frames: Optional[int]) -> torch.Tensor:
        """`vid`'s video from the source, checked; features resampled to `num_frames` time bins when given."""
        video = self.video_source(vid)
        video = torch.as_tensor(np.asarray(video)) if isinstance(video, np.ndarray) else video
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"The video source returned {type(video).__name__} for video {vid!r}; it must return "
                             "a tensor or an array.")
        if getattr(self.video_source, "batch_key", None) == "video_hidden_states":
            # Cached layer inputs (frames, tokens, hidden), or the last layers' outputs (frames, layers, tokens,
            # hidden), in the cache's dtype: the model casts them.
            if video.dim() not in (3, 4):
                raise ValueError(f"Video {vid!r}: cached hidden states must be (frames, tokens, hidden) or (frames, "
                                 f"layers, tokens, hidden), got shape {tuple(video.shape)}.")
            if num_frames is not None and video.shape[0] != num_frames:
                raise ValueError(f"Video {vid!r} was cached with {video.shape[0]} frames but num_frames="
                                 f"{num_frames}; leave num_frames unset or build the cache with that count.")
            if not bool(torch.isfinite(video).all()):
                raise ValueError(f"Video {vid!r}: its cached hidden states hold NaN or Inf values; rebuild the cache "
                                 "(a float16 cache overflows for encoders whose states exceed 65504: use bf16 or fp32).")
            return video
        if video.dim() == 2:  # features (frames, dim)
            if not isinstance(self.video_source, (FeatureDirectory, H5FeatureFile)):  # those check their files
                check_feature_array(video, f"video {vid!r}")
            if num_frames is not None and video.shape[0] != num_frames:
                return resample_features(video, num_frames)
            return video.float()
        if video.dim() == 4:  # frames (frames, 3, H, W)
            if video.shape[0] < 1 or video.shape[1] != 3:
                raise ValueError(f"Video {vid!r}: frames must be (frames >= 1, 3, H, W) RGB, got shape "
                                 f"{tuple(video.shape)}.")
            if num_frames is not None and video.shape[0] != num_frames:
                raise ValueError(
                    f"Video {vid!r} was decoded to {video.shape[0]} frames but num_frames={num_frames}; sample it "
                    "to that count in the video source (VideoFiles(num_frames=...))."
                )
            if not video.is_floating_point():  # raw pixels would reach the encoder unnormalised
                raise ValueError(f"Video {vid!r}: the video source returned {video.dtype} frames, raw pixels; return "
                                 "them preprocessed for the encoder (floats: peft_vtg.data.preprocess_frames, or "
                                 "VideoFiles, which decodes and preprocesses).")
            if not bool(torch.isfinite(video).all()):
                raise ValueError(f"Video {vid!r}: its frames hold NaN or Inf values.")
            return video
        raise ValueError(f"Video {vid!r}: expected features (frames, dim) or frames (frames, 3, H, W), got "
                         f"shape {tuple(video.shape)}.")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if rows is None or (isinstance(rows, Sequence) and not rows):
            raise ValueError("Cannot collate an empty batch.")
        check_rows(rows)
        videos = [self._video(row["vid"]) for row in rows]
        self._check_durations(rows)
        return self._batch(rows, videos)

    def _batch(self, rows: Sequence[Mapping[str, Any]], videos: Sequence[torch.Tensor]) -> dict[str, Any]:
        """The batch of `rows` (checked) whose clips are `videos` (each loaded by `_load_video`)."""
        padded, frame_mask = pad_videos(videos)
        lengths = [v.shape[0] for v in videos]
        text = self.tokenizer(
            [row["query"] for row in rows],
            padding=True,
            truncation=self.max_text_length is not None,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        check_query_tokens(self.tokenizer, text["input_ids"], text["attention_mask"],
                           [f"The query of row {i} (qid {row['qid']!r})" for i, row in enumerate(rows)])
        key = getattr(self.video_source, "batch_key", None) or ("video_features" if padded.dim() == 3
                                                                 else "pixel_values")
        batch: dict[str, Any] = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            key: padded,
            **dict(getattr(self.video_source, "batch_extras", None) or {}),
            "frame_mask": frame_mask,
            "qid": [row["qid"] for row in rows],
            "video_ids": [row["vid"] for row in rows],
            "duration": torch.tensor([float(row["duration"]) for row in rows], dtype=torch.float64),
            "windows": [row["windows"] for row in rows],
        }
        if all(row["windows"] for row in rows):
            spans = [
                seconds_to_frames(row["windows"][0][0], row["windows"][0][1], float(row["duration"]), length)
                for row, length in zip(rows, lengths)
            ]
            batch["start_frames"] = torch.tensor([s for s, _ in spans])
            batch["end_frames"] = torch.tensor([e for _, e in spans])
        per_row = [saliency_targets(row, length) for row, length in zip(rows, lengths)]
        if any(labels is not None for labels in per_row):
            targets = torch.zeros(frame_mask.shape, dtype=torch.float32)
            known = torch.zeros(frame_mask.shape, dtype=torch.long)
            for i, labels in enumerate(per_row):
                if labels is not None:
                    targets[i, : lengths[i]] = torch.tensor(labels[0], dtype=torch.float32)
                    known[i, : lengths[i]] = torch.tensor(labels[1], dtype=torch.long)
            batch["saliency_targets"], batch["saliency_mask"] = targets, known
        return batch

    def _check_durations(self, rows: Sequence[Mapping[str, Any]]) -> None:
        measured = getattr(self.video_source, "decoded_durations", None)
        if not isinstance(measured, Mapping):
            return
        mismatches = []
        for row in rows:
            vid, annotated = row["vid"], float(row["duration"])
            if vid in measured and vid not in self._duration_warned and duration_mismatch(annotated, measured[vid]):
                self._duration_warned.add(vid)
                mismatches.append((vid, annotated, float(measured[vid])))
        warn_duration_mismatches(mismatches, stacklevel=3)
