"""Batching: tokenized queries, videos padded to the longest in the batch with a frame mask, frame-space labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch

from ..timeline import seconds_to_frames
from .video import (
    FeatureDirectory,
    H5FeatureFile,
    VideoSource,
    check_feature_array,
    check_num_frames,
    duration_mismatch,
    resample_features,
    warn_duration_mismatches,
)


def pad_videos(videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack videos of different lengths, zero-padded at the end to the longest.

    Args:
        videos: each (frames, dim) features or (frames, 3, H, W) frames, all of one kind.

    Returns:
        padded: (batch, longest, ...); frame_mask: (batch, longest) long, 1 for real frames.
    """
    if len({v.dim() for v in videos}) != 1:
        raise ValueError("The videos mix feature arrays and frames; use one kind of video input.")
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
            `FeatureDirectory`, `H5FeatureFile`, `VideoFiles`.
        num_frames: resample features to this many time bins (required for encoders with a fixed frame count,
            e.g. X-CLIP); None keeps each video's own length and pads to the longest in the batch.
        max_text_length: truncate queries to this many tokens (leave room for the text prompt tokens).

    The batch holds `input_ids`, `attention_mask`, `video_features` (features) or `pixel_values` (frames),
    `frame_mask` (1 = real frame), and, when every row has a window, `start_frames` / `end_frames`: the inclusive
    frame span of the row's first ground-truth window (`peft_vtg.timeline.seconds_to_frames` on the video's own
    number of frames). `qid`, `video_ids`, `duration` (seconds) and `windows` are passed along for evaluation.

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
        if num_frames is not None:
            num_frames = check_num_frames(num_frames)
        if max_text_length is not None:
            max_text_length = check_num_frames(max_text_length, "max_text_length")
        self.tokenizer = tokenizer
        self.video_source = video_source
        self.num_frames = num_frames
        self.max_text_length = max_text_length
        self._duration_warned: set[str] = set()  # each mismatching video is named once, not once per epoch

    def _video(self, vid: str) -> torch.Tensor:
        video = self.video_source(vid)
        video = torch.as_tensor(np.asarray(video)) if isinstance(video, np.ndarray) else video
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"The video source returned {type(video).__name__} for video {vid!r}; it must return "
                             "a tensor or an array.")
        if video.dim() == 2:  # features (frames, dim)
            if not isinstance(self.video_source, (FeatureDirectory, H5FeatureFile)):  # those check their files
                check_feature_array(video, f"video {vid!r}")
            if self.num_frames is not None and video.shape[0] != self.num_frames:
                return resample_features(video, self.num_frames)
            return video.float()
        if video.dim() == 4:  # frames (frames, 3, H, W)
            if self.num_frames is not None and video.shape[0] != self.num_frames:
                raise ValueError(
                    f"Video {vid!r} was decoded to {video.shape[0]} frames but num_frames={self.num_frames}; sample it "
                    "to that count in the video source (VideoFiles(num_frames=...))."
                )
            if video.is_floating_point() and not bool(torch.isfinite(video).all()):
                raise ValueError(f"Video {vid!r}: its frames hold NaN or Inf values.")
            return video
        raise ValueError(f"Video {vid!r}: expected features (frames, dim) or frames (frames, 3, H, W), got "
                         f"shape {tuple(video.shape)}.")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        videos = [self._video(row["vid"]) for row in rows]
        self._check_durations(rows)
        padded, frame_mask = pad_videos(videos)
        lengths = [v.shape[0] for v in videos]
        text = self.tokenizer(
            [row["query"] for row in rows],
            padding=True,
            truncation=self.max_text_length is not None,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        batch: dict[str, Any] = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "video_features" if padded.dim() == 3 else "pixel_values": padded,
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
