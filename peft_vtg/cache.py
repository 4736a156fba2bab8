"""The frozen-prefix cache: the frozen video encoder run once per video, up to layer k, stored on disk.

With `prompt_start_layer = k`, layers 0..k-1 of the video tower see no prompt and never change, so the hidden states
entering layer k are a pure function of the video. `build_cache` computes them once per video and stores them, per
video, as a (frames, tokens, hidden) tensor in safetensors shards, with a JSON manifest; `CachedVideoStates` serves
them to `GroundingCollator`, and `forward_grounding(video_hidden_states=..., video_hidden_states_layer=k)` runs only
layers k..L and what follows them.

`k = L` (the number of layers) stores the tower's final outputs: the classic feature path, for adapters without
video prompts. Only the tokens the tower's pooling reads are kept (CLIP and X-CLIP: the CLS token, 1 of 50 on
ViT-B/32; SigLIP: all), and with `feature_layers = m` the outputs of the last m layers, (frames, m, tokens, hidden),
for heads that read several layers (`head_video_layers`).

Layout of a cache directory:

- `manifest.json`: what the states were computed from (base model name or path, architecture, a sha256 of the
  weights they depend on, k, frames or fps, preprocessing, dtype, peft_vtg version) and, per video, its shard, key,
  number of frames and duration (seconds). Rewritten atomically (temporary file + rename).
- `shard-<hash>.safetensors`: the states of one batch of videos (key = video id), written atomically. Its header
  metadata repeats the videos' entries and the settings' hash, so the shards alone say what is finished: a killed
  build, rerun with the same arguments, keeps them and encodes only the rest.

Several processes (`accelerate launch ... -m peft_vtg cache ...`) split the batches; each writes its own shards and
the main process merges the manifest at the end. Batches are a fixed grid over the sorted video ids, so 1 or N
processes, interrupted or not, write the same shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .data.video import check_positive_int, check_video_id
from .files import read_json, remove_interrupted_writes, write_file_atomic, write_json_atomic
from .locks import RunLock
from .injection import (
    bind_architecture,
    num_video_layers,
    video_tower_input,
    video_tower_outputs,
    video_tower_weights_sha256,
)
from .injection.spec import BoundSpec
from .injection.tower import check_num_layers, check_video_tower

# While building, the manifest is rewritten at most this often (each rewrite holds every video so far, so once per
# batch would cost time quadratic in the number of videos). The shards' own headers are the record a resume reads;
# the manifest is also written when the build stops, and completed at its end.
MANIFEST_INTERVAL_SECONDS = 30.0

CACHE_FORMAT = "peft_vtg.frozen_prefix_cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".peft-vtg-cache.lock"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".safetensors"
SHARD_METADATA_KEY = "peft_vtg_cache"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# What `preprocess_frames` does without an image processor (kept beside mean/std in the manifest, so that a change of
# the resizing code shows up as a preprocessing mismatch).
RESIZE = "short side to image_size (bilinear, antialiased), centre crop, /255, then (x - mean) / std"
# How decoded frames are oriented (recorded for the same reason: caches and features from before frames were turned
# upright hold phone videos on their side, and a resumed build must not mix the two).
ORIENTATION = "upright by the video's display matrix"
# The settings the cached values depend on. A resumed build must match all of them; the base model's name or path,
# the peft_vtg version and the batch size are recorded but may differ.
SETTING_KEYS = ("architecture", "model_class", "weights_sha256", "layer", "num_layers", "hidden_size", "num_frames",
                "fps", "preprocessing", "dtype", "feature_layers")


class CacheMismatchError(ValueError):
    """A cache that does not belong to the model, layer, sampling or preprocessing it is used with."""


# ---------------------------------------------------------------- settings
def _peft_vtg_version() -> str:
    import peft_vtg

    return peft_vtg.__version__


def _json_safe(value: Any) -> Any:
    """`value` made JSON-serialisable for the manifest (tuples to lists, other objects to their repr)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


