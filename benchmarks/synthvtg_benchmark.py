"""The SynthVTG benchmark of BENCHMARKS.md: VTG prompt tuning against the alternatives, on the shipped backbone.

Every trained method gets the same data, the same grounding head, the same step budget and batch size; its learning
rate is picked on val from a small grid (seed 0, final weights), then it is trained with two more seeds at that rate
and reported on test as mean +- std over the three seeds. Costs are measured separately, each method in a fresh
process: median training-step time and peak memory (CUDA: `torch.cuda.max_memory_allocated`; CPU: the peak
resident set size, polled every 2 ms during the measured steps, above its level before them), reported as ratios to full fine-tuning, and grounding-inference
latency as a ratio to the base model's forward pass of the same videos and queries.

    python benchmarks/synthvtg_benchmark.py run        # accuracy runs, appended to benchmarks/results/runs.jsonl
    python benchmarks/synthvtg_benchmark.py costs      # step time / memory / latency, benchmarks/results/costs.json
    python benchmarks/synthvtg_benchmark.py report     # the markdown table of BENCHMARKS.md from both files

`run` skips (method, lr, seed) runs already in the results file, so an interrupted benchmark resumes where it stopped.
`--methods`, `--steps`, `--train-videos` etc. change the scale, and `--domain cluttered` renders the grounding videos
in SynthVTG's shifted look (the backbone stays the one pre-trained on the plain look); the results file records the
settings of each run and `report` refuses to mix runs made with different settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE_ROOT = HERE / ".cache"  # the frozen-prefix caches of the cached methods (git-ignored; rebuilt on demand)

# The one head every trained method gets (the demo's head).
HEAD = dict(grounding_head=True, head_hidden_size=64, head_num_layers=2, head_num_attention_heads=4, head_dropout=0.1,
            head_temporal_kernel_size=3, head_hadamard_fusion=True, boundary_smoothing=1.0)


@dataclass(frozen=True)
class Settings:
    """What every run of one benchmark shares; stored with each run."""

    train_videos: int = 1500
    val_videos: int = 150
    test_videos: int = 300
    frames: int = 16
    steps: int = 400
    batch_size: int = 32
    data_seed: int = 0
    domain: str = "plain"  # how the grounding videos look: SynthVTG's "plain" (the backbone's) or "cluttered"
    # > 0: every method gets this much training time instead of `steps`, turned into a step count per method from its
    # paced seconds per step (and, for a cached method, the time to build its train cache); see `pace`.
    budget_seconds: float = 0.0
    # Train a saliency head on SynthVTG's highlight labels (issue 14) and report the highlight metrics; False drops
    # the labels from the rows, as before they existed.
    saliency: bool = False


def _same_settings(recorded: dict[str, Any], settings: Settings) -> bool:
    """Whether a stored run was made with `settings`; a field added since it was stored counts as its default."""
    return {**asdict(Settings()), **recorded} == asdict(settings)


@dataclass(frozen=True)
class Method:
    """A benchmarked method: how to make its trainable model from the base model, and its learning-rate grid."""

    name: str
    description: str
    learning_rates: tuple[float, ...]
    # (base CLIPModel, **VTGPromptConfig overrides) -> PeftModel with the grounding forward; None = no training
    build: Optional[Callable[..., Any]]
    motion_window: int = 0  # zero-shot only: see peft_vtg.baselines.frame_query_similarity
    head_learning_rate: Optional[float] = None  # None: the head trains at the grid's rate (head-only)
    # Train and evaluate from a frozen-prefix cache of the video states entering this layer (`peft_vtg.cache`)
    # instead of from frames; None = from frames.
    cache_layer: Optional[int] = None
    # With cache_layer = L: how many final layer outputs the cache stores (a head over several layers reads them).
    cache_feature_layers: int = 1


def _vtg(**prompts: Any) -> Callable[..., Any]:
    def build(base: Any, **overrides: Any) -> Any:
        from peft import get_peft_model

        from peft_vtg import VTGPromptConfig

        return get_peft_model(base, VTGPromptConfig(**prompts, **HEAD, **overrides))

    return build


def _lora(base: Any, **overrides: Any) -> Any:
    """PEFT's LoRA (rank 4) on the query and value projections of both towers, plus the head."""
    from peft import LoraConfig, get_peft_model, inject_adapter_in_model

    from peft_vtg import VTGPromptConfig

    base = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), base)
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=0, **HEAD, **overrides))
    for name, param in model.named_parameters():
        if "lora_" in name:  # get_peft_model froze everything but the VTG adapter
            param.requires_grad = True
    return model


