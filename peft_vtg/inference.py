"""`ground()`: moments in seconds for (video, query) pairs, from a video file, a frame tensor or a feature array.

Inputs are checked before the model runs, and every problem raises naming the video (index or file): sampling settings
(`num_frames` >= 1, `fps` and durations finite and > 0, `image_size` >= 1 pixel, `top_k` >= 1, `nms_threshold` in
[0, 1]), queries (non-empty strings), tensors (shape, at least one frame, no NaN/Inf: a NaN input would give NaN scores
and, after decoding, no moment at all), and feature sizes. A video file much longer or shorter than a `duration` given
for it gets a warning (see `peft_vtg.data.video.DURATION_TOLERANCE_SECONDS`).
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from .data.collate import check_max_text_length, check_query_tokens, check_tokenizer, pad_videos
from .data.video import (
    check_encoder_image_size,
    check_feature_array,
    check_fps,
    check_image_size,
    check_num_frames,
    check_positive_int,
    check_positive_seconds,
    decode_video,
    duration_mismatch,
    encoder_image_size,
    iter_video_frames,
    preprocess_frames,
    sample_times,
    video_duration,
    warn_duration_mismatches,
)
from .heads.decoding import (
    Moment,
    calibrated_spans,
    decode_moments,
    match_probabilities,
    merge_window_spans,
    window_starts,
)
from .heads.ensemble import ENSEMBLE_FUSIONS, fuse_grounding_outputs
from .timeline import (
    MAX_SAMPLED_FRAMES,
    check_clip_count,
    check_nms_threshold,
    frame_scores_to_clips,
    rank_windows,
    temporal_nms,
)
from .vtg_prompt.model import VTGPromptModel

VideoInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]
DEFAULT_NUM_FRAMES = 32


def _tuner(model: Any) -> VTGPromptModel:
    """The `VTGPromptModel` inside a `PeftModel` (or the tuner itself)."""
    if isinstance(model, VTGPromptModel):
        return model
    tuner = getattr(model, "base_model", None)
    if not isinstance(tuner, VTGPromptModel):
        raise TypeError(
            f"{type(model).__name__} is not a VTG prompt model; create it with get_peft_model(base, VTGPromptConfig(...)) "
            "or PeftModel.from_pretrained(base, adapter_dir)."
        )
    return tuner


def _split_videos(video: Union[VideoInput, Sequence[VideoInput]]) -> tuple[list[VideoInput], bool]:
    """A list of single videos, and whether the input was a single video."""
    if isinstance(video, (str, os.PathLike)):
        return [video], True
    if isinstance(video, (bytes, bytearray)):  # a Sequence of ints to Python
        raise TypeError(f"video is {type(video).__name__}; give a file path as a str (or os.PathLike).")
    if isinstance(video, (np.ndarray, torch.Tensor)):
        if video.ndim in (2, 4):  # (frames, dim) features or (frames, 3, H, W) frames
            return [video], True
        if video.ndim in (3, 5):  # a batch of either
            if video.shape[0] == 0:
                raise ValueError(f"video is an empty batch, shape {tuple(video.shape)}; give at least one video.")
            return list(video), False
        raise ValueError(
            f"A video tensor must be features (frames, dim), frames (frames, 3, H, W), or a batch of either; got shape "
            f"{tuple(video.shape)}."
        )
    if isinstance(video, Sequence):
        if not video:
            raise ValueError("video is an empty list; give at least one video (a file path, a tensor or an array).")
        return list(video), False
    raise TypeError(f"Unsupported video input {type(video).__name__}; give a file path, a tensor or an array.")


def _check_settings(
    num_frames: Any, fps: Any, image_size: Any, top_k: Any, nms_threshold: Any, max_span_seconds: Any,
    max_text_length: Any, tokenizer: Any,
) -> None:
    if num_frames is not None:
        check_num_frames(num_frames)
    if fps is not None:
        check_fps(fps)
    if image_size is not None:
        check_image_size(image_size)
    check_positive_int(top_k, "top_k", "moments")
    check_nms_threshold(nms_threshold)
    if max_span_seconds is not None:
        check_positive_seconds(max_span_seconds, "max_span_seconds")
    if max_text_length is not None:
        check_max_text_length(tokenizer, max_text_length)


def _check_tensor(item: Any, index: int, feature_size: Optional[int],
                  image_size: Optional[int] = None) -> torch.Tensor:
    """Video `index` as a tensor, checked: features (frames, dim) or frames (frames, 3, H, W) of the encoder's
    `image_size` (when it has one), finite, >= 1 frame."""
    if isinstance(item, np.ndarray) and item.dtype.kind not in "biufc":
        raise ValueError(f"Video {index}: an array of {item.dtype} values; give numbers (float32 features or "
                         "frames).")
    tensor = torch.as_tensor(np.asarray(item)) if isinstance(item, np.ndarray) else item
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Video {index} is a {type(item).__name__}; give a file path, a tensor or an array.")
    if tensor.dim() == 2:
        check_feature_array(tensor, f"video {index} (features)", feature_size)
    elif tensor.dim() == 4:
        if tensor.shape[0] < 1:
            raise ValueError(f"Video {index} has no frames, shape {tuple(tensor.shape)}.")
        if tensor.shape[1] != 3:
            raise ValueError(f"Video {index}: frames must be (frames, 3, H, W) RGB, got shape {tuple(tensor.shape)}.")
        if not tensor.is_floating_point():
            # Raw pixels (uint8 0..255) read as if normalised would ground silently and badly.
            raise ValueError(f"Video {index}: frames are {tensor.dtype} values, raw pixels; ground() takes "
                             "preprocessed float frames: pass them through peft_vtg.data.preprocess_frames(frames, "
                             "image_size=...) first (or give the video file).")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"Video {index}: its frames hold NaN or Inf values; the scores would be NaN.")
        if tensor.dtype == torch.float64 and float(tensor.abs().max()) > torch.finfo(torch.float32).max:
            raise ValueError(f"Video {index}: its frames reach {float(tensor.abs().max()):.3g}, beyond float32's "
                             "range; preprocessed frames are normalised pixels (about -3 to 3): pass them through "
                             "peft_vtg.data.preprocess_frames.")
        if image_size is not None and tuple(tensor.shape[2:]) != (image_size, image_size):
            raise ValueError(f"Video {index}: frames of {tensor.shape[2]}x{tensor.shape[3]} pixels, but the video "
                             f"encoder takes {image_size}x{image_size} (its config's image_size); preprocess them "
                             f"with peft_vtg.data.preprocess_frames(frames, image_size={image_size}).")
    else:
        raise ValueError(f"Video {index}: expected features (frames, dim) or frames (frames, 3, H, W), got shape "
                         f"{tuple(tensor.shape)}.")
    return tensor


def ground(
    model: Any,
    video: Union[VideoInput, Sequence[VideoInput]],
    query: Union[str, Sequence[str]],
    tokenizer: Any,
    duration: Optional[Union[float, Sequence[float]]] = None,
    num_frames: Optional[int] = None,
    fps: Optional[float] = None,
    image_size: Optional[int] = None,
    processor: Optional[Any] = None,
    top_k: int = 5,
    nms_threshold: Optional[float] = 0.5,
    max_span_seconds: Optional[float] = None,
    max_text_length: Optional[int] = None,
    return_saliency: bool = False,
    clip_length: float = 2.0,
    window_seconds: Optional[float] = None,
    window_overlap: float = 0.5,
    window_batch_size: int = 8,
    adapter_names: Optional[Sequence[str]] = None,
    ensemble_fusion: str = "mean",
    disable_tqdm: bool = False,
) -> Union[list[Moment], list[list[Moment]], "GroundingResult", list["GroundingResult"]]:
    """Find the moments that `query` describes in `video`, as `(start_s, end_s, score)`, best first.

    Args:
        model: a `PeftModel` with a VTG adapter that has a grounding head.
        video: a video file path (decoded with PyAV), preprocessed frames (frames, 3, H, W), per-frame features
            (frames, dim) from `model.encode_video` (adapters without video prompts only), a batch tensor
            (batch, frames, ...) or a list of any of these.
        query: one sentence, or one per pair. One video with several queries grounds each query in that video; several
            videos with one query ground it in each.
        tokenizer: the base model's tokenizer.
        duration: seconds, per video (or one for all); read from the file for paths, required otherwise.
        num_frames / fps: how to sample video files (default `default_num_frames`: the encoder's fixed frame count,
            else the frames per video the adapter was trained on, else 32).
        image_size, processor: frame preprocessing for video files (default: the encoder's image size, CLIP's
            normalisation); see `peft_vtg.data.preprocess_frames`.
        top_k, nms_threshold, max_span_seconds: see `peft_vtg.heads.decode_moments`.
        max_text_length: truncate queries to this many tokens.
        return_saliency: also return the highlight score of every clip (adapters with `predict_saliency`).
        clip_length: seconds per saliency clip (2, QVHighlights' clips).
        window_seconds: long videos. A video file longer than 1.5 x this is grounded window by window
            (`_ground_long_video`): windows of this many seconds with the adapter's trained frames per window,
            `window_overlap` apart, decoded as a stream so memory holds one batch of windows whatever the video's
            length, spans mapped back to the video's seconds, spans cut by a window edge joined, and temporal NMS
            over the whole video. None (default): the window the adapter was trained on (`trained_window_seconds`
            in its config, recorded by training); an adapter without one, or a tensor input, is never windowed.
            Shorter videos take the single-pass path unchanged.
        window_overlap: fraction of a window shared with the next one, in [0, 1).
        window_batch_size: windows per forward pass.
        adapter_names: a prompt ensemble: ground with each of these loaded adapters (`model.load_adapter(path,
            adapter_name=...)`) and fuse their per-frame start / end distributions before decoding, by the mean of
            their probabilities (`peft_vtg.heads.fuse_grounding_outputs`; inside, matching and saliency scores are
            averaged alike). One batched forward: every (video, query) pair is repeated once per adapter and run
            through the per-sample adapter mechanism. The first adapter's recorded window and frames per video are
            used. None (default): the active adapter alone; `["a"]` gives exactly what adapter "a" gives.
        ensemble_fusion: "mean" (of the members' probabilities, default) or "geometric" (their normalised geometric
            mean: a span scores high only where every member agrees); see `peft_vtg.heads.ensemble`.
        disable_tqdm: no progress bar over a long video's windows.

    Returns:
        For a single video and a single query, its list of moments; otherwise one list per (video, query) pair. With
        `return_saliency`, a `GroundingResult` (moments, and per clip `(start_s, end_s, score)`) in place of each
        list.
    """
    tuner = _tuner(model)
    layer, _ = tuner._feature_spec()
    check_tokenizer(tokenizer)
    _check_settings(num_frames, fps, image_size, top_k, nms_threshold, max_span_seconds, max_text_length, tokenizer)
    if not isinstance(return_saliency, bool):
        raise ValueError(f"return_saliency must be True or False, got {return_saliency!r}.")
    ensemble = _ensemble_of(tuner, layer, adapter_names, ensemble_fusion)
    window = _window_settings(layer, tuner, window_seconds, window_overlap, window_batch_size, num_frames, fps,
                              ensemble)
    if return_saliency:
        _check_saliency_heads(tuner, layer, clip_length, ensemble)
    videos, single_video = _split_videos(video)
    if isinstance(query, bytes):
        raise TypeError(f"query must be a string (or a list of strings), got bytes {query!r}; decode it first, e.g. "
                        "query.decode('utf-8').")
    if isinstance(query, str):
        queries, single_query = [query], True
    elif isinstance(query, Sequence):
        queries, single_query = list(query), False
    else:
        raise TypeError(f"query must be a string or a list of strings, got {type(query).__name__}.")
    if not queries:
        raise ValueError("query is empty.")
    for k, text in enumerate(queries):
        if not isinstance(text, str):
            raise TypeError(f"query {k} must be a string, got {type(text).__name__} {text!r}.")
        if not text.strip():
            raise ValueError(f"query {k} is empty; give the sentence to ground.")
    if single_video and not single_query:
        videos = videos * len(queries)
    elif single_query and not single_video:
        queries = queries * len(videos)
    if len(videos) != len(queries):
        raise ValueError(f"Got {len(videos)} videos and {len(queries)} queries; give one query per video, or one of either.")
    durations: list[Optional[float]]
    if isinstance(duration, (np.ndarray, torch.Tensor)) and duration.ndim == 0:
        duration = duration.item()
    if isinstance(duration, (str, bytes)):
        raise ValueError(f"duration must be seconds (a number, or one per video), got {duration!r}.")
    if duration is None or isinstance(duration, numbers.Real):
        durations = [duration] * len(videos)
    else:
        durations = list(duration) * (len(videos) if len(duration) == 1 else 1)
        if len(durations) != len(videos):
            raise ValueError(f"Got {len(durations)} durations for {len(videos)} videos.")
    durations = [None if d is None else check_positive_seconds(d, f"duration of video {i}")
                 for i, d in enumerate(durations)]

    encoder_size = encoder_image_size(layer.bound)
    if processor is None:  # an image processor resizes to its own size, which the encoder's config set
        check_encoder_image_size(image_size, encoder_size)
    image_size = image_size or encoder_size
    # Tensors are checked before any file is decoded: a bad one found after an hour-long video's windows wastes them.
    checked: dict[int, torch.Tensor] = {}  # one video given for several queries is checked once
    for index, item in enumerate(videos):
        if isinstance(item, (str, os.PathLike)):
            continue
        if id(item) not in checked:
            checked[id(item)] = _check_tensor(item, index, layer.bound.video_feature_size, encoder_size)
        videos[index] = checked[id(item)]
        if durations[index] is None:
            raise ValueError(f"Video {index} is a tensor: pass duration= (seconds), since it cannot be read from it.")
    # Long video files go window by window; the rest take the single pass below, as before.
    long_results: dict[int, Any] = {}
    if window is not None:
        long_items: dict[str, list[int]] = {}  # one pass over a long video serves all of its queries
        for index, item in enumerate(videos):
            if isinstance(item, (str, os.PathLike)):
                long_items.setdefault(os.fspath(item), []).append(index)
        for name, indices in long_items.items():
            seconds = video_duration(name)
            if seconds <= LONG_VIDEO_FACTOR * window.seconds:
                continue
            given = [durations[i] for i in indices if durations[i] is not None]
            if any(duration_mismatch(d, seconds) for d in given):
                warn_duration_mismatches([(name, given[0], seconds)])
            answers = _ground_long_video(
                tuner, name, [queries[i] for i in indices], tokenizer, seconds, window, image_size, processor,
                top_k, nms_threshold, max_span_seconds, max_text_length, return_saliency, clip_length, disable_tqdm,
                ensemble)
            long_results.update(zip(indices, answers))
        if len(long_results) == len(videos):
            results = [long_results[i] for i in range(len(videos))]
            return results[0] if single_video and single_query else results
    if num_frames is None and fps is None:
        num_frames = _trained_num_frames(tuner, layer, ensemble)
    short = [i for i in range(len(videos)) if i not in long_results]
    videos, queries, durations = [videos[i] for i in short], [queries[i] for i in short], [durations[i] for i in short]
    items, mismatches = [], []
    decoded: dict[str, tuple[torch.Tensor, float]] = {}  # one video with several queries is decoded once
    for position, item in enumerate(videos):
        if isinstance(item, (str, os.PathLike)):
            name = os.fspath(item)
            if name not in decoded:
                frames, file_duration = decode_video(name, num_frames=num_frames, fps=fps)
                decoded[name] = (preprocess_frames(frames, image_size=image_size or 224, processor=processor),
                                 file_duration)
            item, file_duration = decoded[name]
            if durations[position] is None:
                durations[position] = file_duration
            elif duration_mismatch(durations[position], file_duration):
                mismatches.append((name, durations[position], file_duration))
        items.append(item)
    warn_duration_mismatches(list(dict.fromkeys(mismatches)))
    padded, frame_mask = pad_videos(items)
    reference = next(tuner.parameters())
    text = _query_batch(tokenizer, queries, max_text_length)
    video_key = "video_features" if padded.dim() == 3 else "pixel_values"
    was_training = tuner.training
    tuner.eval()
    try:
        with torch.no_grad():
            out = _forward_grounding(
                tuner, ensemble,
                input_ids=text["input_ids"].to(reference.device),
                attention_mask=text["attention_mask"].to(reference.device),
                frame_mask=frame_mask.to(reference.device),
                **{video_key: padded.to(device=reference.device, dtype=reference.dtype)},
            )
    finally:
        tuner.train(was_training)
    moments = decode_moments(
        out.start_logits.cpu(), out.end_logits.cpu(), [float(d) for d in durations], frame_mask,
        top_k=top_k, max_span_seconds=max_span_seconds, nms_threshold=nms_threshold,
    )
    if return_saliency:
        logits = out.saliency_logits.float().cpu()
        results = []
        for row, row_moments in enumerate(moments):
            clips = _saliency_clips(logits[row, : int(frame_mask[row].sum())].tolist(), float(durations[row]),
                                    clip_length)
            results.append(GroundingResult(moments=row_moments, saliency=clips))
    else:
        results = moments
    if long_results:  # back in the caller's order
        by_index = dict(zip(short, results))
        results = [long_results[i] if i in long_results else by_index[i] for i in range(len(short) + len(long_results))]
    return results[0] if single_video and single_query else results


@dataclass
class GroundingResult:
    """What `ground(..., return_saliency=True)` returns per (video, query) pair.

    Attributes:
        moments: `(start_s, end_s, score)`, best first.
        saliency: per clip of `clip_length` seconds from the video's start, `(start_s, end_s, score)`; the score is
            the saliency head's logit (higher = more of a highlight for the query), the clips' overlap-weighted mean
            of the per-frame logits (`peft_vtg.timeline.frame_scores_to_clips`).
    """

    moments: list[Moment]
    saliency: list[tuple[float, float, float]]


def ground_queries(
    model: Any,
    video: Union[str, os.PathLike],
    queries: Sequence[str],
    tokenizer: Any,
    num_frames: Optional[int] = None,
    fps: Optional[float] = None,
    image_size: Optional[int] = None,
    processor: Optional[Any] = None,
    top_k: int = 5,
    nms_threshold: Optional[float] = 0.5,
    max_span_seconds: Optional[float] = None,
    max_text_length: Optional[int] = None,
    return_saliency: bool = False,
    clip_length: float = 2.0,
    window_seconds: Optional[float] = None,
    window_overlap: float = 0.5,
    window_batch_size: int = 8,
    query_batch_size: int = 64,
    adapter_names: Optional[Sequence[str]] = None,
    ensemble_fusion: str = "mean",
    disable_tqdm: bool = True,
) -> list[Union[list[Moment], "GroundingResult"]]:
    """Ground many queries in one video file, the video decoded and encoded once for all of them (video prompts do
    not depend on the query); what batch prediction (`peft-vtg predict --videos ... --queries ...`) runs per video.

    A video longer than 1.5 windows goes window by window as in `ground`; a shorter one is sampled once at
    `num_frames` / `fps` (default: the frames per video the adapter was trained on, recorded in its config, else
    the encoder's fixed count or 32). Arguments as in `ground` (`adapter_names`, `ensemble_fusion`: a prompt
    ensemble, each member encoding the video once); `query_batch_size` queries share one head pass.

    Returns:
        One entry per query, in order: its moments, or with `return_saliency` a `GroundingResult`.
    """
    tuner = _tuner(model)
    layer, _ = tuner._feature_spec()
    check_tokenizer(tokenizer)
    _check_settings(num_frames, fps, image_size, top_k, nms_threshold, max_span_seconds, max_text_length, tokenizer)
    query_batch_size = check_positive_int(query_batch_size, "query_batch_size", "queries")
    if isinstance(queries, (str, bytes)):  # list("a sentence") would ground each character
        raise TypeError(f"queries must be a list of sentences, got one {type(queries).__name__}: {queries!r}; wrap it "
                        "in a list, or use ground() for a single query.")
    if isinstance(queries, Mapping) or not isinstance(queries, Iterable):  # a dict would be read as its keys
        raise TypeError(f"queries must be a list of sentences, got {type(queries).__name__}.")
    queries = list(queries)
    if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ValueError("queries must be a non-empty list of non-empty sentences.")
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(f"video must be a video file path, got {type(video).__name__}.")
    ensemble = _ensemble_of(tuner, layer, adapter_names, ensemble_fusion)
    window = _window_settings(layer, tuner, window_seconds, window_overlap, window_batch_size, num_frames, fps,
                              ensemble)
    if return_saliency:
        _check_saliency_heads(tuner, layer, clip_length, ensemble)
    encoder_size = encoder_image_size(layer.bound)
    if processor is None:  # an image processor resizes to its own size, which the encoder's config set
        check_encoder_image_size(image_size, encoder_size)
    image_size = image_size or encoder_size
    duration = video_duration(video)
    if return_saliency:  # before the video is decoded: a clip length in the wrong unit fails at the end otherwise
        check_clip_count(duration, float(clip_length), "clip_length")
    if window is not None and duration > LONG_VIDEO_FACTOR * window.seconds:
        return _ground_long_video(tuner, video, queries, tokenizer, duration, window, image_size, processor, top_k,
                                  nms_threshold, max_span_seconds, max_text_length, return_saliency, clip_length,
                                  disable_tqdm, ensemble)
    if num_frames is None and fps is None:
        num_frames = _trained_num_frames(tuner, layer, ensemble)
    frames, _ = decode_video(video, num_frames=num_frames, fps=fps)
    pixels = preprocess_frames(frames, image_size=image_size or 224, processor=processor)  # (frames, 3, H, W)
    reference = next(tuner.parameters())
    results: list[Any] = []
    was_training = tuner.training
    tuner.eval()
    try:
        with torch.no_grad():
            encoded = _encode_windows(tuner, pixels.unsqueeze(0).to(device=reference.device, dtype=reference.dtype),
                                      ensemble)  # (1 [x members], frames, [layers,] dim)
            for begin in range(0, len(queries), query_batch_size):
                part = queries[begin:begin + query_batch_size]
                out = _ground_encoded(tuner, encoded, _query_batch(tokenizer, part, max_text_length), reference,
                                      ensemble)
                moments = decode_moments(out.start_logits.cpu(), out.end_logits.cpu(), [duration] * len(part),
                                         out.frame_mask.cpu(), top_k=top_k, max_span_seconds=max_span_seconds,
                                         nms_threshold=nms_threshold)
                for row, row_moments in enumerate(moments):
                    if not return_saliency:
                        results.append(row_moments)
                        continue
                    clips = _saliency_clips(out.saliency_logits[row].float().cpu().tolist(), duration, clip_length)
                    results.append(GroundingResult(moments=row_moments, saliency=clips))
    finally:
        tuner.train(was_training)
    return results


def long_video_window_seconds(model: Any, window_seconds: Optional[float] = None,
                              adapter_names: Optional[Sequence[str]] = None) -> Optional[float]:
    """The window (seconds) that `ground` / `ground_queries` cut long videos into for this adapter (an ensemble's
    first member): `window_seconds` when given, else the trained window recorded in the adapter's config; None when
    neither exists (no video is windowed). A video file longer than `LONG_VIDEO_FACTOR` windows is grounded window by
    window."""
    tuner = _tuner(model)
    layer, _ = tuner._feature_spec()
    window = _window_settings(layer, tuner, window_seconds, 0.5, 1, None, None,
                              _ensemble_of(tuner, layer, adapter_names))
    return None if window is None else window.seconds


def default_num_frames(model: Any, adapter_names: Optional[Sequence[str]] = None) -> int:
    """Frames a video file is sampled to when neither `num_frames` nor `fps` is given (`ground`, `ground_queries`,
    and the CLI's `--video-dir`): the encoder's fixed count (X-CLIP's temporal embeddings), else the frames per video
    the adapter (an ensemble's first member) was trained on (`trained_window_frames`, recorded by training), else
    `DEFAULT_NUM_FRAMES` (32)."""
    tuner = _tuner(model)
    layer, _ = tuner._feature_spec()
    return _trained_num_frames(tuner, layer, _ensemble_of(tuner, layer, adapter_names))


def _trained_num_frames(tuner: Any, layer: Any, ensemble: Optional[_Ensemble]) -> int:
    if layer.bound.required_num_frames:
        return int(layer.bound.required_num_frames)
    members = _members(layer, ensemble)
    trained = getattr(tuner.peft_config[members[0]], "trained_window_frames", None) if members else None
    return int(trained or DEFAULT_NUM_FRAMES)


def predicts_saliency(model: Any, adapter_names: Optional[Sequence[str]] = None) -> bool:
    """Whether the active adapter (or every member of an ensemble) has a saliency head (`predict_saliency`)."""
    tuner = _tuner(model)
    layer, _ = tuner._feature_spec()
    names = _members(layer, _ensemble_of(tuner, layer, adapter_names))
    return bool(names) and all(hasattr(tuner._heads_of(name).grounding, "saliency_head") for name in names)


@dataclass(frozen=True)
class _Ensemble:
    names: list[str]  # the members, each once
    fusion: str  # how their outputs are fused (`ENSEMBLE_FUSIONS`)


def _ensemble_of(tuner: Any, layer: Any, adapter_names: Optional[Sequence[str]],
                 fusion: str = "mean") -> Optional[_Ensemble]:
    """The checked prompt ensemble of `ground`'s `adapter_names` / `ensemble_fusion`, or None for the active
    adapter."""
    if fusion not in ENSEMBLE_FUSIONS:
        raise ValueError(f"ensemble_fusion must be one of {ENSEMBLE_FUSIONS}, got {fusion!r}.")
    if adapter_names is None:
        return None
    if isinstance(adapter_names, (str, bytes)) or not isinstance(adapter_names, Sequence):
        raise TypeError(f"adapter_names must be a list of adapter names, e.g. ['a', 'b'], got {adapter_names!r}.")
    names = list(adapter_names)
    if not names:
        raise ValueError("adapter_names is empty; give the adapters to ensemble, or None for the active adapter.")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"adapter_names must hold adapter names (strings), got {name!r}.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"adapter_names lists {repeated} more than once; name each adapter once (the members of an "
                         "ensemble weigh the same).")
    unknown = [name for name in names if name not in tuner.peft_config]
    if unknown:
        raise ValueError(f"adapter_names names adapters that are not loaded: {unknown}; loaded: "
                         f"{sorted(tuner.peft_config)}. Load each with model.load_adapter(path, adapter_name=...).")
    if layer.disable_adapters:
        raise ValueError("Adapters are disabled; the grounding head belongs to an adapter. Leave disable_adapter().")
    return _Ensemble(names=names, fusion=fusion)


def _members(layer: Any, ensemble: Optional[_Ensemble]) -> list[str]:
    """The adapters a call grounds with: the ensemble's, or the active one(s)."""
    return ensemble.names if ensemble is not None else layer._call_adapters()


def _forward_grounding(tuner: Any, ensemble: Optional[_Ensemble], **inputs: Any) -> Any:
    """`forward_grounding` with the active adapter, or with every member of an ensemble on every row (rows
    repeated member-minor, one batched forward through per-sample adapters) fused into one output per row."""
    if ensemble is None:
        return tuner.forward_grounding(**inputs)
    return tuner.forward_grounding_ensemble(ensemble.names, ensemble.fusion, **inputs)


def _encode_windows(tuner: Any, pixels: torch.Tensor, ensemble: Optional[_Ensemble]) -> torch.Tensor:
    """(windows, frames, 3, H, W) -> video features of each window with the active adapter, (windows, frames,
    [layers,] dim), or with each ensemble member, (windows * members, ...) member-minor."""
    layers = _heads_video_layers(tuner, ensemble)
    if ensemble is None:
        return tuner.encode_video(pixels, layers)
    windows = pixels.shape[0]
    return tuner.encode_video(pixels.repeat_interleave(len(ensemble.names), dim=0), layers,
                              adapter_names=ensemble.names * windows)


def _saliency_clips(frame_logits: list[float], duration: float, clip_length: float) -> list[tuple[float, float, float]]:
    """Per-frame saliency logits of a video (its real frames) -> `(start_s, end_s, score)` per clip of `clip_length`
    seconds from the start, the last clip cut at `duration` (`frame_scores_to_clips` gives the scores), as plain
    floats (a numpy clip_length would make them numpy scalars, which JSON cannot write)."""
    duration, clip_length = float(duration), float(clip_length)
    scores = frame_scores_to_clips(frame_logits, duration, clip_length)
    return [(k * clip_length, min((k + 1) * clip_length, duration), score) for k, score in enumerate(scores)]


def _check_saliency_heads(tuner: Any, layer: Any, clip_length: float, ensemble: Optional[_Ensemble] = None) -> None:
    check_positive_seconds(clip_length, "clip_length")
    heads = [tuner._heads_of(name) for name in _members(layer, ensemble)]
    if not all(hasattr(head.grounding, "saliency_head") for head in heads):
        raise ValueError("return_saliency=True needs an adapter trained with a saliency head "
                         "(VTGPromptConfig(predict_saliency=True), on data with highlight labels).")


# ---------------------------------------------------------------- long videos
# A video file longer than this many windows is grounded window by window; up to it, in one pass (the adapter sees
# frames a little sparser than in training, which costs less than cutting a moment at a window edge).
LONG_VIDEO_FACTOR = 1.5


@dataclass(frozen=True)
class _Window:
    frames: int  # frames per window, as in training
    seconds: float  # window length
    overlap: float  # fraction shared by consecutive windows
    batch_size: int  # windows per forward pass


def _window_settings(layer: Any, tuner: Any, window_seconds: Optional[float], overlap: float, batch_size: int,
                     num_frames: Optional[int], fps: Optional[float],
                     ensemble: Optional[_Ensemble] = None) -> Optional[_Window]:
    """The windowing of long videos for the active adapter (an ensemble's first member), or None when it records no
    trained window and none is given; arguments checked with errors naming them."""
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"window_overlap must be a fraction in [0, 1), got {overlap!r}.")
    batch_size = check_positive_int(batch_size, "window_batch_size", "windows")
    members = _members(layer, ensemble)
    config = tuner.peft_config[members[0]] if members else None
    recorded = {(getattr(tuner.peft_config[name], "trained_window_frames", None),
                 getattr(tuner.peft_config[name], "trained_window_seconds", None)) for name in members}
    if len(recorded) > 1 and window_seconds is None:
        warnings.warn(f"The adapters {members} were trained on different windows ({sorted(recorded, key=str)}); "
                      f"long videos are cut into {members[0]!r}'s. Pass window_seconds= to choose.", stacklevel=3)
    if window_seconds is None:
        window_seconds = getattr(config, "trained_window_seconds", None)
        if window_seconds is None:
            return None
    window_seconds = check_positive_seconds(window_seconds, "window_seconds")
    # An encoder's fixed count (X-CLIP: its temporal embeddings fix the frames per clip) overrides the flags.
    required = layer.bound.required_num_frames
    if required is None and num_frames is not None:
        frames = num_frames
    elif required is None and fps is not None:
        frames = max(1, int(round(window_seconds * fps)))
    else:
        frames = _trained_num_frames(tuner, layer, ensemble)
    return _Window(frames=int(frames), seconds=float(window_seconds), overlap=float(overlap), batch_size=batch_size)


def _ground_long_video(tuner: Any, path: Any, queries: list[str], tokenizer: Any, duration: float, window: _Window,
                       image_size: Optional[int], processor: Optional[Any], top_k: int,
                       nms_threshold: Optional[float], max_span_seconds: Optional[float],
                       max_text_length: Optional[int], return_saliency: bool, clip_length: float,
                       disable_tqdm: bool, ensemble: Optional[_Ensemble] = None) -> list[Any]:
    """Ground `queries` in one long video file window by window (see `ground`'s `window_seconds`): each query's
    window spans (`_window_spans`, one pass over the video for all queries) joined across window edges
    (`merge_window_spans`), suppressed once over the whole video (temporal NMS) and the top `top_k` returned in
    seconds. Saliency: the mean over the windows that see a frame. One result per query."""
    total, starts, spans, saliency = _window_spans(
        tuner, path, queries, tokenizer, duration, window, image_size, processor, top_k, max_span_seconds,
        max_text_length, return_saliency, disable_tqdm, ensemble)
    step = duration / total
    results = []
    for q in range(len(queries)):
        merged = merge_window_spans(spans[q], starts, window.frames)
        windows = [[first * step, (last + 1) * step, score] for first, last, score in merged]
        ranked = (temporal_nms(windows, nms_threshold, top_k) if nms_threshold is not None
                  else rank_windows(windows)[:top_k])
        moments = [(float(start), float(min(end, duration)), float(score)) for start, end, score in ranked]
        if not return_saliency:
            results.append(moments)
            continue
        results.append(GroundingResult(moments=moments, saliency=_saliency_clips(saliency[q], duration, clip_length)))
    return results


def _heads_video_layers(tuner: Any, ensemble: Optional[_Ensemble] = None) -> Optional[int]:
    """How many video layers the active adapters' (or the ensemble's) heads read (None: one, the encoder's
    features)."""
    layer = tuner._layer(tuner.model)
    most = max(tuner._heads_of(name).grounding.video_layers for name in _members(layer, ensemble))
    return most if most > 1 else None


def check_query_lengths(model: Any, tokenizer: Any, queries: Sequence[str], names: Optional[Sequence[str]] = None,
                        max_text_length: Optional[int] = None, adapter_names: Optional[Sequence[str]] = None,
                        flag: str = "max_text_length") -> None:
    """Raise, naming them, when queries do not fit the text encoder: longer (after truncation to `max_text_length`
    tokens) than its positions hold beside the adapters' text prompt tokens, or holding no word. A batch job checks
    all of its queries with this before its first video, instead of stopping at the video of the first bad one.

    Args:
        queries: the sentences; names: how messages name them (e.g. qids; default "query k").
        max_text_length: the truncation the run will use (None: none); flag: how messages name it (e.g.
            "--max-text-length").
    """
    tuner = _tuner(model)
    layer, _ = tuner._feature_spec()
    names = list(names) if names is not None else [f"query {k}" for k in range(len(queries))]
    if max_text_length is not None:
        check_max_text_length(tokenizer, max_text_length, flag)
    text = layer.bound.text
    members = _members(layer, _ensemble_of(tuner, layer, adapter_names))
    prompts = max(int(tuner.peft_config[name].num_text_tokens) for name in members)
    room = None
    if text is not None and text.max_positions is not None and text.spec.slot_source == "input_ids":
        room = int(text.max_positions) - prompts
    for start in range(0, len(queries), 1024):  # the tokenizer's batches: memory bounded for any file
        chunk = list(queries[start:start + 1024])
        padded = tokenizer(chunk, padding=True, truncation=max_text_length is not None, max_length=max_text_length,
                           return_tensors="pt")
        lengths = padded["attention_mask"].sum(dim=1).tolist()  # tokens of each query, padding excluded
        too_long = [(name, length) for name, length in zip(names[start:start + 1024], lengths)
                    if room is not None and length > room]
        if too_long:
            listed = ", ".join(f"{name!s} ({length})" for name, length in too_long[:10])
            more = f" and {len(too_long) - 10} more" if len(too_long) > 10 else ""
            given = f"{flag} {room}" if flag.startswith("-") else f"{flag}={room}"
            raise ValueError(f"Queries longer than the text encoder takes (max_position_embeddings="
                             f"{text.max_positions}, of which {prompts} for the text prompts: {room} tokens per "
                             f"query): {listed}{more} tokens. Truncate them with {given}, or shorten them.")
        check_query_tokens(tokenizer, padded["input_ids"], padded["attention_mask"], names[start:start + 1024])


def _query_batch(tokenizer: Any, queries: list[str], max_text_length: Optional[int]) -> dict[str, torch.Tensor]:
    text = tokenizer(queries, padding=True, truncation=max_text_length is not None, max_length=max_text_length,
                     return_tensors="pt")
    names = [f"query {k}" for k in range(len(queries))]
    check_query_tokens(tokenizer, text["input_ids"], text["attention_mask"], names)
    return text


def _ground_encoded(tuner: Any, video: torch.Tensor, text: dict[str, torch.Tensor], reference: torch.Tensor,
                    ensemble: Optional[_Ensemble] = None) -> Any:
    """The grounding head on video features encoded once (by this adapter, `video_features_from_adapter`) for
    several queries: `video` (windows, frames, [layers,] dim) -> rows window-major, each window with every query.
    With an ensemble, `video` is (windows * members, ...) member-minor (`_encode_windows`): each member's head reads
    its own encoding, and the members' outputs are fused into one row per (window, query)."""
    queries, members = text["input_ids"].shape[0], 1 if ensemble is None else len(ensemble.names)
    windows = video.shape[0] // members
    # rows (window, query, member): member m of window w reads video row w * members + m
    video = video.view(windows, 1, members, *video.shape[1:]).expand(windows, queries, members, *video.shape[1:])
    ids, mask = (t[None, :, None].expand(windows, queries, members, t.shape[-1]).reshape(-1, t.shape[-1])
                 for t in (text["input_ids"], text["attention_mask"]))
    out = tuner.forward_grounding(
        input_ids=ids.to(reference.device), attention_mask=mask.to(reference.device),
        video_features=video.reshape(-1, *video.shape[3:]), video_features_from_adapter=True,
        adapter_names=None if ensemble is None else ensemble.names * (windows * queries),
    )
    return out if ensemble is None else fuse_grounding_outputs(out, members, ensemble.fusion)


def _window_spans(tuner: Any, path: Any, queries: list[str], tokenizer: Any, duration: float, window: _Window,
                  image_size: Optional[int], processor: Optional[Any], top_k: int,
                  max_span_seconds: Optional[float], max_text_length: Optional[int], return_saliency: bool,
                  disable_tqdm: bool, ensemble: Optional[_Ensemble] = None,
                  ) -> tuple[int, list[int], list[list[list[tuple[int, int, float]]]], Optional[list]]:
    """Each query's best spans in each window, on the whole video's frame grid.

    The video is sampled at the windows' rate (`window.frames / window.seconds` frames per second) over its whole
    length, streamed through `iter_video_frames`; windows of `window.frames` frames start `(1 - overlap)` of a window
    apart (`window_starts`), and a batch of `window.batch_size` windows is encoded at a time, once for every query
    (video prompts do not depend on the query), so memory holds one batch of windows whatever the video's length.
    Spans are scored comparably across windows (`calibrated_spans`).

    Returns:
        (frames on the whole grid, each window's first frame, per query per window the spans `(first, last, score)`
        in whole-grid frames, per query the per-frame saliency logits averaged over the windows that see each frame
        (or None)).
    """
    from tqdm.auto import tqdm

    sampled = duration * window.frames / window.seconds
    if sampled > MAX_SAMPLED_FRAMES:  # a window length in the wrong unit: hours of decoding before any error
        raise ValueError(f"window_seconds={window.seconds!r} with {window.frames} frames per window samples "
                         f"{sampled:,.0f} frames of this {duration:.1f} s video, more than {MAX_SAMPLED_FRAMES:,}; "
                         "window_seconds is in seconds (leave it out to use the adapter's trained window).")
    total = max(window.frames, int(round(sampled)))
    step = duration / total  # seconds per frame on the whole video's grid
    stride = max(1, int(round(window.frames * (1.0 - window.overlap))))
    starts = window_starts(total, window.frames, stride)
    reference = next(tuner.parameters())
    text = _query_batch(tokenizer, queries, max_text_length)
    max_span_frames = None if max_span_seconds is None else max(1, int(math.ceil(max_span_seconds / step)))
    spans: list[list[list[tuple[int, int, float]]]] = [[] for _ in queries]
    saliency_sum, saliency_count = torch.zeros(len(queries), total), torch.zeros(total)
    frames_iter = iter_video_frames(path, sample_times(duration, total))
    buffer: list[torch.Tensor] = []  # preprocessed frames from `buffer_start` on
    buffer_start = 0
    was_training = tuner.training
    tuner.eval()
    progress = tqdm(total=len(starts), unit="window", desc="grounding a long video", leave=False,
                    disable=disable_tqdm or len(starts) < 4)
    try:
        for batch_begin in range(0, len(starts), window.batch_size):
            batch_starts = starts[batch_begin:batch_begin + window.batch_size]
            needed = batch_starts[-1] + window.frames
            while buffer_start + len(buffer) < needed:  # decode up to the end of this batch's last window
                chunk = [frame for _, frame in zip(range(64), frames_iter)]
                if not chunk:
                    raise ValueError(f"Video file {os.fspath(path)} ended before frame {needed} of {total}.")
                buffer.extend(preprocess_frames(torch.stack(chunk), image_size=image_size or 224, processor=processor))
            clips = torch.stack([torch.stack(buffer[s - buffer_start:s - buffer_start + window.frames])
                                 for s in batch_starts])  # (windows, frames, 3, H, W)
            with torch.no_grad():
                video = _encode_windows(tuner, clips.to(device=reference.device, dtype=reference.dtype), ensemble)
                out = _ground_encoded(tuner, video, text, reference, ensemble)
            match = match_probabilities(out)  # (rows,) or None
            for w, start in enumerate(batch_starts):
                for q in range(len(queries)):
                    row = w * len(queries) + q
                    inside = out.inside_logits[row].cpu() if out.inside_logits is not None else None
                    found = calibrated_spans(out.start_logits[row].cpu(), out.end_logits[row].cpu(), inside, top_k,
                                             max_span_frames, None if match is None else float(match[row]))
                    spans[q].append([(start + i, start + j, score) for i, j, score in found])
                    if return_saliency:
                        saliency_sum[q, start:start + window.frames] += out.saliency_logits[row].float().cpu()
                if return_saliency:
                    saliency_count[start:start + window.frames] += 1
            progress.update(len(batch_starts))
            # Frames before the next batch's first window are never needed again.
            if batch_begin + window.batch_size < len(starts):
                drop = starts[batch_begin + window.batch_size] - buffer_start
                del buffer[:drop]
                buffer_start += drop
    finally:
        progress.close()
        tuner.train(was_training)
    saliency = (saliency_sum / saliency_count.clamp_min(1)).tolist() if return_saliency else None
    return total, starts, spans, saliency