def sampling_settings(videos: Any) -> dict[str, Any]:
    """`num_frames`, `fps` and `preprocessing` of a video source, as the manifest records them.

    The source must describe how it samples and preprocesses, as `VideoFiles` does (attributes `num_frames`, `fps`
    and `preprocess`, the keyword arguments of `preprocess_frames`).
    """
    num_frames, fps = getattr(videos, "num_frames", None), getattr(videos, "fps", None)
    preprocess = getattr(videos, "preprocess", None)
    if not isinstance(preprocess, Mapping) or (num_frames is None) == (fps is None):
        raise ValueError(
            f"The cache needs to record how videos are sampled and preprocessed; {type(videos).__name__} does not "
            "say (it needs num_frames or fps, and preprocess, as peft_vtg.data.VideoFiles has). Use VideoFiles."
        )
    processor = preprocess.get("processor")
    if processor is None:
        preprocessing = {"image_size": int(preprocess["image_size"]), "mean": [float(m) for m in preprocess["mean"]],
                         "std": [float(s) for s in preprocess["std"]], "resize": RESIZE, "orientation": ORIENTATION}
    else:
        settings = processor.to_dict() if hasattr(processor, "to_dict") else {}
        preprocessing = {"processor": type(processor).__name__, "processor_settings": _json_safe(settings),
                         "orientation": ORIENTATION}
    return {"num_frames": None if num_frames is None else int(num_frames),
            "fps": None if fps is None else float(fps), "preprocessing": preprocessing}


def model_settings(bound: BoundSpec, layer: int, feature_layers: int = 1) -> dict[str, Any]:
    """The model side of a cache's settings: architecture, model class, the sha256 of the weights the states entering
    video layer `layer` depend on (`video_tower_weights_sha256`), the layer, the tower's depth and width, and how many
    final layer outputs a cache of layer L holds (`feature_layers`, 1 below L)."""
    check_video_tower(bound)
    total = num_video_layers(bound)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= total:
        raise ValueError(f"layer must be a whole number in 0..{total}: the video layer whose input is cached ({total} "
                         f"= the final hidden states of the {total}-layer video tower), got {layer!r}.")
    check_num_layers(bound, feature_layers, "feature_layers")
    if feature_layers > 1 and layer != total:
        raise ValueError(
            f"feature_layers={feature_layers} stores the outputs of the last {feature_layers} layers, which only a "
            f"cache of final features holds (--layer {total}); a cache at layer {layer} already gives the model "
            f"the outputs of layers {max(layer - 1, 0)}..{total - 1}. Use --layer {total} or --feature-layers 1."
        )
    return {"architecture": bound.spec.name, "model_class": type(bound.root).__name__,
            "weights_sha256": video_tower_weights_sha256(bound, layer), "layer": layer, "num_layers": total,
            "hidden_size": bound.video.hidden_size, "feature_layers": feature_layers}


def _with_setting_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with what caches built before a setting existed mean by leaving it out: below layer L,
    `feature_layers` 1. (A cache of layer L from before stored every token of the final states, not the pooled ones,
    so it has no default and does not resume.)"""
    settings = dict(settings)
    if "feature_layers" not in settings and settings.get("layer") != settings.get("num_layers"):
        settings["feature_layers"] = 1
    return settings


def _settings_sha256(settings: Mapping[str, Any]) -> str:
    # Below layer L, feature_layers (always 1 there) stays out of the hash: shards of caches built before it existed
    # then still count as finished.
    below_last = settings["layer"] != settings["num_layers"]
    chosen = {key: settings[key] for key in SETTING_KEYS if not (key == "feature_layers" and below_last)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def _differences(recorded: Mapping[str, Any], actual: Mapping[str, Any], keys: Iterable[str],
                 recorded_as: str = "cache") -> list[str]:
    def shown(key: str, value: Any) -> str:
        return f"{value[:12]}..." if key == "weights_sha256" and isinstance(value, str) else repr(value)

    return [f"{key}: {recorded_as} {shown(key, recorded.get(key))}, now {shown(key, actual.get(key))}" for key in keys
            if recorded.get(key) != actual.get(key)]


# ---------------------------------------------------------------- manifest and shards
def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest of a cache directory, checked for its format; errors name the file and the fix."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cache directory {directory}: no such directory. Build it with `peft-vtg cache "
                                "--output-dir DIR ...` (or peft_vtg.cache.build_cache).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no {MANIFEST_NAME}, so it is not a frozen-prefix cache; build one "
                                "with `peft-vtg cache --output-dir DIR ...`.")
    manifest = read_json(path, "rerun `peft-vtg cache` with the same arguments to rewrite it from the shards.")
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a peft_vtg frozen-prefix cache manifest (no \"format\": \"{CACHE_FORMAT}\").")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has cache format version {manifest.get('format_version')!r}; this peft_vtg reads "
                         f"version {FORMAT_VERSION}. Rebuild the cache with this version.")
    return manifest


def _shard_names(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX))


def _read_shard_entries(directory: str, name: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(settings sha256, vid -> {"frames", "duration"}) from a shard's header; `ValueError` if it cannot be read."""
    path = os.path.join(directory, name)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        record = json.loads(metadata[SHARD_METADATA_KEY])
        return str(record["settings_sha256"]), dict(record["videos"])
    except Exception as err:  # noqa: BLE001 - any damage is reported the same way
        raise ValueError(f"cannot read {path}: {err}") from err


