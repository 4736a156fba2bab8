"""SynthVTG splits as `datasets.Dataset` rows of the common schema, with their frames."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import datasets
import numpy as np
import torch

from ..data.annotations import HIGHLIGHT_FEATURES, QVHIGHLIGHTS_CLIP_SECONDS
from ..data.video import CLIP_MEAN, CLIP_STD, preprocess_frames
from .generator import (FRAME_SIZE, SynthVideo, generate_clip, generate_object_frame, generate_scene_frame,
                        generate_video, held_out_combinations, render_domain)
from .text import describe

SPLITS = ("train", "val", "test")
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000, "pretrain": 3_000_000, "objects": 4_000_000,
                "scenes": 5_000_000}
SYNTH_FEATURES = datasets.Features({**HIGHLIGHT_FEATURES, "held_out": datasets.Value("bool")})
# How sharply each of the three simulated annotators prefers the middle of an event (see `highlight_labels`).
ANNOTATOR_PEAKS = (0.25, 0.5, 0.75)


def highlight_labels(window: list[float], duration: float, clip_length: float = QVHIGHLIGHTS_CLIP_SECONDS,
                     ) -> tuple[list[int], list[list[float]]]:
    """QVHighlights-style highlight labels of a queried event spanning `window` (seconds): the whole clips of
    `clip_length` seconds that overlap it, each scored 0..4 by three simulated annotators.

    Annotator `a` gives clip c `4 * inside * (1 - peak_a * distance)`, rounded half up: `inside` is the fraction
    of the clip within the event, `distance` how far the clip's centre lies from the event's centre, in
    half-lengths of the event (0 at the centre, 1 at its edges), and `peak_a` in `ANNOTATOR_PEAKS`. The middle of
    an action shows it best, partly covered clips less, and the annotators agree on the order but not on the
    grades, as real ones do.
    """
    start, end = window
    centre, half = (start + end) / 2, max((end - start) / 2, 1e-9)
    ids, scores = [], []
    # Whole clips only, as QVHighlights counts them (int(duration / clip_length)); a tail shorter than a clip has
    # no label, as Moment-DETR's evaluator assumes.
    last = min(int(np.ceil(end / clip_length - 1e-9)), int(duration / clip_length))
    for clip in range(int(start // clip_length), last):
        low, high = clip * clip_length, (clip + 1) * clip_length
        inside = max(0.0, min(high, end) - max(low, start)) / (high - low)
        if inside <= 0:
            continue
        distance = min(1.0, abs((low + high) / 2 - centre) / half)
        ids.append(clip)
        scores.append([float(np.floor(4 * inside * (1 - peak * distance) + 0.5)) for peak in ANNOTATOR_PEAKS])
    return ids, scores


def pixel_values(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (frames, 32, 32, 3) -> normalised float (frames, 3, 32, 32) for the backbone (CLIP statistics)."""
    return preprocess_frames(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), image_size=FRAME_SIZE)


class FrameSource:
    """vid -> preprocessed frames, for `GroundingCollator`, over generated videos held in memory.

    With `num_frames`, each video is sampled at the centres of `num_frames` equal time bins (the frame convention of
    `peft_vtg.timeline`), so every clip has the same length and labels stay consistent.

    `num_frames`, `fps` and `preprocess` describe the sampling and preprocessing as `VideoFiles` does, so a
    frozen-prefix cache (`peft_vtg.cache.build_cache`) can record them.
    """

    fps = None  # frames are picked by count, never by rate

    def __init__(self, videos: dict[str, SynthVideo], num_frames: Optional[int] = None) -> None:
        self.videos = videos
        self.num_frames = num_frames
        # What `pixel_values` does: the keyword arguments of `preprocess_frames`.
        self.preprocess = {"image_size": FRAME_SIZE, "mean": CLIP_MEAN, "std": CLIP_STD, "processor": None}

    def __call__(self, vid: str) -> torch.Tensor:
        frames = self.videos[vid].frames
        if self.num_frames is not None:
            picks = ((np.arange(self.num_frames) + 0.5) * len(frames) / self.num_frames).astype(int)
            frames = frames[np.minimum(picks, len(frames) - 1)]
        return pixel_values(frames)