def _full(base: Any, **overrides: Any) -> Any:
    model = _vtg(num_video_tokens=0, num_text_tokens=0)(base, **overrides)
    for param in model.parameters():
        param.requires_grad = True
    return model


DEPTH = 3  # layers per tower of the shipped backbone: "deep" prompts every layer
# The head's own rate next to prompts, LoRA or a fine-tuned backbone: head-only's choice on val (3e-3 over 1e-3).
# One shared rate cannot serve both a fresh head and a pre-trained backbone: at 3e-4 or 1e-3 for everything, full
# fine-tuning only learned the span prior (val R1@0.5 5.0).
HEAD_LR = 3e-3
METHODS = {m.name: m for m in (
    Method("zero-shot", "frame-query cosine similarity of the pre-trained backbone, no training", (), None),
    Method("zero-shot-motion", "as zero-shot, on each frame's change embedding (2 frames each side)", (), None,
           motion_window=2),
    Method("head-only", "the grounding head on the frozen backbone", (1e-3, 3e-3),
           _vtg(num_video_tokens=0, num_text_tokens=0)),
    # PEFT's layout and init: random virtual tokens before the sentence, moving every word's position on by their
    # number.
    Method("text-prompt", "PEFT-style prompt tuning: 8 text tokens at position 0 of the input layer only, words moved "
           "8 positions on (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=0, num_text_tokens=8, text_insert_position=0, keep_text_positions=False,
                                   prompt_tuning_init="RANDOM"),
           head_learning_rate=HEAD_LR),
    Method("vtg-video", "VTG: 8 video prompt tokens in every vision layer, no text prompts (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=8, num_text_tokens=0, video_prompt_depth=DEPTH),
           head_learning_rate=HEAD_LR),
    Method("vtg-shallow", "VTG: 8 video + 8 text tokens at the input layer of each tower (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=8, num_text_tokens=8), head_learning_rate=HEAD_LR),
    Method("vtg-deep", "VTG: 8 video + 8 text tokens in every layer of each tower (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=8, num_text_tokens=8, video_prompt_depth=DEPTH,
                              text_prompt_depth=DEPTH), head_learning_rate=HEAD_LR),
    Method("vtg-coupled", "VTG deep, video prompts projected from the text prompts (MaPLe coupling) (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=8, num_text_tokens=8, video_prompt_depth=DEPTH,
                              text_prompt_depth=DEPTH, couple_video_to_text=True), head_learning_rate=HEAD_LR),
    # The cached variants (issue 13): the frozen video layers below the prompts run once, into a cache; every step
    # runs only the layers from the cached one on. Same adapters as their uncached twins.
    Method("head-only-cached", "head-only, trained on cached final video states (the classic feature path)",
           (1e-3, 3e-3), _vtg(num_video_tokens=0, num_text_tokens=0), cache_layer=DEPTH),
    Method("vtg-top", "VTG: 16 video + 8 text tokens entering the top layer of each tower only (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=16, num_text_tokens=8, prompt_start_layer=DEPTH - 1),
           head_learning_rate=HEAD_LR),
    Method("vtg-top-cached", "vtg-top, trained on cached video states entering the top layer",
           (3e-3, 3e-2), _vtg(num_video_tokens=16, num_text_tokens=8, prompt_start_layer=DEPTH - 1),
           head_learning_rate=HEAD_LR, cache_layer=DEPTH - 1),
    Method("vtg-top2-cached", "VTG: 16 video + 8 text tokens in the top two layers of each tower, trained on cached "
           "video states entering the first of them (+ head)",
           (3e-3, 3e-2), _vtg(num_video_tokens=16, num_text_tokens=8, prompt_start_layer=DEPTH - 2,
                              video_prompt_depth=2, text_prompt_depth=2),
           head_learning_rate=HEAD_LR, cache_layer=DEPTH - 2),
    # Heads over several layers (R2-Tuning's point: frozen CLIP's last layers hold grounding cues the final one lost),
    # on a cache of the last layers' final outputs: a step costs about what the cached head's does.
    Method("head-layers-cached", "the head over the features of all 3 video layers, weighted per query, on a cache "
           "of the 3 layers' final outputs", (1e-3, 3e-3),
           _vtg(num_video_tokens=0, num_text_tokens=0, head_video_layers=DEPTH), cache_layer=DEPTH,
           cache_feature_layers=DEPTH),
    Method("head-layers2-cached", "as head-layers-cached, over the last 2 video layers", (1e-3, 3e-3),
           _vtg(num_video_tokens=0, num_text_tokens=0, head_video_layers=2), cache_layer=DEPTH,
           cache_feature_layers=2),
    Method("lora", "PEFT LoRA r=4 on q/v projections of both towers (+ head)", (3e-4, 3e-3), _lora,
           head_learning_rate=HEAD_LR),
    Method("full-ft", "every backbone parameter trained (+ head)", (3e-5, 3e-4), _full, head_learning_rate=HEAD_LR),
)}