def _scan_shards(directory: str, settings_hash: str) -> dict[str, dict[str, Any]]:
    """vid -> manifest entry for every video in the finished shards of `directory` (the shards are the record of
    what is done; the manifest is rebuilt from them). Unreadable shards are removed with a note (their videos are
    encoded again); shards of other settings are refused."""
    done: dict[str, dict[str, Any]] = {}
    for name in _shard_names(directory):
        try:
            shard_hash, videos = _read_shard_entries(directory, name)
        except ValueError as err:
            print(f"note: removing a damaged cache shard ({err}); its videos are encoded again.", file=sys.stderr)
            os.remove(os.path.join(directory, name))
            continue
        if shard_hash != settings_hash:
            raise CacheMismatchError(
                f"{os.path.join(directory, name)} was written with other cache settings than this run's (model "
                f"weights, layer, sampling, preprocessing or dtype). Use another --output-dir, or delete {directory} "
                "to rebuild it."
            )
        for vid, entry in videos.items():
            done.setdefault(vid, {"shard": name, "key": vid, "frames": int(entry["frames"]),
                                  "duration": entry.get("duration")})
    return done


def _prepare_directory(directory: str, settings: dict[str, Any], ids: Sequence[str]) -> None:
    """Main process, before any shard is written: check that an existing cache has this run's settings, remove
    leftovers of interrupted writes and rewrite the manifest from the finished shards: unfinished until the run ends,
    unless the shards already hold every one of this run's `ids` (a rerun with nothing to do, which a kill must not
    leave marked unfinished)."""
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, MANIFEST_NAME)):
        recorded = _with_setting_defaults(read_manifest(directory))
        differences = _differences(recorded, settings, SETTING_KEYS)
        # A run that finished no shard (killed, or failed on its first batch) has nothing to keep consistent with,
        # so a rerun with other settings takes the directory over; a shard of other settings is still refused below.
        if differences and (recorded.get("videos") or _shard_names(directory)):
            raise CacheMismatchError(
                f"{directory} holds a cache built with other settings ({'; '.join(differences)}). Use another "
                f"--output-dir, or delete {directory} to rebuild it; rerunning resumes only with the same settings."
            )
    remove_interrupted_writes(directory)
    done = _scan_shards(directory, _settings_sha256(settings))
    if done and all(vid in done for vid in ids):
        _write_manifest(directory, {**settings, "tokens": _stored_tokens(directory, done)}, done, complete=True)
    else:
        _write_manifest(directory, settings, done, complete=False)


def _write_manifest(directory: str, settings: Mapping[str, Any], videos: Mapping[str, Any], complete: bool) -> None:
    manifest = {"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, **settings,
                "peft_vtg_version": _peft_vtg_version(), "complete": complete,
                "videos": {vid: videos[vid] for vid in sorted(videos)}}
    write_json_atomic(os.path.join(directory, MANIFEST_NAME), manifest, indent=1)


# ---------------------------------------------------------------- building
class _Batches(torch.utils.data.Dataset):
    """One item per batch of the grid: its videos decoded and preprocessed (in DataLoader workers when asked)."""

    def __init__(self, batches: Sequence[list[str]], videos: Any, durations: Mapping[str, float]) -> None:
        self.batches, self.videos, self.durations = batches, videos, durations

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[tuple[str, torch.Tensor, Optional[float]]]:
        items = []
        for vid in self.batches[index]:
            frames = torch.as_tensor(self.videos(vid))  # (frames, 3, H, W)
            if frames.dim() != 4:
                raise ValueError(f"Video {vid!r}: the video source returned shape {tuple(frames.shape)}; the cache "
                                 "needs frames (frames, 3, height, width).")
            measured = getattr(self.videos, "decoded_durations", {}).get(vid)
            duration = measured if measured is not None else self.durations.get(vid)
            items.append((vid, frames, None if duration is None else float(duration)))
        return items


