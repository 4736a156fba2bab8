"""Per-frame features for your own videos: `peft-vtg extract`, read back by `--features-dir` (`FeatureDirectory`).

The features are what the grounding head reads from a frozen encoder: the final layer's pooled tokens, computed by the
frozen-prefix cache's own code for its final layer (`video_tower_outputs`), finished by the architecture's
`VideoTowerSpec.finish` and `FeatureSpec.frames_from_tower` (CLIP and SigLIP: the pooled output per frame; X-CLIP:
projection and MIT), exactly as `run_video_tower_from` does for a cache of layer L. So extracted features equal
`encode_video` of the same frames, and there is one implementation, not two.

Layout of a feature directory: `<vid>.npy` (default; `.safetensors` or `.h5` with one array `features`, or, with
`file_format="moment_detr"`, `<vid>.npz` holding `features` at one row per 2-second clip as Moment-DETR-family tools
read them), and `manifest.json` recording the base model (name, architecture, sha256 of the video tower's weights),
the sampling and preprocessing, dtype and, per video, frames and duration. Files are written atomically; a rerun
with the same settings skips the videos already done, and a directory of other settings is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .cache import (
    CacheMismatchError,
    _differences,
    _json_safe,
    _peft_vtg_version,
    model_settings,
    sampling_settings,
)
from .data.video import check_positive_int, check_video_id
from .files import read_json, remove_interrupted_writes, write_file_atomic, write_json_atomic
from .locks import RunLock
from .injection import bind_architecture, num_video_layers, run_video_tower_from, video_tower_outputs

EXTRACT_FORMAT = "peft_vtg.features"
FILE_FORMATS = {"npy": ".npy", "safetensors": ".safetensors", "h5": ".h5", "moment_detr": ".npz"}
MOMENT_DETR_FPS = 0.5  # one feature per 2-second clip
DTYPES = {"fp32": np.float32, "fp16": np.float16}
SETTING_KEYS = ("architecture", "model_class", "weights_sha256", "num_frames", "fps", "preprocessing", "dtype",
                "file_format", "feature_size")
MANIFEST_NAME = "manifest.json"
# How often the manifest (the record of what is done) is rewritten while extracting; a kill loses at most this much.
MANIFEST_INTERVAL_SECONDS = 5.0
LOCK_NAME = ".peft-vtg-extract.lock"


def frame_features(model: nn.Module, pixel_values: torch.Tensor, frames_per_forward: int = 256) -> torch.Tensor:
    """Per-frame features of one video from the frozen base model, (frames, feature_size) in fp32: the final layer's
    pooled tokens (`video_tower_outputs`, the cache's final-layer path), finished by the architecture's spec.

    Args:
        model: a base model (CLIP, SigLIP, X-CLIP) without a VTG adapter.
        pixel_values: (frames, 3, H, W) preprocessed frames of one video.
        frames_per_forward: frames per tower pass for encoders that see frames one by one (memory bound); X-CLIP,
            whose layers mix the frames of a clip, takes the whole clip in one pass.
    """
    bound = bind_architecture(model)
    total = num_video_layers(bound)
    device = next(model.parameters()).device
    chunk = len(pixel_values) if bound.required_num_frames is not None else frames_per_forward
    states = []
    with torch.no_grad():
        for begin in range(0, len(pixel_values), chunk):
            part = pixel_values[begin:begin + chunk].to(device)
            states.append(video_tower_outputs(bound, part, 1)[:, 0])  # (rows, tokens, hidden)
        tower_output = run_video_tower_from(bound, torch.cat(states), total)
        features = bound.spec.features.frames_from_tower(bound.root, tower_output, 1, len(pixel_values))
    return features[0].float().cpu()  # (frames, feature_size)


def _write_features(path: str, features: np.ndarray, file_format: str) -> None:
    def write(temporary: str) -> None:
        if file_format == "npy":
            with open(temporary, "wb") as handle:
                np.save(handle, features, allow_pickle=False)
        elif file_format == "moment_detr":
            with open(temporary, "wb") as handle:
                np.savez(handle, features=features)
        elif file_format == "safetensors":
            from safetensors.numpy import save_file

            save_file({"features": np.ascontiguousarray(features)}, temporary)
        else:
            from .data.video import _import_h5py

            with _import_h5py().File(temporary, "w") as handle:
                handle.create_dataset("features", data=features)

    write_file_atomic(path, write)


def extract_features(
    model: nn.Module,
    video_ids: Iterable[str],
    videos: Any,
    output_dir: str,
    *,
    file_format: str = "npy",
    dtype: str = "fp32",
    base_model_name: Optional[str] = None,
    frames_per_forward: int = 256,
    disable_tqdm: bool = False,
) -> dict[str, Any]:
    """Write per-frame features of each video to `output_dir` (resumable; see the module docstring).

    Args:
        model: the base model without a VTG adapter (put in eval mode).
        video_ids: the videos (plain file names, `check_video_id`).
        videos: a `VideoFiles` (it records how it samples and preprocesses); for `file_format="moment_detr"` it must
            sample at 0.5 fps (one frame per 2-second clip).
        file_format: "npy", "safetensors", "h5" or "moment_detr" (`.npz` with `features`).
        dtype: "fp32" or "fp16".

    Returns:
        The manifest (also in `output_dir/manifest.json`).
    """
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {sorted(FILE_FORMATS)}, got {file_format!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    frames_per_forward = check_positive_int(frames_per_forward, "frames_per_forward", "frames")
    if any(hasattr(module, "vtg_prompts") for module in model.modules()):
        raise ValueError("extract_features needs the base model without a VTG adapter; load it with "
                         "AutoModel.from_pretrained.")
    ids = list(dict.fromkeys(check_video_id(vid) for vid in video_ids))
    if not ids:
        raise ValueError("No videos to extract features from.")
    bound = bind_architecture(model)
    sampling = sampling_settings(videos)
    if file_format == "moment_detr" and sampling["fps"] != MOMENT_DETR_FPS:
        raise ValueError(f"file_format='moment_detr' writes one feature per 2-second clip: sample the videos at "
                         f"fps={MOMENT_DETR_FPS} (--fps {MOMENT_DETR_FPS}), not {sampling}.")
    settings = {**model_settings(bound, num_video_layers(bound)), **sampling, "dtype": dtype,
                "file_format": file_format, "feature_size": bound.video_feature_size}
    settings = {key: value for key, value in settings.items() if key not in ("layer", "num_layers", "hidden_size",
                                                                            "feature_layers")}
    os.makedirs(output_dir, exist_ok=True)
    # One run per directory: a second would remove the first's half-written files as leftovers of a kill.
    lock = RunLock(output_dir, name=LOCK_NAME, what="extract run", flag="--output-dir").acquire()
    try:
        manifest_path = os.path.join(output_dir, MANIFEST_NAME)
        done: dict[str, Any] = {}
        if os.path.exists(manifest_path):
            recorded = read_json(manifest_path, "it is damaged: use another --output-dir, or delete the directory.")
            if not isinstance(recorded, dict) or recorded.get("format") != EXTRACT_FORMAT or \
                    not isinstance(recorded.get("videos", {}), dict):
                raise ValueError(f"{output_dir} holds a {MANIFEST_NAME} that is not a peft_vtg feature manifest; use "
                                 "another --output-dir.")
            differences = _differences(recorded, _json_safe(settings), SETTING_KEYS, recorded_as="features")
            # A run that wrote no video (it failed on the first one: a wrong --image-size, say) has nothing to keep
            # consistent with, so a corrected rerun takes the directory over.
            if differences and recorded.get("videos"):
                raise CacheMismatchError(f"{output_dir} holds features extracted with other settings "
                                         f"({'; '.join(differences)}); use another --output-dir, or delete it.")
            if differences:
                # Taken over: feature files the killed run wrote before listing them are of the old settings (another
                # format or frame count), and `--features-dir` would read them in place of this run's.
                feature_suffixes = tuple(set(FILE_FORMATS.values()))
                for name in os.listdir(output_dir):
                    if name.endswith(feature_suffixes) and os.path.isfile(os.path.join(output_dir, name)):
                        os.remove(os.path.join(output_dir, name))
            done = dict(recorded.get("videos", {}))  # none when taken over (refused above otherwise)
        remove_interrupted_writes(output_dir)
        suffix = FILE_FORMATS[file_format]
        done = {vid: entry for vid, entry in done.items() if os.path.exists(os.path.join(output_dir, vid + suffix))}

        def write_manifest(complete: bool) -> dict[str, Any]:
            manifest = {"format": EXTRACT_FORMAT, **_json_safe(settings), "base_model": base_model_name,
                        "peft_vtg_version": _peft_vtg_version(), "complete": complete,
                        "videos": {v: done[v] for v in sorted(done)}}
            write_json_atomic(manifest_path, manifest, indent=1)
            return manifest

        was_training = model.training
        model.eval()
        todo = [vid for vid in ids if vid not in done]
        write_manifest(complete=not todo)  # first: a rerun after a kill, whenever it lands, knows these settings
        written = time.monotonic()
        try:
            for vid in tqdm(todo, unit="video", desc="extracting features", disable=disable_tqdm):
                pixels = torch.as_tensor(videos(vid))  # (frames, 3, H, W)
                features = frame_features(model, pixels, frames_per_forward).numpy().astype(DTYPES[dtype])
                if not np.isfinite(features).all():
                    raise ValueError(f"Video {vid!r}: its features are not finite in {dtype}"
                                     + (" (use --dtype fp32)." if dtype == "fp16" else "."))
                _write_features(os.path.join(output_dir, vid + suffix), features, file_format)
                duration = getattr(videos, "decoded_durations", {}).get(vid)
                done[vid] = {"frames": int(features.shape[0]),
                             "duration": None if duration is None else float(duration)}
                if time.monotonic() - written >= MANIFEST_INTERVAL_SECONDS:
                    write_manifest(complete=False)
                    written = time.monotonic()
        finally:
            model.train(was_training)
            manifest = write_manifest(complete=all(vid in done for vid in ids))
    finally:
        lock.release()
    return manifest