@dataclass
class SynthVTG:
    """The SynthVTG benchmark, generated on the fly and deterministic from `seed`.

    Args:
        seed: master seed; the same seed gives the same videos, queries and moments.
        num_videos: videos per split, e.g. `{"train": 600, "val": 100, "test": 200}`.
        queries_per_video: queries drawn from each video's events (distinct events).
        domain: how every video and clip looks (`peft_vtg.synth.generator.DOMAINS`): "plain", the domain the shipped
            backbone was pre-trained on, or "cluttered", a shifted one. Events, moments and queries do not depend
            on it.
    """

    seed: int = 0
    num_videos: Optional[dict[str, int]] = None
    queries_per_video: int = 2
    domain: str = "plain"

    def __post_init__(self) -> None:
        render_domain(self.domain)  # an unknown domain fails here, not after minutes of generation
        self.num_videos = {"train": 600, "val": 100, "test": 200, **(self.num_videos or {})}
        self.held_out = held_out_combinations()

    def _video_seed(self, split: str, index: int) -> int:
        return self.seed * 10_000_019 + _SPLIT_OFFSET[split] + index

    def split(self, name: str) -> tuple[datasets.Dataset, dict[str, SynthVideo]]:
        """Rows (`qid, vid, query, duration, windows, held_out`, and the highlight labels `relevant_clip_ids`,
        `saliency_scores`, `clip_length` of `highlight_labels`) and the generated videos by vid.

        Train and val videos never contain a held-out (colour, shape, action) event; test videos may, and their
        queries favour those events (`held_out` marks them).
        """
        if name not in SPLITS:
            raise ValueError(f"SynthVTG has splits {SPLITS}, not {name!r}.")
        excluded = frozenset() if name == "test" else self.held_out
        rng = random.Random(self._video_seed(name, -1))
        rows: dict[str, list] = {key: [] for key in SYNTH_FEATURES}
        videos: dict[str, SynthVideo] = {}
        for index in range(self.num_videos[name]):
            vid = f"{name}{index:05d}"
            video = generate_video(vid, self._video_seed(name, index), excluded, domain=self.domain)
            videos[vid] = video
            # Held-out events first, so the test split queries them whenever a video has one.
            events = sorted(video.events, key=lambda e: (video.triple(e) not in self.held_out, rng.random()))
            for k, event in enumerate(events[: self.queries_per_video]):
                colour, shape, action = video.triple(event)
                rows["qid"].append(f"{vid}_{k}")
                rows["vid"].append(vid)
                rows["query"].append(describe(colour, shape, action, rng))
                rows["duration"].append(video.duration)
                rows["windows"].append([video.window(event)])
                rows["held_out"].append(video.triple(event) in self.held_out)
                clip_ids, saliency = highlight_labels(video.window(event), video.duration)
                rows["relevant_clip_ids"].append(clip_ids)
                rows["saliency_scores"].append(saliency)
                rows["clip_length"].append(QVHIGHLIGHTS_CLIP_SECONDS)
        return datasets.Dataset.from_dict(rows, features=SYNTH_FEATURES), videos

    def splits(self) -> tuple[dict[str, datasets.Dataset], dict[str, SynthVideo]]:
        """Every split's rows by split name, and the videos of all splits by vid (for one `FrameSource`)."""
        generated = {name: self.split(name) for name in SPLITS}
        videos = {vid: video for _, split_videos in generated.values() for vid, video in split_videos.items()}
        return {name: rows for name, (rows, _) in generated.items()}, videos

    def pretraining_clips(self, count: int, num_frames: int = 16) -> list[tuple[np.ndarray, str, tuple]]:
        """Trimmed (frames, caption, triple) clips for pre-training a backbone; no held-out combination appears."""
        return [generate_clip(self._video_seed("pretrain", i), self.held_out, num_frames, self.domain)
                for i in range(count)]

    def object_frames(self, count: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """`count` frames (count, 32, 32, 3) uint8 of one static actor each, and their (colour, shape), for the
        backbone's attribute term (`generate_object_frame`)."""
        return self._labelled_frames("objects", generate_object_frame, count)

    def scene_frames(self, count: int) -> tuple[np.ndarray, list[list[tuple[str, str]]]]:
        """`count` frames (count, 32, 32, 3) uint8 of two to four static actors each, and every actor's (colour,
        shape), for the backbone's scene term (`generate_scene_frame`)."""
        return self._labelled_frames("scenes", generate_scene_frame, count)

    def _labelled_frames(self, kind: str, generate: Callable[[int, str], tuple[np.ndarray, Any]], count: int
                         ) -> tuple[np.ndarray, list]:
        """`count` frames of `generate(seed, domain)` seeded from the split offset of `kind`: the frames stacked
        (count, 32, 32, 3) uint8 and their labels in order."""
        frames, labels = zip(*(generate(self._video_seed(kind, i), self.domain) for i in range(count)))
        return np.stack(frames), list(labels)