def _identity(item: Any) -> Any:
    return item


def _shard_name(vids: Sequence[str]) -> str:
    # From the videos it holds: the same batch gets the same name in every run, and never another batch's name.
    return f"{SHARD_PREFIX}{hashlib.sha256(chr(10).join(vids).encode()).hexdigest()[:16]}{SHARD_SUFFIX}"


def _main_first(accelerator: Any, function: Callable[[], None]) -> None:
    """Run `function` on the main process; its exception, if any, is raised on every process (none waits forever)."""
    error: Optional[BaseException] = None
    if accelerator.is_main_process:
        try:
            function()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every process
            error = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [None if error is None else (type(error).__name__, str(error), isinstance(error, CacheMismatchError))]
        broadcast_object_list(box, from_process=0)
        if box[0] is not None and error is None:
            name, message, mismatch = box[0]
            error = CacheMismatchError(message) if mismatch else RuntimeError(f"{name} on the main process: {message}")
    if error is not None:
        raise error


def build_cache(
    model: nn.Module,
    video_ids: Iterable[str],
    videos: Any,
    layer: int,
    output_dir: str,
    *,
    feature_layers: int = 1,
    dtype: str = "fp16",
    batch_size: int = 8,
    base_model_name: Optional[str] = None,
    durations: Optional[Mapping[str, float]] = None,
    num_workers: int = 0,
    disable_tqdm: bool = False,
    accelerator: Optional[Any] = None,
) -> dict[str, Any]:
    """Store, per video, the frozen video tower's hidden states entering video layer `layer` (resumable).

    Args:
        model: the base model (CLIP, SigLIP or X-CLIP), without a VTG adapter; it is put in eval mode and moved to
            the accelerator's device.
        video_ids: the videos to cache (duplicates are ignored); plain file names (`check_video_id`).
        videos: a `VideoFiles` (or a source with its `num_frames` / `fps` / `preprocess` attributes): vid ->
            preprocessed frames (frames, 3, H, W).
        layer: k in 0..L: the states entering video layer k; L = the tower's final outputs, cut to the tokens its
            pooling reads (`VideoTowerSpec.pooled_tokens`: CLIP's and X-CLIP's CLS token).
        feature_layers: at k = L, how many of the last layers' outputs to store (for heads with
            `head_video_layers` > 1); 1 below L.
        output_dir: the cache directory (created; an unfinished cache of the same settings there is resumed).
        dtype: storage dtype, "fp16" (default), "bf16" or "fp32" (fp32 reproduces the uncached path exactly).
        batch_size: videos per forward and per shard; memory holds one batch of frames and states.
        base_model_name: recorded in the manifest (e.g. the path or Hub id given to from_pretrained).
        durations: vid -> duration in seconds, recorded when the source does not measure it (`VideoFiles` does).
        num_workers: DataLoader workers that decode the next batches while one is encoded.
        disable_tqdm: no progress bar.
        accelerator: an `accelerate.Accelerator`; default a new one (several processes under `accelerate launch`).

    Returns:
        The final manifest (also in `output_dir/manifest.json`).
    """
    from accelerate import Accelerator

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    batch_size = check_positive_int(batch_size, "batch_size", "videos")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a whole number >= 0, got {num_workers!r}.")
    if any(hasattr(module, "vtg_prompts") for module in model.modules()):
        raise ValueError("build_cache needs the base model without a VTG adapter (its prompts would enter the cached "
                         "layers); load it with AutoModel.from_pretrained, or use peft_model.get_base_model() after "
                         "unload().")
    ids = sorted(dict.fromkeys(check_video_id(vid) for vid in video_ids))
    if not ids:
        raise ValueError("No videos to cache: the annotation rows name no video.")
    bound = bind_architecture(model)
    settings = {**model_settings(bound, layer, feature_layers), **sampling_settings(videos), "dtype": dtype}
    if bound.required_num_frames is not None and settings["num_frames"] != bound.required_num_frames:
        raise ValueError(
            f"The {bound.spec.name!r} video encoder needs exactly {bound.required_num_frames} frames per clip; sample "
            f"the videos with num_frames={bound.required_num_frames} (--num-frames {bound.required_num_frames}), not "
            f"{'fps=' + str(settings['fps']) if settings['fps'] else 'num_frames=' + str(settings['num_frames'])}."
        )
    settings = {"base_model": base_model_name, **settings, "batch_size": batch_size}
    settings_hash = _settings_sha256(settings)
    accelerator = accelerator if accelerator is not None else Accelerator()
    # One build per directory (the main process holds the lock for all of them): a second would remove the first's
    # half-written shards as leftovers of a kill.
    lock = RunLock(output_dir, name=LOCK_NAME, what="cache build", flag="--output-dir")

    def prepare() -> None:
        os.makedirs(output_dir, exist_ok=True)
        lock.acquire()
        _prepare_directory(output_dir, settings, ids)

    try:
        _main_first(accelerator, prepare)
        return _build_locked(model, bound, ids, videos, layer, output_dir, settings, settings_hash, feature_layers,
                             dtype, batch_size, durations, num_workers, disable_tqdm, accelerator)
    finally:
        lock.release()


