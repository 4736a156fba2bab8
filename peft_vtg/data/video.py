"""Video sources: pre-extracted per-video features and raw video files decoded to frames.

Time convention (see `peft_vtg.timeline`): a video of duration d seconds represented by T features or frames is split
into T equal bins; feature / frame i stands for `[i * d / T, (i + 1) * d / T)`. Decoded frames are taken at the
bins' centres.

Nothing here unpickles: `.npy` / `.npz` are read with `allow_pickle=False`, the other formats cannot hold pickles.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch
from torch.nn import functional as F

PathLike = Union[str, os.PathLike]

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors", ".h5", ".hdf5")
# CLIP's image normalisation, the default when no image processor is given.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoSource(Protocol):
    """Anything that maps a video id to its per-frame features (frames, dim) or frames (frames, 3, H, W)."""

    def __call__(self, vid: str) -> Union[np.ndarray, torch.Tensor]: ...


def _single_key(keys: Sequence[str], key: Optional[str], path: PathLike) -> str:
    if key is not None:
        if key not in keys:
            raise KeyError(f"{path} has no array {key!r}; it has {list(keys)}.")
        return key
    if len(keys) != 1:
        raise ValueError(f"{path} holds several arrays {list(keys)}; pass key= to choose one.")
    return keys[0]


def load_feature_file(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Per-frame features (frames, dim) of one video from `.npy`, `.npz`, `.safetensors` or `.h5`/`.hdf5`.

    `.npy` is memory-mapped (only the rows used are read); `.h5` is read lazily by h5py; `.npz` and `.safetensors`
    are read in full (they are per-video files, so that is one video's features).
    """
    name = os.fspath(path)
    try:
        array = _read_array(name, key)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Python objects" in str(err):
            raise ValueError(
                f"{name} holds pickled Python objects; peft_vtg never unpickles feature files (allow_pickle=False), "
                "since unpickling can run code. Save the features as a numeric (frames, dim) array."
            ) from err
        raise
    if array.ndim != 2:
        raise ValueError(f"{name}: features must be (frames, dim), got shape {array.shape}.")
    return array


def _read_array(name: str, key: Optional[str]) -> np.ndarray:
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".npy":
        array = np.load(name, mmap_mode="r", allow_pickle=False)
    elif suffix == ".npz":
        with np.load(name, allow_pickle=False) as archive:
            array = archive[_single_key(list(archive.keys()), key, name)]
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(name, framework="np") as handle:
            array = handle.get_tensor(_single_key(list(handle.keys()), key, name))
    elif suffix in (".h5", ".hdf5"):
        h5py = _import_h5py()
        with h5py.File(name, "r") as handle:
            array = handle[_single_key(list(handle.keys()), key, name)][()]
    else:
        raise ValueError(f"{name}: unsupported feature format {suffix!r}; use one of {FEATURE_SUFFIXES}.")
    return array


def _import_h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Reading .h5 features needs h5py: pip install 'peft-vtg[h5]'.") from err
    return h5py


class FeatureDirectory:
    """Per-video feature files `{root}/{vid}{suffix}`, e.g. `features/3MSZA.npy`.

    Args:
        root: the directory.
        suffix: the file suffix; None finds it per video among `FEATURE_SUFFIXES`.
        key: array name inside `.npz` / `.safetensors` / `.h5` files holding several arrays.
    """

    def __init__(self, root: PathLike, suffix: Optional[str] = None, key: Optional[str] = None) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Feature directory {root} does not exist.")
        if suffix is not None and suffix not in FEATURE_SUFFIXES:
            raise ValueError(f"suffix={suffix!r} is not a feature format; use one of {FEATURE_SUFFIXES}.")
        self.root, self.suffix, self.key = os.fspath(root), suffix, key

    def path(self, vid: str) -> str:
        for suffix in (self.suffix,) if self.suffix else FEATURE_SUFFIXES:
            candidate = os.path.join(self.root, vid + suffix)
            if os.path.exists(candidate):
                return candidate
        raise FileNotFoundError(f"No features for video {vid!r} in {self.root} (looked for {vid}{self.suffix or '.*'}).")

    def __call__(self, vid: str) -> np.ndarray:
        return load_feature_file(self.path(vid), self.key)