# ------------------------------------------------------------------------------------------------------- data
def _data(settings: Settings):
    from peft_vtg.data import GroundingCollator
    from peft_vtg.synth import FrameSource, SynthVTG
    from peft_vtg.synth.backbone import load_backbone

    tokenizer = load_backbone()[1]
    data = SynthVTG(seed=settings.data_seed, domain=settings.domain, num_videos={
        "train": settings.train_videos, "val": settings.val_videos, "test": settings.test_videos})
    splits, videos = data.splits()
    if not settings.saliency:
        splits = {name: rows.remove_columns(["relevant_clip_ids", "saliency_scores", "clip_length"])
                  for name, rows in splits.items()}
    return splits, GroundingCollator(tokenizer, FrameSource(videos, num_frames=settings.frames)), tokenizer


def _cache_directory(settings: Settings, method: Method, root: Path) -> Path:
    """Where `run` keeps the cache of one data set for `method`'s cache layer (and final layers), reused by every
    run, seed and method that needs the same one."""
    layers = f"-m{method.cache_feature_layers}" if method.cache_feature_layers > 1 else ""
    return root / (f"{settings.domain}-seed{settings.data_seed}-{settings.train_videos}-{settings.val_videos}-"
                   f"{settings.test_videos}-f{settings.frames}-k{method.cache_layer}{layers}")


def _build_cache(rows: list[dict[str, Any]], collator: Any, method: Method, directory: Path) -> float:
    """Cache the video states `method` trains from (entering its cache layer; at L the final outputs of its
    `cache_feature_layers` last layers) for the videos of `rows`, in fp16 (the default); returns the seconds it took
    (nothing to do for a complete cache)."""
    from peft_vtg.cache import build_cache
    from peft_vtg.synth.backbone import load_backbone

    started = time.perf_counter()
    build_cache(load_backbone()[0], [row["vid"] for row in rows], collator.video_source, method.cache_layer,
                str(directory), feature_layers=method.cache_feature_layers,
                durations={row["vid"]: row["duration"] for row in rows}, disable_tqdm=True)
    return time.perf_counter() - started


def _collator_for(method: Method, settings: Settings, data: Any, cache_root: Path) -> Any:
    """The collator `method` trains and evaluates with: frames, or its cache (built over every split on first use)."""
    from peft_vtg.cache import CachedVideoStates
    from peft_vtg.data import GroundingCollator

    splits, collator, tokenizer = data
    if method.cache_layer is None:
        return collator
    directory = _cache_directory(settings, method, cache_root)
    rows = [row for split in splits.values() for row in split]
    seconds = _build_cache(rows, collator, method, directory)
    if seconds > 5:
        print(f"built the layer-{method.cache_layer} cache in {directory} ({seconds:.0f} s)", flush=True)
    return GroundingCollator(tokenizer, CachedVideoStates(str(directory), layer=method.cache_layer))