def _build_locked(model: nn.Module, bound: BoundSpec, ids: list[str], videos: Any, layer: int, output_dir: str,
                  settings: dict[str, Any], settings_hash: str, feature_layers: int, dtype: str, batch_size: int,
                  durations: Optional[Mapping[str, float]], num_workers: int, disable_tqdm: bool,
                  accelerator: Any) -> dict[str, Any]:
    """`build_cache` once the directory is prepared and locked: encode the videos not yet cached, shard by shard."""
    accelerator.wait_for_everyone()
    done = dict(read_manifest(output_dir)["videos"])  # what _prepare_directory found in the finished shards

    grid = [ids[start:start + batch_size] for start in range(0, len(ids), batch_size)]
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = [[vid for vid in batch if vid not in done] for batch in grid[rank::world]]
    mine = [batch for batch in mine if batch]
    loader = torch.utils.data.DataLoader(_Batches(mine, videos, durations or {}), batch_size=None, shuffle=False,
                                         num_workers=num_workers, collate_fn=_identity)
    storage = DTYPES[dtype]
    was_training = model.training
    model.eval()  # dropout would make the cache random
    model.to(accelerator.device)
    where = f" (process {rank + 1} of {world})" if world > 1 else ""
    progress = tqdm(total=sum(len(batch) for batch in mine), unit="video", desc=f"caching layer {layer} inputs{where}",
                    disable=disable_tqdm or not accelerator.is_local_main_process)
    manifest_written = time.monotonic()
    try:
        for items in loader:
            pixel_values = torch.cat([frames for _, frames, _ in items]).to(accelerator.device)  # (rows, 3, H, W)
            with torch.no_grad():
                if layer < settings["num_layers"]:
                    states = video_tower_input(bound, pixel_values, layer)  # (rows, tokens, hidden)
                else:
                    states = video_tower_outputs(bound, pixel_values, feature_layers)  # (rows, m, tokens, hidden)
                    states = states[:, 0] if feature_layers == 1 else states  # one layer: no layer axis

            tensors, entries, offset = {}, {}, 0
            for vid, frames, duration in items:
                state = states[offset:offset + len(frames)].to(device="cpu", dtype=storage).contiguous()
                offset += len(frames)
                if not bool(torch.isfinite(state).all()):
                    raise ValueError(
                        f"Video {vid!r}: its layer-{layer} states are not finite in {dtype}"
                        + (" (they exceed float16's range: use --dtype bf16 or fp32)." if dtype == "fp16" else ".")
                    )
                tensors[vid] = state
                entries[vid] = {"frames": int(state.shape[0]), "duration": duration}
            name = _shard_name(list(tensors))
            metadata = {SHARD_METADATA_KEY: json.dumps({"settings_sha256": settings_hash, "videos": entries})}
            write_file_atomic(os.path.join(output_dir, name),
                              lambda path, tensors=tensors: save_file(tensors, path, metadata=metadata))
            for vid, entry in entries.items():
                done[vid] = {"shard": name, "key": vid, **entry}
            if accelerator.num_processes == 1 and time.monotonic() - manifest_written >= MANIFEST_INTERVAL_SECONDS:
                _write_manifest(output_dir, settings, done, complete=False)
                manifest_written = time.monotonic()
            progress.update(len(items))
            del states, tensors, pixel_values
    finally:
        progress.close()
        # Several processes: the main one merges all shards at the end instead (it cannot see the others'). A run
        # with nothing to encode leaves the manifest as _prepare_directory wrote it.
        if accelerator.num_processes == 1 and mine:
            _write_manifest(output_dir, settings, done, complete=False)
        model.train(was_training)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finished = _scan_shards(output_dir, settings_hash)
        absent = [vid for vid in ids if vid not in finished]
        if absent:  # pragma: no cover - every batch is someone's; only a bug or a deleted shard gets here
            raise RuntimeError(f"{len(absent)} video(s) were not cached: {absent[:10]}; rerun to encode them.")
        _write_manifest(output_dir, {**settings, "tokens": _stored_tokens(output_dir, finished)}, finished,
                        complete=True)
    accelerator.wait_for_everyone()
    return read_manifest(output_dir)