class H5FeatureFile:
    """One HDF5 file with a dataset per video id (the layout of many released feature sets); read lazily."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._handle = None

    def __call__(self, vid: str) -> np.ndarray:
        if self._handle is None:  # opened on first use, so the object can be sent to DataLoader workers
            self._handle = _import_h5py().File(self.path, "r")
        if vid not in self._handle:
            raise KeyError(f"{self.path} has no features for video {vid!r}.")
        array = self._handle[vid][()]
        if array.ndim != 2:
            raise ValueError(f"{self.path}[{vid!r}]: features must be (frames, dim), got shape {array.shape}.")
        return array

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_handle": None}


def durations_from_features(source: VideoSource, vids: Sequence[str], features_per_second: float) -> dict[str, float]:
    """Video durations (seconds) from feature lengths: `num_features / features_per_second`, for readers that need
    durations the annotation file lacks (Charades-STA without its csv)."""
    if not features_per_second > 0:
        raise ValueError(f"features_per_second must be > 0, got {features_per_second!r}.")
    return {vid: len(source(vid)) / features_per_second for vid in dict.fromkeys(vids)}


def resample_features(features: Union[np.ndarray, torch.Tensor], num_frames: int) -> torch.Tensor:
    """Average (frames, dim) features into `num_frames` equal time bins (or repeat rows when there are fewer).

    Bin k averages the rows whose time bins overlap `[k * T / num_frames, (k + 1) * T / num_frames)`, so the time
    convention is kept. Returns float32 (num_frames, dim).
    """
    source = torch.as_tensor(np.asarray(features, dtype=np.float32))
    length = source.shape[0]
    if length == 0:
        raise ValueError("Cannot resample an empty feature array.")
    out = torch.empty(num_frames, source.shape[1])
    for k in range(num_frames):
        start = int(np.floor(k * length / num_frames))
        end = max(start + 1, int(np.ceil((k + 1) * length / num_frames)))
        out[k] = source[start:min(end, length)].mean(dim=0)
    return out


# ---------------------------------------------------------------- raw video
def sample_times(duration: float, num_frames: int) -> np.ndarray:
    """Times (seconds) of the `num_frames` bin centres of a video of `duration` seconds."""
    return (np.arange(num_frames) + 0.5) * duration / num_frames


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Decoding video files needs PyAV: pip install 'peft-vtg[video]'.") from err
    return av


def decode_video(
    path: PathLike, num_frames: Optional[int] = None, fps: Optional[float] = None
) -> tuple[torch.Tensor, float]:
    """Decode a video file with PyAV into frames at the bin centres.

    Give `num_frames` (a fixed count, as X-CLIP needs) or `fps` (count = round(duration * fps), at least 1).

    Returns:
        frames: uint8 (frames, 3, height, width), RGB.
        duration: seconds.
    """
    if (num_frames is None) == (fps is None):
        raise ValueError("Give exactly one of num_frames and fps.")
    av = _av()
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"Video file {name} does not exist.")
    with av.open(name) as container:
        stream = container.streams.video[0]
        decoded = [(float(frame.time), frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = 0.0
    if not decoded:
        raise ValueError(f"{name} has no decodable video frames.")
    if duration <= 0:  # containers without a duration: last frame time + one frame period
        times = [t for t, _ in decoded]
        duration = times[-1] + (times[-1] - times[0]) / max(len(times) - 1, 1)
    count = num_frames if num_frames is not None else max(1, int(round(duration * fps)))
    times = np.array([t for t, _ in decoded])
    # The decoded frame showing each target time: the last frame starting at or before it.
    picks = np.clip(np.searchsorted(times, sample_times(duration, count), side="right") - 1, 0, len(decoded) - 1)
    frames = np.stack([decoded[i][1] for i in picks])  # (count, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), duration


def preprocess_frames(
    frames: torch.Tensor,
    image_size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    processor: Optional[Any] = None,
) -> torch.Tensor:
    """uint8 (frames, 3, H, W) -> float (frames, 3, image_size, image_size) as the encoder expects.

    With a Hugging Face image processor (e.g. `CLIPImageProcessor`), it does the resizing and normalisation; otherwise
    the short side is resized to `image_size`, the centre is cropped, and `mean`/`std` normalise (CLIP's defaults).
    """
    if processor is not None:
        return processor(images=list(frames), return_tensors="pt")["pixel_values"]
    x = frames.float() / 255.0
    height, width = x.shape[-2:]
    scale = image_size / min(height, width)
    size = (max(image_size, round(height * scale)), max(image_size, round(width * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    x = x[:, :, top : top + image_size, left : left + image_size]
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class VideoFiles:
    """Raw videos `{root}/{vid}{suffix}`, decoded and preprocessed for the encoder on access.

    Args:
        root: the directory of video files.
        num_frames / fps: how to sample each video (exactly one).
        image_size, mean, std, processor: see `preprocess_frames`.
        suffix: the video file suffix.
    """

    def __init__(
        self,
        root: PathLike,
        num_frames: Optional[int] = None,
        fps: Optional[float] = None,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        processor: Optional[Any] = None,
        suffix: str = ".mp4",
    ) -> None:
        if (num_frames is None) == (fps is None):
            raise ValueError("Give exactly one of num_frames and fps.")
        self.root, self.num_frames, self.fps, self.suffix = os.fspath(root), num_frames, fps, suffix
        self.preprocess = dict(image_size=image_size, mean=mean, std=std, processor=processor)

    def __call__(self, vid: str) -> torch.Tensor:
        frames, _ = decode_video(os.path.join(self.root, vid + self.suffix), self.num_frames, self.fps)
        return preprocess_frames(frames, **self.preprocess)
