"""Epoch time of the same adapter trained from frames and from a frozen-prefix cache (`peft_vtg.cache`).

For each backbone and each cache layer k, one adapter is trained for two epochs from frames, then the cache of the
states entering video layer k is built and the same adapter (same seed, same initial weights) is trained for two
epochs from it. Reported: the second epoch's time both ways and their ratio, the cache's build time (once per data
set; reported apart, not folded into the epochs) and its bytes per video.

    python benchmarks/cache_speed.py                       # both backbones, on this machine's CPU
    python benchmarks/cache_speed.py --device cuda --dtype bf16   # on a GPU: bf16 base, peak memory too

Backbones:
  - `clip-vit-b32`: `CLIPModel(CLIPConfig())`, the towers of openai/clip-vit-base-patch32 (12 layers, 768 wide,
    224 px, patch 32) with random weights (time does not depend on them); 8 videos of 8 frames, batch 2.
  - `synthvtg`: the shipped SynthVTG backbone (3 layers, 64 wide, 32 px) on 256 SynthVTG train videos of 16 frames,
    batch 32, as in `synthvtg_benchmark.py`.

Adapters at layer k: k < L: 16 video + 8 text prompt tokens entering layer k, in every layer from k on (deep in the
top L - k layers), plus the default head; k = L: the head alone on the final states (the classic feature path), or
with `--head-video-layers m` the head over the last m layers' features, on a cache of those layers' final outputs
(`--feature-layers m`).

Frames come from memory: the uncached epochs do not include decoding video files, which `peft-vtg train
--video-dir` pays every epoch and the cache pays once. The ratios are therefore a floor for training from files.
Results go to `benchmarks/results/cache_speed.json` (one entry per backbone, layer and device; a rerun replaces the
entries it measures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cache_speed.json"


class MemoryFrames:
    """vid -> preprocessed frames (frames, 3, size, size) held in memory (random, fixed per video); describes its
    sampling and preprocessing as `VideoFiles` does, so the cache can record them."""

    fps = None

    def __init__(self, vids: list[str], num_frames: int, image_size: int) -> None:
        self.num_frames = num_frames
        self.preprocess = {"image_size": image_size, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                           "processor": None}
        generator = torch.Generator().manual_seed(0)
        self.frames = {vid: torch.randn(num_frames, 3, image_size, image_size, generator=generator) for vid in vids}

    def __call__(self, vid: str) -> torch.Tensor:
        return self.frames[vid]


def clip_vit_b32() -> tuple[Any, Any, list[dict[str, Any]], Any, int]:
    """A random ViT-B/32-sized CLIP with the shipped tokenizer, 8 one-query videos of 8 frames, batch 2."""
    from transformers import CLIPConfig, CLIPModel

    from peft_vtg.synth.backbone import load_backbone

    tokenizer = load_backbone()[1]
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    rows = [{"qid": f"q{i}", "vid": f"v{i}", "query": "the red square moves left", "duration": 30.0,
             "windows": [[3.0 + i, 9.0 + i]]} for i in range(8)]
    return model, tokenizer, rows, MemoryFrames([r["vid"] for r in rows], 8, 224), 2


def synthvtg() -> tuple[Any, Any, list[dict[str, Any]], Any, int]:
    """The shipped SynthVTG backbone on 256 SynthVTG train videos (512 queries) of 16 frames, batch 32."""
    from peft_vtg.synth import FrameSource, SynthVTG
    from peft_vtg.synth.backbone import load_backbone

    model, tokenizer = load_backbone()
    splits, videos = SynthVTG(seed=0, num_videos={"train": 256, "val": 1, "test": 1}).splits()
    return model, tokenizer, list(splits["train"]), FrameSource(videos, num_frames=16), 32


BACKBONES: dict[str, Callable[[], tuple[Any, Any, list[dict[str, Any]], Any, int]]] = {
    "clip-vit-b32": clip_vit_b32,
    "synthvtg": synthvtg,
}


def adapter_config(layer: int, num_layers: int, head_video_layers: int = 1) -> Any:
    from peft_vtg import VTGPromptConfig

    if layer == num_layers:
        return VTGPromptConfig(num_video_tokens=0, num_text_tokens=0, grounding_head=True,
                               head_video_layers=head_video_layers)
    depth = num_layers - layer
    return VTGPromptConfig(num_video_tokens=16, num_text_tokens=8, prompt_start_layer=layer,
                           video_prompt_depth=depth, text_prompt_depth=depth)


def epoch_seconds(base: Any, rows: list[dict[str, Any]], collator: Any, batch_size: int, layer: int, device: str,
                  dtype: torch.dtype, head_video_layers: int = 1) -> dict[str, Any]:
    """Train the layer-k adapter on `base` for two epochs with `peft_vtg.training.train`; each epoch's seconds."""
    from peft import get_peft_model

    from peft_vtg.injection.tower import num_video_layers
    from peft_vtg.training import VTGTrainingArguments, train

    torch.manual_seed(0)
    model = get_peft_model(base, adapter_config(layer, num_video_layers(_bound(base)), head_video_layers))
    model.to(device)
    steps = -(-len(rows) // batch_size)
    stamps: dict[int, float] = {}

    def stamp(step: int, logs: dict[str, float]) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps[step] = time.perf_counter()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as output_dir:
        args = VTGTrainingArguments(output_dir=output_dir, max_steps=2 * steps, per_device_train_batch_size=batch_size,
                                    learning_rate=1e-3, seed=0, disable_tqdm=True,
                                    mixed_precision={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no"))
        started = time.perf_counter()
        train(model, rows, collator, args, callbacks=[stamp])
    result = {"epoch_1_seconds": stamps[steps] - started, "epoch_2_seconds": stamps[2 * steps] - stamps[steps],
              "steps_per_epoch": steps,
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if device.startswith("cuda"):
        result["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    model.unload()
    return result


def _bound(model: Any) -> Any:
    from peft_vtg.injection.architectures import bind_architecture

    return bind_architecture(model)


def measure(name: str, layers: Optional[list[int]], device: str, dtype_name: str,
            head_video_layers: int = 1) -> list[dict[str, Any]]:
    from peft_vtg.cache import CachedVideoStates, build_cache
    from peft_vtg.data import GroundingCollator
    from peft_vtg.injection.tower import num_video_layers

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    base, tokenizer, rows, frames, batch_size = BACKBONES[name]()
    total = num_video_layers(_bound(base))
    measured = []
    for layer in layers if layers is not None else [total - 2, total - 1, total]:
        # A head over several layers is measured at k = L only, on a cache of those layers' final outputs.
        head_layers = head_video_layers if layer == total else 1
        entry: dict[str, Any] = {"backbone": name, "layer": layer, "num_layers": total,
                                 "head_video_layers": head_layers, "device": device,
                                 "dtype": dtype_name, "videos": len({r["vid"] for r in rows}), "queries": len(rows),
                                 "frames": frames.num_frames, "batch_size": batch_size}
        entry["frames_path"] = epoch_seconds(base, rows, GroundingCollator(tokenizer, frames), batch_size, layer,
                                             device, dtype, head_layers)
        with tempfile.TemporaryDirectory() as cache_dir:
            base.to(device)
            started = time.perf_counter()
            build_cache(base, [r["vid"] for r in rows], frames, layer, cache_dir, feature_layers=head_layers,
                        dtype="fp16" if dtype_name == "fp32" else dtype_name, batch_size=batch_size, disable_tqdm=True,
                        durations={r["vid"]: r["duration"] for r in rows})
            entry["cache_build_seconds"] = time.perf_counter() - started
            shards = [f for f in os.listdir(cache_dir) if f.endswith(".safetensors")]
            entry["cache_bytes_per_video"] = sum(os.path.getsize(os.path.join(cache_dir, f)) for f in shards) / \
                entry["videos"]
            base.to("cpu")
            cached = GroundingCollator(tokenizer, CachedVideoStates(cache_dir, layer=layer))
            entry["cache_path"] = epoch_seconds(base, rows, cached, batch_size, layer, device, dtype, head_layers)
        entry["epoch_2_speedup"] = entry["frames_path"]["epoch_2_seconds"] / entry["cache_path"]["epoch_2_seconds"]
        print(f"{name} k={layer}/{total} (head over {head_layers} layer(s)): epoch 2 from frames {entry['frames_path']['epoch_2_seconds']:.2f} s, from "
              f"the cache {entry['cache_path']['epoch_2_seconds']:.2f} s (x{entry['epoch_2_speedup']:.1f}); cache "
              f"built in {entry['cache_build_seconds']:.1f} s, {entry['cache_bytes_per_video']:,.0f} bytes a video",
              flush=True)
        measured.append(entry)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="cache layers k to measure (default: L-2, L-1 and L of each backbone)")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda; training runs where accelerate puts it, so set CUDA_VISIBLE_DEVICES='' "
                             "to time the CPU on a machine with a GPU")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="training precision (bf16/fp16: mixed precision through accelerate; the cache is stored "
                             "in it; fp32 training reads an fp16 cache, the default)")
    parser.add_argument("--head-video-layers", type=int, default=1,
                        help="at k = L: the head reads the last m layers, from a cache of their final outputs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    header = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    measured = [entry for name in args.backbones
                for entry in measure(name, args.layers, args.device, args.dtype, args.head_video_layers)]
    out = Path(args.results)
    previous = json.loads(out.read_text()) if out.exists() else {"runs": []}
    def key(entry: dict[str, Any]) -> tuple:
        return (entry["backbone"], entry["layer"], entry.get("head_video_layers", 1), entry["device"], entry["dtype"])

    fresh = {key(e) for e in measured}
    kept = [e for e in previous["runs"] if key(e) not in fresh]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": kept + [{**header, **e} for e in measured]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
