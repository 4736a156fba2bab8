"""Video sources: pre-extracted per-video features and raw video files decoded to frames.

Time convention (see `peft_vtg.timeline`): a video of duration d seconds represented by T features or frames is split
into T equal bins; feature / frame i stands for `[i * d / T, (i + 1) * d / T)`. Decoded frames are taken at the
bins' centres.

Nothing here unpickles: `.npy` / `.npz` are read with `allow_pickle=False`, the other formats cannot hold pickles, and
PyTorch / pickle files (`.pt`, `.pth`, `.pkl`) are refused rather than `torch.load`-ed.

Bad input fails early and names the file or the video id: sampling settings (`num_frames`, `fps`, `image_size`) are
checked when a source is made; a feature file must hold a finite, real-valued (frames, dim) array with at least one
frame (a NaN would silently turn a training loss into NaN); a video file must open with PyAV and have a decodable video
stream; and a video id must be a plain file name, so an annotation file cannot make a source read outside its
directory (`../x`, `a/b`, `/abs/path` are refused).
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch
from torch.nn import functional as F

from ..timeline import MAX_SAMPLED_FRAMES, is_finite_number

PathLike = Union[str, os.PathLike]

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors", ".h5", ".hdf5")
# Formats that can only be read by unpickling (torch.load, pickle.load): refused, never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin")
# CLIP's image normalisation, the default when no image processor is given.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A decoded video may differ from the duration its annotation records by this much before a warning: metadata
# durations (the Charades csv, ActivityNet's YouTube lengths) and container durations routinely differ by a frame or
# two and by container rounding, which is harmless; beyond max(1 s, 10 %) it is more likely the wrong file or another
# cut of the video, and windows given in seconds of the annotated duration would land on the wrong frames.
DURATION_TOLERANCE_SECONDS = 1.0
DURATION_TOLERANCE_FRACTION = 0.1
# Frames converted to float and resized together by `preprocess_frames` (bounds its working memory).
PREPROCESS_CHUNK_FRAMES = 64
# Containers whose header duration FFmpeg estimates from the bit rate (MPEG program streams: .mpg, .vob, .m2v):
# their duration is measured from the packets instead.
ESTIMATED_DURATION_FORMATS = frozenset({"mpeg", "mpegvideo", "vob", "mpeg1video", "mpeg2video"})
# Packets read to tell a video stream from a still one when a file has several and says nothing of them.
PROBE_PACKETS = 64


class VideoSource(Protocol):
    """Anything that maps a video id to its per-frame features (frames, dim) or frames (frames, 3, H, W)."""

    def __call__(self, vid: str) -> Union[np.ndarray, torch.Tensor]: ...


# ---------------------------------------------------------------- argument checks
def check_positive_int(value: Any, name: str, unit: str) -> int:
    """`value` as a whole number >= 1 of `unit` (frames, pixels, tokens, ...); raises `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of {unit} >= 1, got {value!r}.")
    return int(value)


def check_num_frames(value: Any, name: str = "num_frames") -> int:
    """`value` as a frame count (a whole number >= 1); raises `ValueError` naming `name` otherwise."""
    return check_positive_int(value, name, "frames")


def check_positive_seconds(value: Any, name: str, unit: str = "seconds") -> float:
    """`value` as a finite number > 0 (e.g. fps in frames per second, a duration in seconds); raises otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not is_finite_number(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 ({unit}), got {value!r}.")
    return float(value)


def check_fps(value: Any, name: str = "fps") -> float:
    """`value` as a sampling rate in frames per second (finite, > 0)."""
    return check_positive_seconds(value, name, unit="frames per second")


def check_image_size(value: Any, name: str = "image_size") -> int:
    """`value` as a frame side length in pixels (a whole number >= 1)."""
    return check_positive_int(value, name, "pixels")


def encoder_image_size(bound: Any) -> Optional[int]:
    """The frame side (pixels) the bound architecture's video encoder takes (its config's `image_size`), or None when
    the spec records none (no video stream, or a custom one)."""
    return bound.video.extra.get("image_size") if bound.video is not None else None


def check_encoder_image_size(image_size: Any, encoder_size: Optional[int], name: str = "image_size") -> None:
    """Refuse a frame size the video encoder cannot take: the supported towers (CLIP, SigLIP, X-CLIP) have position
    embeddings for their config's `image_size` and are run without interpolating them, so any other size fails deep
    in the encoder (or, for SigLIP, with a bare shape error). `encoder_size` None: the encoder records no size."""
    if image_size is None or encoder_size is None or int(image_size) == int(encoder_size):
        return
    raise ValueError(f"{name}={image_size}, but the video encoder takes {encoder_size}-pixel frames (its config's "
                     f"image_size; position embeddings are not interpolated). Leave {name} out (the encoder's size is "
                     f"the default) or give {encoder_size}.")


def check_sampling(num_frames: Optional[int], fps: Optional[float]) -> tuple[Optional[int], Optional[float]]:
    """Exactly one of `num_frames` (frames per video) and `fps` (frames per second), each valid."""
    if (num_frames is None) == (fps is None):
        raise ValueError("Give exactly one of num_frames (frames per video) and fps (frames per second).")
    if num_frames is not None:
        return check_num_frames(num_frames), None
    return None, check_fps(fps)


def check_video_id(vid: Any, where: str = "") -> str:
    """`vid` if it is a plain file name; ids with path separators, `..` or absolute paths are refused, so that an
    annotation file cannot make a source read outside its directory."""
    if not isinstance(vid, str):
        raise ValueError(f"Video id {vid!r} must be a string.")
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not vid or vid in (".", "..") or any(s in vid for s in separators) or os.path.isabs(vid) or "\x00" in vid:
        raise ValueError(
            f"Video id {vid!r} is not a plain file name{' in ' + where if where else ''}: ids with path separators, "
            "'..' or absolute paths could read files outside the video/feature directory. Fix the id in the "
            "annotation file (the file must be <dir>/<id><suffix>)."
        )
    return vid


def duration_mismatch(annotated: float, measured: float) -> bool:
    """Whether a measured video duration (seconds) differs from the annotated one by more than the tolerance
    (`DURATION_TOLERANCE_SECONDS` or `DURATION_TOLERANCE_FRACTION` of the annotated duration, whichever is larger)."""
    tolerance = max(DURATION_TOLERANCE_SECONDS, DURATION_TOLERANCE_FRACTION * abs(annotated))
    return abs(measured - annotated) > tolerance


def warn_duration_mismatches(mismatches: Sequence[tuple[str, float, float]], stacklevel: int = 2) -> None:
    """One warning naming the videos `(vid, annotated_s, measured_s)` whose files differ from their annotations."""
    if not mismatches:
        return
    shown = ", ".join(f"{vid!r} (annotated {a:.2f} s, file {m:.2f} s)" for vid, a, m in mismatches[:10])
    more = f" and {len(mismatches) - 10} more" if len(mismatches) > 10 else ""
    warnings.warn(
        f"{len(mismatches)} video(s) are much longer or shorter than their annotated duration (tolerance: "
        f"max({DURATION_TOLERANCE_SECONDS:g} s, {DURATION_TOLERANCE_FRACTION:.0%})): {shown}{more}. Windows are in "
        "seconds of the annotated duration, so they would land on the wrong frames; check that the files and the "
        "annotations belong together.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


# ---------------------------------------------------------------- features
class _FeatureFileError(ValueError):
    """A feature file problem already described in full (not re-wrapped)."""


def check_feature_array(array: Any, where: str, dim: Optional[int] = None) -> None:
    """Raise `ValueError` naming `where` unless `array` is real-valued, (frames, dim) with frames >= 1, finite, and
    (when `dim` is given) has `dim` values per frame. Reads the whole array (one video's features)."""
    shape = tuple(array.shape)
    dtype = array.dtype
    is_real = (not dtype.is_complex and dtype != torch.bool) if isinstance(dtype, torch.dtype) else (
        np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))
    if not is_real:
        raise _FeatureFileError(f"{where}: features must be real numbers, got dtype {dtype}; save them as float32.")
    if len(shape) != 2:
        raise _FeatureFileError(f"{where}: features must be a 2-D array (frames, dim), got shape {shape}.")
    if shape[0] < 1 or shape[1] < 1:
        raise _FeatureFileError(f"{where}: features are empty, shape {shape}; expected (frames >= 1, dim >= 1).")
    if dim is not None and shape[1] != dim:
        raise _FeatureFileError(
            f"{where}: features have {shape[1]} values per frame but the model expects {dim}; extract them with "
            "model.encode_video on the same base model."
        )
    finite = torch.isfinite(array) if isinstance(array, torch.Tensor) else np.isfinite(np.asarray(array))
    if not bool(finite.all()):
        rows = np.flatnonzero(~np.asarray(finite).all(axis=1))
        raise _FeatureFileError(
            f"{where}: {len(rows)} frame(s) hold NaN or Inf values (first at frames {rows[:5].tolist()}); they would "
            "turn the loss and the scores into NaN. Re-extract the features of this video."
        )
    # Finite in float64, but the model computes in float32 (or less): 1e300 would become Inf there.
    largest = max(abs(float(array.max())), abs(float(array.min())))
    if largest > torch.finfo(torch.float32).max:
        raise _FeatureFileError(f"{where}: features reach {largest:.3g}, beyond float32's range (3.4e38); they "
                                "would become Inf in the model. Re-extract or rescale the features of this video.")


def _single_key(keys: Sequence[str], key: Optional[str], path: PathLike) -> str:
    if key is not None:
        if key not in keys:
            raise KeyError(f"{path} has no array {key!r}; it has {list(keys)}. Pass the right key (--features-key).")
        return key
    if not keys:
        raise _FeatureFileError(f"{path} holds no array; re-extract the features of this video.")
    if len(keys) != 1:
        raise _FeatureFileError(f"{path} holds several arrays {list(keys)}; pass key= (--features-key) to "
                                "choose one.")
    return keys[0]


def _check_nonempty_file(name: str, what: str, fix: str) -> None:
    """Fail, naming the file, unless `name` is an existing regular file with at least one byte."""
    if not os.path.exists(name):
        raise FileNotFoundError(f"{what} {name} does not exist.")
    if not os.path.isfile(name):
        raise ValueError(f"{what} {name} is not a file.")
    if os.path.getsize(name) == 0:
        raise ValueError(f"{what} {name} is empty (0 bytes); {fix}.")


def load_feature_file(path: PathLike, key: Optional[str] = None, dim: Optional[int] = None) -> np.ndarray:
    """Per-frame features (frames, dim) of one video from `.npy`, `.npz`, `.safetensors` or `.h5`/`.hdf5`.

    `.npy` is memory-mapped; `.h5` is read by h5py; `.npz` and `.safetensors` are read in full. The whole array is
    checked once (`check_feature_array`: real-valued, 2-D, at least one frame, finite, `dim` values per frame when
    `dim` is given), so a damaged file fails here, naming it, instead of training on NaN.

    Raises:
        FileNotFoundError: no such file. KeyError: `key` is not in the file.
        ValueError: anything else wrong with the file, naming it (pickles and `.pt` files are refused).
    """
    name = os.fspath(path)
    if dim is not None:
        dim = check_positive_int(dim, "dim", "feature values per frame")
    suffix = os.path.splitext(name)[1].lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{name}: {suffix} files are read by unpickling (torch.load), which can run arbitrary code; peft_vtg never "
            f"loads them. Convert the features to .safetensors or .npy, e.g. with a trusted script: "
            "safetensors.numpy.save_file({'features': torch.load(path, weights_only=True).numpy()}, 'vid.safetensors')."
        )
    if suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"{name}: unsupported feature format {suffix!r}; use one of {FEATURE_SUFFIXES}.")
    _check_nonempty_file(name, "Feature file", "re-extract the features of this video")
    _check_signature(name, suffix)
    try:
        array = _read_array(name, suffix, key)
    except (KeyError, _FeatureFileError):
        raise
    except Exception as err:  # each format's reader has its own errors for damaged files; all mean the same here
        if "allow_pickle" in str(err) or "Python objects" in str(err):
            raise ValueError(
                f"{name} holds pickled Python objects; peft_vtg never unpickles feature files (allow_pickle=False), "
                "since unpickling can run code. Save the features as a numeric (frames, dim) array."
            ) from err
        raise ValueError(
            f"{name} cannot be read as a {suffix} feature file ({type(err).__name__}: {err}); it is damaged, "
            "truncated or not in that format. Re-extract the features of this video."
        ) from err
    check_feature_array(array, name, dim)
    return array


# The first bytes of each format whose reader would otherwise misreport a foreign file (NumPy takes any file it does
# not recognise for a pickle).
_SIGNATURES = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}


def _check_signature(name: str, suffix: str) -> None:
    signatures = _SIGNATURES.get(suffix)
    if not signatures:
        return
    with open(name, "rb") as handle:
        head = handle.read(8)
    if not any(head.startswith(signature) for signature in signatures):
        raise _FeatureFileError(f"{name} cannot be read as a {suffix} feature file: it does not start with the "
                                f"{suffix} signature, so it is damaged or another format. Re-extract the features.")


def _read_array(name: str, suffix: str, key: Optional[str]) -> np.ndarray:
    if suffix == ".npy":
        array = np.load(name, mmap_mode="r", allow_pickle=False)
    elif suffix == ".npz":
        with np.load(name, allow_pickle=False) as archive:
            array = archive[_single_key(list(archive.keys()), key, name)]
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(name, framework="np") as handle:
            array = handle.get_tensor(_single_key(list(handle.keys()), key, name))
    else:  # .h5 / .hdf5
        h5py = _import_h5py()
        with h5py.File(name, "r") as handle:
            dataset = handle[_single_key(list(handle.keys()), key, name)]
            if not isinstance(dataset, h5py.Dataset):
                raise _FeatureFileError(f"{name}: {dataset.name!r} is an HDF5 group, not an array; pass key=.")
            array = dataset[()]
    return array


def _import_h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Reading .h5 features needs h5py: pip install 'peft-vtg[h5]'.") from err
    return h5py


def _check_directory(root: PathLike, what: str) -> str:
    name = os.fspath(root)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{what} {name} does not exist.")
    if not os.path.isdir(name):
        raise NotADirectoryError(f"{what} {name} is not a directory.")
    return name


class FeatureDirectory:
    """Per-video feature files `{root}/{vid}{suffix}`, e.g. `features/3MSZA.npy`.

    Args:
        root: the directory.
        suffix: the file suffix; None finds it per video among `FEATURE_SUFFIXES`.
        key: array name inside `.npz` / `.safetensors` / `.h5` files holding several arrays.
        dim: values per frame the model expects; a file with another size raises naming it (None: not checked).
    """

    def __init__(self, root: PathLike, suffix: Optional[str] = None, key: Optional[str] = None,
                 dim: Optional[int] = None) -> None:
        self.root = _check_directory(root, "Feature directory")
        if suffix is not None and suffix in PICKLE_SUFFIXES:
            raise ValueError(f"suffix={suffix!r}: pickled feature files are never loaded (unpickling can run code); "
                             f"convert them to one of {FEATURE_SUFFIXES}.")
        if suffix is not None and suffix not in FEATURE_SUFFIXES:
            raise ValueError(f"suffix={suffix!r} is not a feature format; use one of {FEATURE_SUFFIXES}.")
        if dim is not None:
            check_positive_int(dim, "dim", "feature values per frame")
        self.suffix, self.key, self.dim = suffix, key, dim

    def path(self, vid: str) -> str:
        """The feature file of `vid`; raises `FileNotFoundError` naming the id when there is none."""
        check_video_id(vid, self.root)
        for suffix in (self.suffix,) if self.suffix else FEATURE_SUFFIXES:
            candidate = os.path.join(self.root, vid + suffix)
            if os.path.exists(candidate):
                return candidate
        pickled = [vid + s for s in PICKLE_SUFFIXES if os.path.exists(os.path.join(self.root, vid + s))]
        hint = (f" There is {pickled[0]}, but pickled files are never loaded; convert it to .safetensors or .npy."
                if pickled else "")
        raise FileNotFoundError(
            f"No features for video {vid!r} in {self.root} (looked for {vid}{self.suffix or '.*'}).{hint}")

    def missing(self, vids: Iterable[str]) -> list[str]:
        """The ids among `vids` without a feature file (checked up front, before a long run starts)."""
        return [vid for vid in dict.fromkeys(vids) if not self._exists(vid)]

    def _exists(self, vid: str) -> bool:
        try:
            self.path(vid)
        except FileNotFoundError:
            return False
        return True

    def __call__(self, vid: str) -> np.ndarray:
        return load_feature_file(self.path(vid), self.key, self.dim)


class H5FeatureFile:
    """One HDF5 file with a dataset per video id (the layout of many released feature sets); read lazily.

    Args:
        path: the file.
        dim: values per frame the model expects (None: not checked).
    """

    def __init__(self, path: PathLike, dim: Optional[int] = None) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"HDF5 feature file {self.path} does not exist.")
        self.dim = None if dim is None else check_positive_int(dim, "dim", "feature values per frame")
        self._handle = None

    def _open(self):
        if self._handle is None:  # opened on first use, so the object can be sent to DataLoader workers
            try:
                self._handle = _import_h5py().File(self.path, "r")
            except OSError as err:
                raise ValueError(f"{self.path} cannot be read as an HDF5 file ({err}); it is damaged or truncated.") \
                    from err
        return self._handle

    def missing(self, vids: Iterable[str]) -> list[str]:
        """The ids among `vids` without a dataset in the file."""
        handle = self._open()
        return [vid for vid in dict.fromkeys(vids) if vid not in handle]

    def __call__(self, vid: str) -> np.ndarray:
        handle = self._open()
        if not isinstance(vid, str):
            raise TypeError(f"A video id must be a string, got {type(vid).__name__} {vid!r}.")
        if vid not in handle:
            raise KeyError(f"{self.path} has no features for video {vid!r}.")
        dataset = handle[vid]
        if not hasattr(dataset, "shape"):  # a group: ids with "/" name nested groups in HDF5
            raise ValueError(f"{self.path}[{vid!r}] is an HDF5 group, not a dataset of features; each video's "
                             "features are one (frames, dim) dataset named by its id.")
        array = dataset[()]
        check_feature_array(array, f"{self.path}[{vid!r}]", self.dim)
        return array

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dim": self.dim, "_handle": None}


def durations_from_features(source: VideoSource, vids: Sequence[str], features_per_second: float) -> dict[str, float]:
    """Video durations (seconds) from feature lengths: `num_features / features_per_second`, for readers that need
    durations the annotation file lacks (Charades-STA without its csv)."""
    check_positive_seconds(features_per_second, "features_per_second", unit="features per second")
    return {vid: len(source(vid)) / features_per_second for vid in dict.fromkeys(vids)}


def resample_features(features: Union[np.ndarray, torch.Tensor], num_frames: int) -> torch.Tensor:
    """Average (frames, dim) features into `num_frames` equal time bins (or repeat rows when there are fewer).

    Bin k averages the rows whose time bins overlap `[k * T / num_frames, (k + 1) * T / num_frames)`, so the time
    convention is kept. Returns float32 (num_frames, dim).
    """
    num_frames = check_num_frames(num_frames)
    source = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if source.dim() != 2:
        raise ValueError(f"Cannot resample features of shape {tuple(source.shape)}; expected (frames, dim).")
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
    check_positive_seconds(duration, "duration")
    return (np.arange(check_num_frames(num_frames)) + 0.5) * duration / num_frames


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Decoding video files needs PyAV: pip install 'peft-vtg[video]'.") from err
    return av


class _VideoFile:
    """An open video file: its first video stream, read lazily; errors name the file."""

    def __init__(self, path: PathLike) -> None:
        self.av = _av()
        self.name = os.fspath(path)
        self.sample_aspect_ratio: Optional[Fraction] = None  # of the stream `frames` reads, once it has opened it
        _check_nonempty_file(self.name, "Video file", "the download or copy was probably interrupted")

    def _open(self):
        try:
            container = self.av.open(self.name)
        except self.av.error.FFmpegError as err:
            raise self._damaged(err) from err
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            container.close()
            raise ValueError(f"Video file {self.name} has no video stream (its streams: {', '.join(kinds)}); an "
                             "audio-only file cannot be grounded.")
        return container

    def _stream(self, container: Any) -> Any:
        """The video stream a player shows, as FFmpeg's `av_find_best_stream` picks it: not a cover picture, a still
        image or thumbnails (an mp4's or mkv's cover art can be stream 0, and read as the video gave the still over
        and over); the one marked default, else the one with the most frames, then the largest."""
        streams = list(container.streams.video)
        moving = [stream for stream in streams
                  if not any(self._flagged(stream, name) for name in ("attached_pic", "still_image",
                                                                       "timed_thumbnails"))]
        if not moving:
            raise ValueError(f"Video file {self.name} holds only a cover picture or still image, no video to ground "
                             "(an audio file with cover art?).")
        default = [stream for stream in moving if self._flagged(stream, "default")]
        if len(moving) == 1 or len(default) == 1:
            return (default or moving)[0]
        # No single default (mkv marks none): the stream with the most frames, as FFmpeg judges from its first
        # packets (a still track has one), then the largest picture, then the first.
        counts = {stream.index: stream.frames or 0 for stream in moving}
        if not all(counts.values()):  # frame counts unknown (mkv, webm): count the first packets instead
            counts = dict.fromkeys(counts, 0)
            for packet, _ in zip(container.demux(*moving), range(PROBE_PACKETS)):
                if packet.stream.index in counts and packet.size:
                    counts[packet.stream.index] += 1
            container.seek(0)
        return max(moving, key=lambda stream: (min(counts[stream.index], 5), (stream.codec_context.width or 0)
                                               * (stream.codec_context.height or 0), -stream.index))

    def _flagged(self, stream: Any, name: str) -> bool:
        flag = getattr(getattr(getattr(self.av, "stream", None), "Disposition", None), name, None)
        try:
            return flag is not None and bool(stream.disposition & flag)
        except TypeError:  # a PyAV whose disposition is not a flag set
            return False

    def _damaged(self, err: Exception) -> ValueError:
        return ValueError(f"Video file {self.name} cannot be decoded ({err}); it is damaged, truncated or not a video "
                          "file PyAV/FFmpeg can read.")

    def frames(self) -> Iterator[tuple[float, Any]]:
        """(time in seconds from the video stream's start, `av.VideoFrame`) of every decoded frame, in order; one
        frame in memory at a time. Times count from the stream's start time, not from the container's clock: a clip
        cut from a broadcast (.ts starts near 1.4 s) or a file whose first frame is stamped at 10 s starts at 0 here,
        as players and annotations count it."""
        container = self._open()
        try:
            stream = self._stream(container)
            self.sample_aspect_ratio = _sample_aspect_ratio(stream)
            start = _stream_start(stream)
            for frame in container.decode(stream):
                if frame.time is not None:
                    start = float(frame.time) if start is None else start
                    yield float(frame.time) - start, frame
        except self.av.error.FFmpegError as err:  # damaged or truncated data part-way through
            raise self._damaged(err) from err
        finally:
            container.close()

    def duration(self) -> float:
        """Seconds the video stream lasts from its start. From the stream's own header duration where the container
        has one (mp4, mov, avi); otherwise (mkv, webm, ts: only a container duration, which counts the longest stream,
        audio included, and the start offset) from the video packets' timestamps, read without decoding."""
        container = self._open()
        try:
            stream = self._stream(container)
            seconds = 0.0
            # MPEG program streams (.mpg, .vob) have no duration in their headers: FFmpeg's figure is an estimate
            # from the bit rate, seconds short of the content (a 10 s .mpg read as 9.1 s, the end never sampled).
            estimated = container.format.name.split(",")[0] in ESTIMATED_DURATION_FORMATS
            if stream.duration is not None and stream.time_base is not None and not estimated:
                seconds = float(stream.duration * stream.time_base)
            if not (is_finite_number(seconds) and seconds > 0):
                seconds = self._packet_extent(container, stream)
        except self.av.error.FFmpegError as err:
            raise self._damaged(err) from err
        finally:
            container.close()
        if not (is_finite_number(seconds) and seconds > 0):
            raise ValueError(f"Video file {self.name} has a single frame and no duration; it cannot be placed on a "
                             "timeline.")
        return seconds

    def _packet_extent(self, container: Any, stream: Any) -> float:
        """The video stream's extent from its packets' timestamps (start to the end of the last packet)."""
        if stream.time_base is None:
            return 0.0
        first = last = None
        periods: list[int] = []
        stamps: list[int] = []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            first = packet.pts if first is None else min(first, packet.pts)
            end = packet.pts + (packet.duration or 0)
            last = end if last is None else max(last, end)
            stamps.append(packet.pts)
            if packet.duration:
                periods.append(packet.duration)
        if first is not None and not periods and len(stamps) > 1:
            # Packets without durations (a browser's MediaRecorder webm, flv): the last frame still lasts a frame
            # period, the median step between frames; without it the video ends a frame early.
            steps = np.diff(np.unique(np.asarray(stamps, dtype=np.int64)))
            last += int(np.median(steps)) if len(steps) else 0
        if first is None:
            raise ValueError(f"Video file {self.name} has no video packets with timestamps; it is damaged, truncated, "
                             "or a raw elementary stream (e.g. .h264) without a container: remux it into .mp4/.mkv "
                             "(ffmpeg -i in.h264 -c copy out.mp4).")
        start = stream.start_time if stream.start_time is not None else first
        if last == first and not periods:  # one frame without a duration: nothing to measure
            return 0.0
        return float((last - min(start, first)) * stream.time_base)


def _sample_aspect_ratio(stream: Any) -> Optional[Fraction]:
    """The shape of the stream's pixels (width / height), when they are not square: DV, DVD and HDV store 720 or
    1440 pixels that players stretch or squeeze to 16:9 or 4:3. None for square or unknown pixels."""
    for owner in (stream, getattr(stream, "codec_context", None)):
        ratio = getattr(owner, "sample_aspect_ratio", None)
        try:
            ratio = Fraction(ratio) if ratio is not None else None
        except (TypeError, ValueError):
            ratio = None
        if ratio is not None and ratio > 0:
            return None if ratio == 1 else ratio
    return None


def _stream_start(stream: Any) -> Optional[float]:
    """The video stream's start time in seconds, or None when the container does not say (then the first frame's)."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def video_duration(path: PathLike) -> float:
    """A video file's duration in seconds (from its header; see `_VideoFile.duration`), without decoding frames."""
    return _VideoFile(path).duration()


def iter_video_frames(path: PathLike, times: Sequence[float]) -> Iterator[torch.Tensor]:
    """The frames of a video file showing each of `times` (seconds from the video's start, ascending): for each time
    the last frame that starts at or before it (the first frame for times before it), uint8 (3, height, width) RGB
    turned upright as players show it (the file's display matrix: a phone's portrait video), yielded in order.

    Decoding streams through the file once: memory holds the current and the previous decoded frame, whatever the
    video's length, so an hour-long video can be sampled at any rate. A time well past the last frame that decodes
    (more than max(1 s, 10 %, two frame periods)) means the file ends early, truncated or damaged while its header
    promises more: an error naming the file, not the last frame repeated over the rest.
    """
    video = _VideoFile(path)
    targets = [float(t) for t in times]
    bad = [t for t in targets if not is_finite_number(t)]
    if bad:
        raise ValueError(f"times must be finite seconds; got {bad[0]} (for {video.name}).")
    if any(b < a for a, b in zip(targets, targets[1:])):
        raise ValueError("times must be in ascending order.")
    index, previous, first_time, last_time, count = 0, None, None, 0.0, 0
    orientation = None  # read from the first frame: a stream has one display matrix
    for time, frame in video.frames():
        if orientation is None:
            orientation = _display_orientation(frame, video.name)
        while index < len(targets) and targets[index] < time:
            # The target lies before this frame: the previous frame shows it (or this one, before the first frame).
            yield _rgb(previous if previous is not None else frame, orientation, video.sample_aspect_ratio)
            index += 1
        if index == len(targets):
            return
        previous, last_time, count = frame, time, count + 1
        first_time = time if first_time is None else first_time
    if previous is None:
        raise ValueError(f"Video file {video.name} has no decodable video frames; it is damaged or truncated.")
    period = (last_time - first_time) / (count - 1) if count > 1 else 0.0
    if targets[-1] - last_time > max(DURATION_TOLERANCE_SECONDS, DURATION_TOLERANCE_FRACTION * targets[-1],
                                     2 * period):
        raise ValueError(f"Video file {video.name}: its frames end at {last_time:.2f} s, but frames up to "
                         f"{targets[-1]:.2f} s were asked for from its duration ({video.duration():.2f} s in its "
                         "header); the file is truncated or damaged. Download or copy it again (or re-encode the part "
                         "that decodes).")
    while index < len(targets):  # targets at or after the last frame's start
        yield _rgb(previous, orientation, video.sample_aspect_ratio)
        index += 1


def _rgb(frame: Any, orientation: tuple[bool, bool, bool],
         sample_aspect_ratio: Optional[Fraction] = None) -> torch.Tensor:
    """A decoded frame as uint8 (3, H, W) RGB as players show it: non-square pixels (`sample_aspect_ratio`) resized
    to square ones on the width, as players scale them, then turned upright by `orientation` (from
    `_display_orientation`). Without the resize, the centre crop cut a part of the picture players do not centre."""
    if sample_aspect_ratio is not None:
        width = max(1, round(frame.width * sample_aspect_ratio))
        array = frame.reformat(width=width, height=frame.height, format="rgb24").to_ndarray()
    else:
        array = frame.to_ndarray(format="rgb24")
    image = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W) as stored
    transpose, flip_rows, flip_columns = orientation
    if transpose:
        image = image.transpose(1, 2)  # (3, W, H)
    flips = [dim for dim, flip in ((1, flip_rows), (2, flip_columns)) if flip]
    if flips:
        image = image.flip(flips)
    return image.contiguous()


def _display_orientation(frame: Any, name: str) -> tuple[bool, bool, bool]:
    """How to turn a stored frame upright: (transpose, flip rows, flip columns), from the frame's display matrix.

    Phones store a portrait video as landscape frames with a display matrix (mp4/mov `rotate` 90, 180, 270; mirrored
    front cameras add a flip) that players apply; without it a model sees every such video on its side. The matrix
    maps a stored pixel (x, y) to the displayed (a x + c y, b x + d y) (the QuickTime convention FFmpeg keeps), so an
    axis-aligned matrix is a transpose when a = d = 0, then a flip of each displayed axis whose coefficient is
    negative: the same choice as FFmpeg's autorotate (`transpose=clock`, `cclock`, `hflip`, `vflip`, ...). A matrix
    that rotates by another angle (rare: editing software) is not applied, with a warning.
    """
    matrix = None
    try:
        for side_data in frame.side_data:
            if "DISPLAYMATRIX" in str(side_data.type).upper():
                matrix = np.frombuffer(bytes(side_data), dtype=np.int32)
                break
    except (AttributeError, TypeError, ValueError):  # a PyAV without side data access: frames as stored
        return False, False, False
    if matrix is None or matrix.size < 5:
        return False, False, False
    a, b, c, d = (float(matrix[i]) / 65536 for i in (0, 1, 3, 4))  # 16.16 fixed point
    straight, turned = abs(a) + abs(d), abs(b) + abs(c)
    if straight == turned == 0:  # an all-zero matrix (broken files): no orientation at all, as FFmpeg reads it
        return False, False, False
    if turned < 1e-3 * straight:
        return False, d < 0, a < 0
    if straight < 1e-3 * turned:
        return True, b < 0, c < 0
    warnings.warn(f"Video file {name}: its display matrix rotates it by {_matrix_degrees(a, b):.0f} degrees, not a "
                  "multiple of 90; its frames are used as stored. Re-encode it upright (ffmpeg applies the rotation "
                  "by default) if the model should see it as players show it.", stacklevel=3)
    return False, False, False


def _matrix_degrees(a: float, b: float) -> float:
    """The counter-clockwise rotation (degrees) of a display matrix, as FFmpeg's av_display_rotation_get reads it."""
    return -float(np.degrees(np.arctan2(b, a)))


def decode_video(
    path: PathLike, num_frames: Optional[int] = None, fps: Optional[float] = None
) -> tuple[torch.Tensor, float]:
    """Decode a video file with PyAV into frames at the bin centres.

    Give `num_frames` (a fixed count, as X-CLIP needs) or `fps` (frames per second; count = round(duration * fps), at
    least 1). The file is streamed (`iter_video_frames`): memory holds the sampled frames, not every decoded one.

    Returns:
        frames: uint8 (frames, 3, height, width), RGB, upright (see `iter_video_frames`).
        duration: seconds.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad sampling settings, or a file that is empty, damaged, has no video stream (audio only) or no
            decodable frame; the message names the file.
    """
    num_frames, fps = check_sampling(num_frames, fps)
    duration = video_duration(path)
    count = num_frames if num_frames is not None else max(1, int(round(duration * fps)))
    if count > MAX_SAMPLED_FRAMES:  # every sampled frame is held in memory: a setting in the wrong unit
        setting = f"num_frames={num_frames!r}" if num_frames is not None else f"fps={fps!r}"
        raise ValueError(f"{setting} samples {count:,} frames of {os.fspath(path)} ({duration:.1f} s), more than "
                         f"{MAX_SAMPLED_FRAMES:,}; sample fewer (fps is frames per second).")
    frames = torch.stack(list(iter_video_frames(path, sample_times(duration, count))))  # (count, 3, H, W)
    return frames, duration


def preprocess_frames(
    frames: torch.Tensor,
    image_size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    processor: Optional[Any] = None,
) -> torch.Tensor:
    """uint8 (frames, 3, H, W) -> float (frames, 3, image_size, image_size) as the encoder expects.

    With a Hugging Face image processor (e.g. `CLIPImageProcessor`), it does the resizing and normalisation; otherwise
    the short side is resized to `image_size` pixels, the centre is cropped, and `mean`/`std` normalise (CLIP's
    defaults).
    """
    if processor is not None:
        return processor(images=list(frames), return_tensors="pt")["pixel_values"]
    image_size = check_image_size(image_size)
    height, width = frames.shape[-2:]
    scale = image_size / min(height, width)
    size = (max(image_size, round(height * scale)), max(image_size, round(width * scale)))
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    out = torch.empty(frames.shape[0], 3, image_size, image_size)  # (frames, 3, S, S)
    # A chunk of frames at a time: float32 at the source resolution is 4x the uint8 frames, for a long video at a
    # high rate gigabytes, while the resized result is small.
    for begin in range(0, frames.shape[0], PREPROCESS_CHUNK_FRAMES):
        x = frames[begin : begin + PREPROCESS_CHUNK_FRAMES].float() / 255.0
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x[:, :, top : top + image_size, left : left + image_size]
        out[begin : begin + x.shape[0]] = (x - mean_t) / std_t
    return out


class VideoFiles:
    """Raw videos `{root}/{vid}{suffix}`, decoded and preprocessed for the encoder on access.

    Args:
        root: the directory of video files.
        num_frames / fps: how to sample each video (exactly one): frames per video, or frames per second.
        image_size, mean, std, processor: see `preprocess_frames` (`image_size` in pixels).
        suffix: the video file suffix.

    `decoded_durations` keeps the duration (seconds) of each video decoded so far, so that `GroundingCollator` can
    warn when a file is much longer or shorter than its annotation says.
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
        self.num_frames, self.fps = check_sampling(num_frames, fps)
        if processor is None:
            check_image_size(image_size)
        if not isinstance(suffix, str) or any(s in suffix for s in ("/", "\\", os.sep)):
            raise ValueError(f"suffix={suffix!r} must be a file suffix such as '.mp4'.")
        self.root, self.suffix = _check_directory(root, "Video directory"), suffix
        self.preprocess = dict(image_size=image_size, mean=mean, std=std, processor=processor)
        self.decoded_durations: dict[str, float] = {}

    def path(self, vid: str) -> str:
        """The video file of `vid` (checked to be a plain file name inside `root`)."""
        return os.path.join(self.root, check_video_id(vid, self.root) + self.suffix)

    def missing(self, vids: Iterable[str]) -> list[str]:
        """The ids among `vids` without a video file (checked up front, before a long run starts)."""
        return [vid for vid in dict.fromkeys(vids) if not os.path.isfile(self.path(vid))]

    def __call__(self, vid: str) -> torch.Tensor:
        frames, duration = decode_video(self.path(vid), self.num_frames, self.fps)
        self.decoded_durations[vid] = duration
        return preprocess_frames(frames, **self.preprocess)
