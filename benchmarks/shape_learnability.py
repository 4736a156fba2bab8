"""Can the backbone's vision tower see an actor's shape at all, and does a frozen backbone hold it? (issue 15)

    python benchmarks/shape_learnability.py                                # about 2.5 minutes on 2 cores
    python benchmarks/shape_learnability.py --backbone my-backbone --patch-sizes 4 --results R.json

`attribute_probe.py` finds shape at chance for the shipped backbone and every adapter on it. This script tells the
two possible causes apart, on frames of one SynthVTG actor (random colour, shape, position and size, plain look):
- **learnable**: the backbone's vision tower (same config, fresh weights; patch sizes `--patch-sizes`) trained with
  the shape labels themselves, cross-entropy of a linear head on its pooled output: its test accuracy over steps.
  If it learns shape, the architecture can, and what is missing is a pre-training objective that asks for it.
- **held by a frozen backbone**: a logistic-regression probe on the frozen pooled output of the shipped backbone
  (and of `--backbone`), against one on a randomly initialised tower of the same config.
Three shapes: 33.3 % is chance. Results go to `benchmarks/results/shape_learnability.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.nn import functional as F

RESULTS = Path(__file__).resolve().parent / "results" / "shape_learnability.json"
SIZES = (2.5, 6.0)  # actor half-sizes in pixels: SynthVTG's 3-4.5 and what grow / shrink make of them


def shape_frames(count: int, seed: int) -> dict[str, Any]:
    """`count` frames of one SynthVTG actor in the plain look (`render_object`): "frames" (count, 32, 32, 3) uint8,
    "labels" (count,) index into `SHAPES`, and each actor's "sizes" (half-size, pixels) and "colours"."""
    from peft_vtg.synth.generator import render_object
    from peft_vtg.synth.text import SHAPES

    rng, noise = random.Random(seed), np.random.default_rng(seed)
    frames, labels, sizes, colours = [], [], [], []
    for _ in range(count):
        frame, colour, shape, size = render_object(rng, noise, "plain", SIZES)
        frames.append(frame)
        labels.append(SHAPES.index(shape))
        sizes.append(size)
        colours.append(colour)
    return {"frames": np.stack(frames), "labels": torch.tensor(labels), "sizes": sizes, "colours": colours}


def linear_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                          test_labels: torch.Tensor, weight_decay: float = 1e-3) -> float:
    """Test accuracy (%) of an L2-regularised logistic regression (L-BFGS) on standardised features (n, dim)."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    train, test = (train - mean) / std, (test - mean) / std
    classes = int(train_labels.max()) + 1
    weight = torch.zeros(train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, train_labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100.0 * ((test @ weight + bias).argmax(1) == test_labels).float().mean().item()


def pooled_features(vision_model: Any, pixels: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(frames, 3, H, W) -> the vision tower's pooled output (frames, hidden), frozen."""
    with torch.no_grad():
        return torch.cat([vision_model(pixel_values=pixels[i:i + batch_size]).pooler_output
                          for i in range(0, len(pixels), batch_size)])


def supervised_curve(patch_size: int, pixels: torch.Tensor, labels: torch.Tensor, test_pixels: torch.Tensor,
                     test_labels: torch.Tensor, steps: int, every: int, batch_size: int = 128,
                     learning_rate: float = 2e-3, seed: int = 0) -> list[dict[str, float]]:
    """Train a fresh vision tower of the backbone's config (with `patch_size`) and a linear head on the shape labels
    of `pixels` (frames, 3, H, W); the accuracy (%) on `test_pixels` every `every` steps."""
    from transformers import CLIPVisionModel

    from peft_vtg.synth.backbone import backbone_config
    from peft_vtg.synth.text import build_tokenizer

    torch.manual_seed(seed)
    tower = CLIPVisionModel(backbone_config(build_tokenizer(), patch_size).vision_config)
    head = torch.nn.Linear(tower.config.hidden_size, 3)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    curve, started = [], time.time()
    for step in range(1, steps + 1):
        tower.train()
        index = torch.randint(len(pixels), (batch_size,), generator=generator)
        loss = F.cross_entropy(head(tower(pixel_values=pixels[index]).pooler_output), labels[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % every == 0 or step == steps:
            tower.eval()
            with torch.no_grad():
                logits = head(pooled_features(tower, test_pixels))
            accuracy = 100.0 * (logits.argmax(1) == test_labels).float().mean().item()
            curve.append({"step": step, "test_accuracy": accuracy, "seconds": time.time() - started})
            print(f"patch {patch_size}: step {step}, shape accuracy {accuracy:.1f} %", flush=True)
    return curve


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch-sizes", type=int, nargs="*", default=[8, 4],
                        help="patch sizes to train with shape labels (default: 8, the shipped one, and 4)")
    parser.add_argument("--steps", type=int, default=1000, help="supervised steps per patch size (default 1000)")
    parser.add_argument("--backbone", nargs="*", default=[], help="more frozen backbones to probe (the shipped one "
                        "always is)")
    parser.add_argument("--train-frames", type=int, default=6000)
    parser.add_argument("--test-frames", type=int, default=1000)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)

    from transformers import CLIPVisionModel

    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.synth.dataset import pixel_values

    train, test = shape_frames(args.train_frames, seed=0), shape_frames(args.test_frames, seed=1)
    pixels, test_pixels = pixel_values(train["frames"]), pixel_values(test["frames"])
    frozen: dict[str, float] = {}
    for name in [None, *args.backbone]:
        model, _ = load_backbone(name)
        label = name or "shipped backbone"
        frozen[label] = linear_probe_accuracy(pooled_features(model.vision_model, pixels), train["labels"],
                                              pooled_features(model.vision_model, test_pixels), test["labels"])
        reference = f"untrained tower, patch {model.config.vision_config.patch_size}"
        if reference not in frozen:  # one per patch size: the same seed gives the same tower
            torch.manual_seed(0)
            untrained = CLIPVisionModel(model.config.vision_config).eval()
            frozen[reference] = linear_probe_accuracy(pooled_features(untrained, pixels), train["labels"],
                                                      pooled_features(untrained, test_pixels), test["labels"])
        print(f"frozen {label}: linear probe {frozen[label]:.1f} %", flush=True)
    learnable = {str(patch): supervised_curve(patch, pixels, train["labels"], test_pixels, test["labels"], args.steps,
                                              max(1, args.steps // 5))
                 for patch in args.patch_sizes}
    result = {"chance_percent": 100.0 / 3, "train_frames": args.train_frames, "test_frames": args.test_frames,
              "frozen_linear_probe_percent": frozen, "supervised_by_patch_size": learnable}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
