"""Prompt ensembles against their members and against test-time augmentation (issue 15).

    python benchmarks/ensemble.py                 # trains 15 adapters (resumable) and evaluates; about 35 min
    python benchmarks/ensemble.py --repeats 1     # one repeat
    python benchmarks/ensemble.py --domain plain --learning-rate 3e-2 --results benchmarks/results/ensemble-plain.json

SynthVTG in the `cluttered` look (the backbone was pre-trained on the plain one), the benchmark's `vtg-video` adapter
(8 video prompt tokens in every vision layer + head), batch 32, `--steps` (400) at `--learning-rate` (3e-3, vtg-video's
choice on val in the cluttered table; the head at 3e-3). Per repeat r (0, 1, 2):

- `seeds`: three adapters trained with seeds 10r, 10r+1, 10r+2 (seed = initial prompts and heads, and data order);
- `inits`: three adapters trained on the same data order (seed 10r) from different initial weights (torch seeds
  10r, 10r+1, 10r+2 before the adapter is made): only the starting point differs;

and on the test split (600 queries), each scored alone and fused (`EnsembleGroundingModule`, one batched forward; both
fusions: the mean of the members' start/end probabilities, and their geometric mean), and the first member alone with
test-time augmentation: 3 views of each video whose frames are sampled a quarter of a frame interval early, on time and
late ("frame jitter"), fused the same two ways. Member 0 of both groups is the same adapter. Results go to `benchmarks/results/ensemble.json`; adapters
to `--workdir`, reused by a later run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ensemble.json"
sys.path.insert(0, str(HERE))

BATCH, HEAD_LEARNING_RATE = 32, 3e-3
JITTER = (-0.25, 0.0, 0.25)  # frame-interval fractions of the test-time views


class JitteredFrames:
    """A `FrameSource` whose frames are sampled `shift` of a frame interval away from the bin centres."""

    def __init__(self, source: Any, shift: float) -> None:
        self.source, self.shift = source, shift
        self.videos, self.num_frames, self.fps, self.preprocess = source.videos, source.num_frames, None, source.preprocess

    def __call__(self, vid: str) -> torch.Tensor:
        from peft_vtg.synth.dataset import pixel_values

        frames = self.videos[vid].frames
        picks = ((np.arange(self.num_frames) + 0.5 + self.shift) * len(frames) / self.num_frames).astype(int)
        return pixel_values(frames[np.clip(picks, 0, len(frames) - 1)])


class AugmentedViews:
    """Collates each row once per view, rows view-minor, as `EnsembleGroundingModule` repeats them per member; `qid`
    and `duration` stay one per row."""

    def __init__(self, collators: list[Any]) -> None:
        self.collators = collators

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        views = [collate(rows) for collate in self.collators]
        batch = dict(views[0])
        for key in ("input_ids", "attention_mask", "pixel_values", "frame_mask"):
            stacked = torch.stack([view[key] for view in views], dim=1)  # (rows, views, ...)
            batch[key] = stacked.flatten(0, 1)
        for key in ("start_frames", "end_frames", "saliency_targets", "saliency_mask"):
            batch.pop(key, None)
        return batch


class FusedViews(torch.nn.Module):
    """One adapter on every view of a row, the views' outputs fused like an ensemble's members."""

    def __init__(self, model: Any, views: int, fusion: str) -> None:
        super().__init__()
        self.model, self.views, self.fusion = model, views, fusion

    def forward(self, **batch: Any) -> Any:
        from peft_vtg.heads import fuse_grounding_outputs

        inputs = {k: v for k, v in batch.items() if k not in ("qid", "duration", "video_ids", "windows")}
        return fuse_grounding_outputs(self.model.forward_grounding(**inputs), self.views, self.fusion)


def train_member(directory: Path, seed: int, init_seed: int, splits: Any, collator: Any, steps: int,
                 learning_rate: float) -> None:
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.training import VTGTrainingArguments, train
    from synthvtg_benchmark import METHODS

    if (directory / "adapter_model.safetensors").exists():
        return
    torch.manual_seed(init_seed)
    model = METHODS["vtg-video"].build(load_backbone()[0], predict_saliency=False)
    args = VTGTrainingArguments(output_dir=str(directory), max_steps=steps, per_device_train_batch_size=BATCH,
                                learning_rate=learning_rate, head_learning_rate=HEAD_LEARNING_RATE, seed=seed,
                                logging_steps=max(1, steps // 4), disable_tqdm=True)
    started = time.time()
    train(model, splits["train"], collator, args)
    model.save_pretrained(directory)
    print(f"trained {directory.name} in {time.time() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "peft_vtg" / "ensemble")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="the prompts' rate (the head's: 3e-3)")
    parser.add_argument("--domain", default="cluttered", choices=["cluttered", "plain"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import PeftModel
    from torch.utils.data import DataLoader

    from peft_vtg.heads import ENSEMBLE_FUSIONS
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.training import EnsembleGroundingModule, GroundingModule, evaluate_grounding
    from synthvtg_benchmark import Settings, _data

    settings = Settings(domain=args.domain, steps=args.steps, saliency=False)
    workdir = args.workdir / f"{args.domain}-steps{args.steps}-lr{args.learning_rate:g}"
    splits, collator, _ = _data(settings)
    members = {}  # name -> (seed, init seed)
    for repeat in range(args.repeats):
        for k in range(3):
            members[f"r{repeat}-seed{k}"] = (10 * repeat + k, 10 * repeat + k)
            if k:
                members[f"r{repeat}-init{k}"] = (10 * repeat, 10 * repeat + k)
    test = splits["test"]
    loader = DataLoader(test, batch_size=32, collate_fn=collator)
    results: dict[str, Any] = {"settings": {"domain": args.domain, "steps": args.steps, "method": "vtg-video",
                                            "learning_rate": args.learning_rate,
                                            "head_learning_rate": HEAD_LEARNING_RATE,
                                            "jitter": JITTER, "torch": torch.__version__,
                                            "threads": torch.get_num_threads()},
                               "repeats": []}
    for repeat in range(args.repeats):
        names = list(dict.fromkeys(n for n in members if n.startswith(f"r{repeat}-")))
        for name in names:
            train_member(workdir / name, *members[name], splits, collator, args.steps, args.learning_rate)
        model = PeftModel.from_pretrained(load_backbone()[0], str(workdir / names[0]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(workdir / name), adapter_name=name)
        model.eval()
        row: dict[str, Any] = {"repeat": repeat}
        for name in names:
            model.set_adapter(name)
            row[name], _ = evaluate_grounding(GroundingModule(model), loader, test, disable_tqdm=True)
        seeds = [f"r{repeat}-seed{k}" for k in range(3)]
        inits = [seeds[0]] + [f"r{repeat}-init{k}" for k in (1, 2)]
        views = AugmentedViews([type(collator)(collator.tokenizer, JitteredFrames(collator.video_source, shift))
                                for shift in JITTER])
        for fusion in ENSEMBLE_FUSIONS:
            for label, group in (("ensemble of seeds", seeds), ("ensemble of inits", inits)):
                row[f"{label} ({fusion})"], _ = evaluate_grounding(EnsembleGroundingModule(model, group, fusion),
                                                                   loader, test, disable_tqdm=True)
            model.set_adapter(seeds[0])
            row[f"TTA of seed0 ({fusion})"], _ = evaluate_grounding(
                FusedViews(model, len(JITTER), fusion), DataLoader(test, batch_size=32, collate_fn=views), test,
                disable_tqdm=True)
        results["repeats"].append(row)
        print(json.dumps({k: (round(v["R1@0.5"], 2) if isinstance(v, dict) else v) for k, v in row.items()}),
              flush=True)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")  # after every repeat
    report(results)


def report(results: dict[str, Any]) -> None:
    """Mean +- std over repeats: members alone (3 per repeat per group), each ensemble and TTA under each fusion."""
    def stats(values: list[float]) -> str:
        return f"{np.mean(values):.2f} ± {np.std(values):.2f}"

    rows = results["repeats"]
    groups = {
        "one adapter (the 3 seed members)": lambda row: [row[k] for k in row if "-seed" in k],
        "one adapter (the 3 init members)": lambda row: [row[k] for k in row if k.endswith("-seed0") or "-init" in k],
        "the best member of each seed ensemble": lambda row: [max((row[k] for k in row if "-seed" in k),
                                                                  key=lambda m: m["R1@0.5"])],
        "seed member 0 alone": lambda row: [row[k] for k in row if k.endswith("-seed0")],
    }
    for label in [k for k in rows[0] if k.startswith(("ensemble", "TTA"))]:
        groups[label] = lambda row, label=label: [row[label]]
    print(f"{results['settings']['domain']} look, {results['settings']['steps']} steps, prompts' lr "
          f"{results['settings']['learning_rate']:g}, {len(rows)} repeats, test split\n")
    print("| | R1@0.3 | R1@0.5 | R1@0.7 | R5@0.5 | mIoU |\n|---|---|---|---|---|---|")
    for label, pick in groups.items():
        picked = [m for row in rows for m in pick(row)]
        print(f"| {label} | " + " | ".join(stats([m[key] for m in picked])
                                           for key in ("R1@0.3", "R1@0.5", "R1@0.7", "R5@0.5", "mIoU")) + " |")


if __name__ == "__main__":
    main()