def _adapter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the trainable parameters saved as safetensors (for full fine-tuning: the whole model + head)."""
    from safetensors.torch import save

    return len(save({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}))


def _zero_shot(rows, collator, motion_window: int) -> dict[str, float]:
    from peft_vtg.baselines import frame_query_similarity, zero_shot_moments
    from peft_vtg.metrics import evaluate_moments
    from peft_vtg.synth.backbone import load_backbone

    model = load_backbone()[0]
    predictions = {}
    for batch in DataLoader(rows, batch_size=50, collate_fn=collator):
        similarity = frame_query_similarity(model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                            motion_window=motion_window)
        predictions.update(zip(batch["qid"], zero_shot_moments(similarity, batch["duration"].tolist())))
    return evaluate_moments(predictions, {row["qid"]: row["windows"] for row in rows})


def train_and_evaluate(method: Method, lr: float, seed: int, settings: Settings, data=None, *,
                       steps: Optional[int] = None, cache_root: Path = CACHE_ROOT) -> dict[str, Any]:
    """One run: train `method` at `lr` with `seed` for `steps` optimizer steps (default `settings.steps`), evaluate
    the final weights on val and test."""
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.training import GroundingModule, VTGTrainingArguments, evaluate_grounding, train

    data = data or _data(settings)
    splits, collator = data[0], _collator_for(method, settings, data, cache_root)
    steps = settings.steps if steps is None else steps
    record: dict[str, Any] = {"method": method.name, "lr": lr, "head_lr": method.head_learning_rate, "seed": seed,
                              "settings": asdict(settings), "steps": steps}
    if method.build is None:
        record.update(val=_zero_shot(splits["val"], collator, method.motion_window),
                      test=_zero_shot(splits["test"], collator, method.motion_window), trainable=0, adapter_bytes=0)
        return record
    torch.manual_seed(seed)
    base = load_backbone()[0]
    base_parameters = sum(p.numel() for p in base.parameters())
    model = method.build(base, predict_saliency=settings.saliency)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    started = time.time()
    with tempfile.TemporaryDirectory() as output_dir:
        args = VTGTrainingArguments(output_dir=output_dir, max_steps=steps,
                                    per_device_train_batch_size=settings.batch_size, learning_rate=lr,
                                    head_learning_rate=method.head_learning_rate, seed=seed,
                                    logging_steps=max(1, steps // 5), disable_tqdm=True)
        result = train(model, splits["train"], collator, args)
    record["train_seconds"] = time.time() - started
    record["final_loss"] = result.history[-1].get("loss") if result.history else None
    module = GroundingModule(model)
    for split in ("val", "test"):
        loader = DataLoader(splits[split], batch_size=32, collate_fn=collator)
        record[split], _ = evaluate_grounding(module, loader, splits[split], disable_tqdm=True)
    record.update(trainable=trainable, base_parameters=base_parameters, adapter_bytes=_adapter_bytes(model))
    return record


def _load_runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(args: argparse.Namespace) -> None:
    settings = _settings(args)
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["lr"], r["seed"]) for r in _load_runs(path) if _same_settings(r["settings"], settings)}
    data = _data(settings)
    for name in args.methods:
        method = METHODS[name]
        grid = (args.grid if method.build is not None and args.grid else list(method.learning_rates)) or [0.0]
        if name in args.method_lr:
            grid = [args.method_lr[name]]

        steps = _budget_steps(name, settings, Path(args.pace)) if method.build is not None else None

        def launch(lr: float, seed: int) -> None:
            if (name, lr, seed) in done:
                return
            record = train_and_evaluate(method, lr, seed, settings, data, steps=steps, cache_root=Path(args.cache_root))
            with path.open("a") as handle:  # one line per run: an interrupted benchmark keeps what it finished
                handle.write(json.dumps(record) + "\n")
            done.add((name, lr, seed))
            print(f"{name:12s} lr={lr:g} seed={seed}: val R1@0.5 {record['val']['R1@0.5']:.2f} "
                  f"test R1@0.5 {record['test']['R1@0.5']:.2f} mIoU {record['test']['mIoU']:.2f} "
                  f"({record.get('train_seconds', 0):.0f} s)", flush=True)

        for lr in grid:
            launch(lr, 0)
        if method.build is None:
            continue
        best = _best_lr(name, settings, _load_runs(path))
        for seed in range(1, args.seeds):
            launch(best, seed)


def _pace_key(settings: Settings) -> dict[str, Any]:
    """What the paced step times depend on: the settings except the look, the step count and the budget."""
    key = asdict(settings)
    for name in ("domain", "steps", "budget_seconds"):
        key.pop(name)
    return {**key, "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}


def _budget_steps(name: str, settings: Settings, pace_file: Path) -> Optional[int]:
    """The step count that fills `settings.budget_seconds` for method `name` (None without a budget): (budget - the
    train cache's build time) / seconds per step, both from `pace_file`."""
    if settings.budget_seconds <= 0:
        return None
    paced = json.loads(pace_file.read_text()) if pace_file.exists() else {}
    if paced.get("key") != _pace_key(settings):
        raise SystemExit(f"{pace_file} was not measured for these settings and this machine (threads, torch); run "
                         f"`python {Path(__file__).name} pace --methods {name} ...` with the same settings first.")
    entry = paced["methods"].get(name)
    if entry is None:
        raise SystemExit(f"{pace_file} has no pace for {name}; run `pace --methods {name}` first.")
    seconds = settings.budget_seconds - entry.get("cache_build_seconds", 0.0)
    steps = int(seconds // entry["step_seconds"])
    if steps < 1:
        raise SystemExit(f"A budget of {settings.budget_seconds} s leaves {name} no step (it needs "
                         f"{entry['step_seconds']:.3f} s a step after {entry.get('cache_build_seconds', 0):.1f} s of "
                         "cache building).")
    return steps


def measure_pace(name: str, settings: Settings, warmup: int = 5, steps: int = 30) -> dict[str, Any]:
    """Seconds per optimizer step of `method` in the benchmark's own training loop (`peft_vtg.training.train`: data
    loading and collation of frames or cached states, forward, backward, optimizer), at the benchmark's batch size,
    after `warmup` steps; and, for a cached method, the seconds to build its cache of the train split from scratch.

    Run in a fresh process per method (`pace` does), one at a time on an otherwise idle machine.
    """
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.training import VTGTrainingArguments, train

    method = METHODS[name]
    data = _data(settings)
    splits, collator, tokenizer = data
    result: dict[str, Any] = {"method": name, "warmup_steps": warmup, "timed_steps": steps}
    with tempfile.TemporaryDirectory() as scratch:
        if method.cache_layer is not None:
            from peft_vtg.cache import CachedVideoStates
            from peft_vtg.data import GroundingCollator

            directory = Path(scratch) / "cache"
            result["cache_build_seconds"] = _build_cache(splits["train"], collator, method, directory)
            result["cache_bytes"] = sum(f.stat().st_size for f in directory.iterdir())
            collator = GroundingCollator(tokenizer, CachedVideoStates(str(directory), layer=method.cache_layer))
        torch.manual_seed(0)
        model = method.build(load_backbone()[0])
        stamps: dict[int, float] = {}
        args = VTGTrainingArguments(output_dir=str(Path(scratch) / "run"), max_steps=warmup + steps,
                                    per_device_train_batch_size=settings.batch_size, learning_rate=1e-4,
                                    head_learning_rate=method.head_learning_rate, seed=0, disable_tqdm=True)
        train(model, splits["train"], collator, args, callbacks=[lambda step, logs: stamps.__setitem__(step, time.perf_counter())])
    result["step_seconds"] = (stamps[warmup + steps] - stamps[warmup]) / steps
    return result


def pace(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if args.one_method:
        print(json.dumps(measure_pace(args.one_method, settings)))
        return
    out = Path(args.pace)
    key = _pace_key(settings)
    previous = json.loads(out.read_text()) if out.exists() else {}
    methods = previous.get("methods", {}) if previous.get("key") == key else {}
    for name in args.methods:
        if METHODS[name].build is None:
            continue
        command = [sys.executable, __file__, "pace", "--one-method", name, f"--threads={args.threads}",
                   *(f"--{k.replace('_', '-')}={v}" for k, v in asdict(settings).items())]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        methods[name] = json.loads(output.strip().splitlines()[-1])
        print(f"{name:16s} {methods[name]}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"key": key, "methods": methods}, indent=1) + "\n")


def _best_lr(name: str, settings: Settings, runs: list[dict[str, Any]]) -> float:
    """The grid's learning rate with the best val R1@0.5 at seed 0 (ties: better val mIoU)."""
    candidates = [r for r in runs if r["method"] == name and r["seed"] == 0 and _same_settings(r["settings"], settings)]
    if not candidates:
        raise ValueError(f"No seed-0 runs of {name} with these settings; run the learning-rate grid first.")
    best = max(candidates, key=lambda r: (r["val"]["R1@0.5"], r["val"]["mIoU"]))
    return best["lr"]


# ------------------------------------------------------------------------------------------------------- costs
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Polls the resident set size from a thread while a block runs; `peak` is the largest value seen (bytes).

    The process-wide `ru_maxrss` cannot be used: it also remembers peaks from before the measured block (data
    generation, model loading)."""

    def __enter__(self) -> "_PeakRss":
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measure_costs(name: str, settings: Settings, device: str, steps: int = 12) -> dict[str, Any]:
    """Median training-step time, peak training memory and grounding-inference latency of one method.

    Run in a fresh process per method (`costs` does), so the CPU peak-RSS measure starts clean.
    """
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.training import GroundingModule

    splits, collator, _ = _data(replace(settings, train_videos=settings.batch_size, val_videos=1, test_videos=1))
    batch = collator([splits["train"][i] for i in range(settings.batch_size)])
    tensors = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    torch.manual_seed(0)
    base = load_backbone()[0].to(device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn: Callable[[], Any], repeats: int) -> float:
        times = []
        for _ in range(repeats):
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    result: dict[str, Any] = {"method": name, "device": device, "settings": asdict(settings)}
    inputs = {k: tensors[k] for k in ("pixel_values", "input_ids", "attention_mask")}

    def base_forward() -> None:  # what the frozen encoder alone costs: every frame and every query, encoded once
        with torch.no_grad():
            base.vision_model(pixel_values=inputs["pixel_values"].flatten(0, 1))
            base.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    base_forward()
    result["base_inference_seconds"] = timed(base_forward, 20)
    method = METHODS[name]
    if method.build is None:
        return result
    model = method.build(base).to(device)
    module = GroundingModule(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    train_inputs = {k: v for k, v in tensors.items() if k in ("pixel_values", "input_ids", "attention_mask",
                                                               "frame_mask", "start_frames", "end_frames")}

    def train_step() -> None:
        module.train()
        loss = module(**train_inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocator, optimizer state
        train_step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        floor = torch.cuda.memory_allocated()
        result["train_step_seconds"] = timed(train_step, steps)
        result["peak_train_memory_bytes"] = torch.cuda.max_memory_allocated() - floor
    else:
        floor = _rss_bytes()
        with _PeakRss() as rss:
            result["train_step_seconds"] = timed(train_step, steps)
        result["peak_train_memory_bytes"] = max(0, rss.peak - floor)
    module.eval()

    def grounding_forward() -> None:
        with torch.no_grad():
            module(**inputs)

    grounding_forward()
    result["inference_seconds"] = timed(grounding_forward, 20)
    return result


def costs(args: argparse.Namespace) -> None:
    settings = _settings(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.one_method:
        print(json.dumps(measure_costs(args.one_method, settings, device)))
        return
    measured = []
    for name in args.methods:
        command = [sys.executable, __file__, "costs", "--one-method", name, "--device", device,
                   *(f"--{k.replace('_', '-')}={v}" for k, v in asdict(settings).items())]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        measured.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{name:12s} {measured[-1]}", flush=True)
    out = Path(args.costs)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"device": device, "torch": torch.__version__, "machine": platform.machine(),
              "threads": torch.get_num_threads()}
    # Measuring some methods again keeps the others' entries when they come from the same kind of machine; entries
    # of another device or torch build are not comparable and are dropped.
    kept = []
    if out.exists():
        previous = json.loads(out.read_text())
        if all(previous.get(key) == value for key, value in header.items()):
            names = {entry["method"] for entry in measured}
            kept = [entry for entry in previous["methods"] if entry["method"] not in names]
        else:
            print(f"{out} was measured on another device or torch build; replacing it.", flush=True)
    out.write_text(json.dumps({**header, "methods": kept + measured}, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------------- report
def report(args: argparse.Namespace) -> None:
    settings = _settings(args)
    runs = [r for r in _load_runs(Path(args.results)) if _same_settings(r["settings"], settings)]
    cost_file = Path(args.costs)
    cost = {c["method"]: c for c in json.loads(cost_file.read_text())["methods"]} if cost_file.exists() else {}
    full = cost.get("full-ft", {})

    def ratio(name: str, key: str, reference: Optional[float]) -> str:
        value = cost.get(name, {}).get(key)
        return f"{value / reference:.2f}" if value is not None and reference else "-"

    def mean_std(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    columns = ["R1@0.3", "R1@0.5", "R1@0.7", "R5@0.5", "mIoU"]
    if settings.saliency:  # Moment-DETR's mAP and the highlight metrics (issue 14)
        columns += ["MR-full-mAP", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"]
    budgeted = settings.budget_seconds > 0
    lines = ["| method | lr | seeds | " + ("steps | " if budgeted else "") + " | ".join(columns)
             + " | trainable (% of base) | adapter bytes | "
             "step time / full FT | peak memory / full FT | inference latency / base |",
             "|" + "---|" * (len(columns) + 8 + budgeted)]
    for name in args.methods:
        mine = [r for r in runs if r["method"] == name]
        if not mine:
            continue
        lr = _best_lr(name, _settings(args), runs) if METHODS[name].build is not None else None
        chosen = [r for r in mine if r["lr"] == lr] if lr is not None else mine
        metrics = " | ".join(mean_std([r["test"][c] for r in chosen]) for c in columns)
        first = chosen[0]
        share = 100 * first["trainable"] / first["base_parameters"] if first.get("base_parameters") else 0.0
        base_latency = cost.get(name, {}).get("base_inference_seconds")
        rate = "-" if lr is None else f"{lr:g}" + (f" (head {first['head_lr']:g})" if first.get("head_lr") else "")
        lines.append(
            f"| {name} | {rate} | {len(chosen)} | " + (f"{first['steps']:,} | " if budgeted else "") +
            f"{metrics} | {first['trainable']:,} "
            f"({share:.2f}%) | {first['adapter_bytes']:,} | {ratio(name, 'train_step_seconds', full.get('train_step_seconds'))} | "
            f"{ratio(name, 'peak_train_memory_bytes', full.get('peak_train_memory_bytes'))} | "
            f"{ratio(name, 'inference_seconds', base_latency)} |"
        )
    print("\n".join(lines))


def _paced_seconds(run: dict[str, Any], paced: dict[str, Any]) -> Optional[float]:
    """The training time of a run at the paced speed of its method: its steps x seconds per step, plus the train
    cache's build time for a cached method; None when the method has no pace."""
    entry = paced.get(run["method"])
    if entry is None:
        return None
    steps = run.get("steps", run["settings"]["steps"])
    return steps * entry["step_seconds"] + entry.get("cache_build_seconds", 0.0)


def plot(args: argparse.Namespace) -> None:
    """One PNG per look: test R1@0.5 against training seconds and against trainable parameters, every trained
    method, every step count or budget it was run at (mean and std over seeds at the rate chosen on val).

    Seconds are paced (`_paced_seconds`), not the wall-clock each run happened to take, so runs made at different
    times, loads or thread counts sit on one axis; the paces come from one `pace` run on an idle machine.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paced_file = json.loads(Path(args.pace).read_text())
    paced = paced_file["methods"]
    runs = [r for r in _load_runs(Path(args.results)) if r["method"] in args.methods and METHODS[r["method"]].build]
    domains = sorted({r["settings"].get("domain", "plain") for r in runs})
    written = []
    for domain in domains:
        figure, (by_time, by_size) = plt.subplots(1, 2, figsize=(12, 5))
        for index, name in enumerate(args.methods):
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in runs:
                if r["method"] == name and r["settings"].get("domain", "plain") == domain:
                    groups.setdefault(json.dumps({**asdict(Settings()), **r["settings"]}, sort_keys=True), []).append(r)
            points = []
            for key, group in groups.items():
                settings = Settings(**json.loads(key))
                chosen_lr = _best_lr(name, settings, group)
                chosen = [r for r in group if r["lr"] == chosen_lr]
                seconds = [_paced_seconds(r, paced) for r in chosen]
                if None in seconds:
                    continue
                scores = [r["test"]["R1@0.5"] for r in chosen]
                points.append((statistics.mean(seconds), statistics.mean(scores),
                               statistics.stdev(scores) if len(scores) > 1 else 0.0, chosen[0]["trainable"],
                               settings.budget_seconds > 0))
            if not points:
                continue
            points.sort()
            color = f"C{index % 10}"
            style = "--" if METHODS[name].cache_layer is None else "-"
            by_time.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                             fmt="o" + style, color=color, label=name, capsize=3)
            best = max(points, key=lambda p: p[1])
            by_size.errorbar([best[3]], [best[1]], yerr=[best[2]], fmt="o", color=color, capsize=3)
            by_size.annotate(name, (best[3], best[1]), textcoords="offset points", xytext=(5, 3), fontsize=8)
        by_time.set(xscale="log", xlabel="training seconds (paced; 1 CPU thread)", ylabel="test R1@0.5 (%)",
                    title=f"SynthVTG, {domain} look: accuracy against training time")
        by_time.grid(alpha=0.3)
        by_time.legend(fontsize=8)
        by_size.set(xscale="log", xlabel="trainable parameters (adapter + head)", ylabel="test R1@0.5 (%)",
                    title="best run of each method against its size")
        by_size.grid(alpha=0.3)
        figure.tight_layout()
        out = Path(args.plot_dir) / f"synthvtg-{domain}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)
        plt.close(figure)
        written.append(str(out))
    print("\n".join(written))


def _flag_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**{k: getattr(args, k) for k in asdict(Settings())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "costs", "pace", "report", "plot"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help=f"methods to run (default: all of {', '.join(METHODS)})")
    parser.add_argument("--grid", type=float, nargs="+", default=None,
                        help="run: learning rates to try for every trained method instead of each method's own grid")
    parser.add_argument("--method-lr", nargs="+", default=[], metavar="METHOD=LR",
                        help="run: one learning rate for a method instead of a grid (e.g. its choice at another "
                             "budget), e.g. full-ft=3e-4")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method at its chosen learning rate")
    parser.add_argument("--results", default=str(RESULTS / "runs.jsonl"), help="accuracy results (JSON lines)")
    parser.add_argument("--costs", default=str(RESULTS / "costs.json"), help="cost results (JSON)")
    parser.add_argument("--device", default=None, help="costs: cpu or cuda (default: cuda when available)")
    parser.add_argument("--pace", default=str(RESULTS / "pace.json"),
                        help="seconds per step of each method, for --budget-seconds (JSON; written by `pace`)")
    parser.add_argument("--plot-dir", default=str(RESULTS), help="plot: where the PNGs go")
    parser.add_argument("--cache-root", default=str(CACHE_ROOT), help="where the cached methods keep their caches")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); the paces record it and `run` must match")
    parser.add_argument("--one-method", default=None, help=argparse.SUPPRESS)
    for key, value in asdict(Settings()).items():
        kind = _flag_bool if isinstance(value, bool) else type(value)  # bool("False") would be True
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value, help=f"default {value}")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    try:
        args.method_lr = {name: float(lr) for name, lr in (item.split("=", 1) for item in args.method_lr)}
    except ValueError:
        parser.error(f"--method-lr takes METHOD=LR pairs such as full-ft=3e-4, got {args.method_lr}")
    if set(args.method_lr) - set(METHODS):
        parser.error(f"--method-lr names unknown methods {sorted(set(args.method_lr) - set(METHODS))}")
    {"run": run, "costs": costs, "pace": pace, "report": report, "plot": plot}[args.command](args)


if __name__ == "__main__":
    main()