def _stored_tokens(directory: str, entries: Mapping[str, Mapping[str, Any]]) -> int:
    """Tokens per frame (per layer) of the stored states, read from one shard's header (one model gives one
    shape)."""
    entry = next(iter(entries.values()))
    with safe_open(os.path.join(directory, entry["shard"]), framework="pt") as handle:
        return int(handle.get_slice(entry["key"]).get_shape()[-2])


# ---------------------------------------------------------------- reading
def _bound_of(model: nn.Module) -> BoundSpec:
    """The bound spec of a VTG `PeftModel` (its adapter layer's) or of a bare base model."""
    for module in model.modules():
        layer = getattr(module, "vtg_prompts", None)
        if layer is not None and hasattr(layer, "bound"):
            return layer.bound
    return bind_architecture(model)


class CachedVideoStates:
    """A video source for `GroundingCollator` that serves a frozen-prefix cache: vid -> the hidden states entering
    video layer `layer`, (frames, tokens, hidden) in the cache's dtype (the model casts them).

    The collator puts them under `video_hidden_states` with `video_hidden_states_layer = layer` (`batch_key`,
    `batch_extras`), which `forward_grounding` runs from. `decoded_durations` (seconds, from the manifest) lets the
    collator warn about videos whose annotated duration differs.

    Args:
        directory: the cache (`build_cache` / `peft-vtg cache`).
        model: if given, `check_model(model)` runs now.
        layer, num_frames, fps, image_size, mean, std: what the caller expects (None = whatever the cache has); a
            difference raises `CacheMismatchError` naming the field and the fix.
    """

    batch_key = "video_hidden_states"

    def __init__(
        self,
        directory: str,
        model: Optional[nn.Module] = None,
        *,
        layer: Optional[int] = None,
        num_frames: Optional[int] = None,
        fps: Optional[float] = None,
        image_size: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ) -> None:
        self.root = os.fspath(directory)
        self.manifest = read_manifest(self.root)
        manifest = self.manifest
        self.layer: int = int(manifest["layer"])
        # How many final layer outputs each frame holds (a cache of layer L built with feature_layers > 1; those are
        # stored with a layer axis: (frames, layers, tokens, hidden)).
        self.feature_layers: int = int(manifest.get("feature_layers") or 1)
        self.batch_extras = {"video_hidden_states_layer": self.layer}
        self.videos: dict[str, dict[str, Any]] = manifest["videos"]
        self.decoded_durations = {vid: float(e["duration"]) for vid, e in self.videos.items()
                                  if e.get("duration") is not None}
        fix = "drop the setting to use the cache's, or rebuild the cache (peft-vtg cache --output-dir NEW_DIR ...)"
        if layer is not None and layer != self.layer:
            raise CacheMismatchError(
                f"The cache {self.root} holds the hidden states entering video layer {self.layer}, but layer {layer} "
                f"was asked for; rebuild it with --layer {layer}, or use a cache of that layer."
            )
        sampled = (f"num_frames={manifest['num_frames']}" if manifest["num_frames"] is not None
                   else f"fps={manifest['fps']}")
        if num_frames is not None and num_frames != manifest["num_frames"]:
            raise CacheMismatchError(f"The cache {self.root} sampled videos at {sampled}, but num_frames={num_frames} "
                                     f"was asked for (frames per video); {fix} with --num-frames {num_frames}.")
        if fps is not None and (manifest["fps"] is None or not math.isclose(fps, manifest["fps"])):
            raise CacheMismatchError(f"The cache {self.root} sampled videos at {sampled}, but fps={fps} was asked for "
                                     f"(frames per second); {fix} with --fps {fps}.")
        preprocessing = manifest["preprocessing"]
        for name, value in (("image_size", image_size), ("mean", mean), ("std", std)):
            if value is None:
                continue
            recorded = preprocessing.get(name)
            same = (recorded == value if name == "image_size" else
                    recorded is not None and len(recorded) == len(value)
                    and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(recorded, value)))
            if not same:
                raise CacheMismatchError(
                    f"The cache {self.root} preprocessed frames with {name}={recorded!r} (preprocessing: "
                    f"{preprocessing}), but {name}={value!r} was asked for; {fix}."
                )
        if not manifest.get("complete", False):
            print(f"note: the cache {self.root} is unfinished (its build was interrupted); rerun `peft-vtg cache` with "
                  "the same arguments to finish it. Videos it lacks are reported as missing.", file=sys.stderr)
        if model is not None:
            self.check_model(model)

    def check_model(self, model: nn.Module) -> None:
        """Raise `CacheMismatchError` unless `model` (a VTG `PeftModel` or its base) is the model the cache was built
        from, as far as the cached states go (architecture, width, the weights of the tower below the cached layer),
        and its adapters' video prompts enter at the cached layer or above."""
        bound = _bound_of(model)
        actual = model_settings(bound, self.layer)
        keys = ("architecture", "model_class", "num_layers", "hidden_size", "weights_sha256")
        differences = _differences(self.manifest, actual, keys)
        if differences:
            raise CacheMismatchError(
                f"The cache {self.root} was built from another model than this one "
                f"({'; '.join(differences)}; the cache records base model {self.manifest.get('base_model')!r}). "
                "Use the base model it was built from, or rebuild the cache from this one (peft-vtg cache "
                "--base-model ... --output-dir NEW_DIR); a different dtype of the same weights also counts as "
                "different."
            )
        check = getattr(model, "check_video_hidden_states_layer", None)
        if callable(check):
            check(self.layer, stored_layers=self.feature_layers)

    def path(self, vid: str) -> str:
        """The shard file holding `vid`."""
        return os.path.join(self.root, self.videos[check_video_id(vid, self.root)]["shard"])

    def missing(self, vids: Iterable[str]) -> list[str]:
        """The ids among `vids` that the cache does not hold."""
        return [vid for vid in dict.fromkeys(vids) if check_video_id(vid, self.root) not in self.videos]

    def __call__(self, vid: str) -> torch.Tensor:
        vid = check_video_id(vid, self.root)
        entry = self.videos.get(vid)
        if entry is None:
            raise ValueError(f"Video {vid!r} is not in the cache {self.root}; build the cache over the annotation file "
                           "that names it (peft-vtg cache --annotations ...).")
        path = os.path.join(self.root, entry["shard"])
        try:
            with safe_open(path, framework="pt") as handle:
                states = handle.get_tensor(entry["key"])  # (frames, tokens, hidden)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"The cache shard {path} (video {vid!r}) is missing; rerun `peft-vtg cache` with "
                                    "the same arguments to encode its videos again.") from err
        except Exception as err:  # noqa: BLE001 - a damaged file, whatever safetensors says about it
            raise ValueError(f"The cache shard {path} (video {vid!r}) cannot be read ({err}); delete it and rerun "
                             "`peft-vtg cache` with the same arguments.") from err
        dims = 3 if self.feature_layers == 1 else 4
        if states.dim() != dims or states.shape[0] != entry["frames"] or (
                dims == 4 and states.shape[1] != self.feature_layers):
            layout = ("(frames, tokens, hidden)" if dims == 3
                      else f"(frames, {self.feature_layers} layers, tokens, hidden)")
            raise ValueError(f"The cache shard {path} holds shape {tuple(states.shape)} for video {vid!r}, but the "
                             f"manifest says {entry['frames']} frames {layout}; rebuild the cache.")
        return states
