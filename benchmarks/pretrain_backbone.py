"""Re-create the backbone shipped in `peft_vtg/assets/synthvtg-clip` (about 8 minutes on 2 CPU cores).

    python benchmarks/pretrain_backbone.py [--output-dir peft_vtg/assets/synthvtg-clip] [--steps 1500]
    python benchmarks/pretrain_backbone.py --output-dir synthvtg-clip-patch4 --patch-size 4   # finer patches; ~21 min
    python benchmarks/pretrain_backbone.py --output-dir attribute6-warmup --attribute-weight 6 \
        --attribute-warmup-steps 4000                # both towers name colour, shape and action; ~9 min
    python benchmarks/pretrain_backbone.py --output-dir shape-distilled --init-backbone peft_vtg/assets/synthvtg-clip \
        --vision-attribute-weight 4 --distill-weight 4 --learning-rate 1e-3   # the shipped one, taught shape; ~9 min
    python benchmarks/pretrain_backbone.py --output-dir scene-binding --init-backbone peft_vtg/assets/synthvtg-clip \
        --scene-steps 8000 --steps 1500 --distill-weight 4 --learning-rate 1e-3  # ~15 min

Pre-trains a small CLIP on SynthVTG's trimmed clips (contrastive video-text loss + VIOLET / All-in-One matching
heads; see `peft_vtg.synth.backbone`) and writes config.json, model.safetensors, the tokenizer, and
pretraining.json with the run's numbers.
"""

import argparse
import json
from pathlib import Path

from peft_vtg.synth.backbone import BACKBONE_DIR, pretrain_backbone

# The optional terms' weights: flag -> what the term does (each `pretrain_backbone` argument of the same name).
TERM_WEIGHTS = {
    "attribute-weight": "names each clip's colour, shape and action from both towers",
    "vision-attribute-weight": "names object frames' colour and shape from the vision tower's pooled output alone",
    "event-attribute-weight": "names each clip's event (colour, shape, action) from the change of the vision "
                              "tower's pooled output",
    "distill-weight": "keeps per-frame pooled features near --init-backbone's",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(BACKBONE_DIR), help="where to save the backbone")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    parser.add_argument("--num-clips", type=int, default=6000, help="pre-training clips (default 6000)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--hard-negative-fraction", type=float, default=0.0,
                        help="fraction of each batch given as pairs of clips that differ in one attribute only "
                        "(default 0, the shipped backbone: all random)")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="vision patch in pixels of the 32x32 frames (default 8, the shipped backbone, or "
                        "--init-backbone's; 4: an 8x8 grid at about 2.5x the time)")
    parser.add_argument("--attribute-warmup-steps", type=int, default=0,
                        help="steps on the attribute term alone before the contrastive recipe (default 0)")
    parser.add_argument("--scene-steps", type=int, default=0,
                        help="steps that first train the vision tower alone to name every (colour, shape) on frames "
                        "of two to four static actors, held near the starting backbone by --distill-weight "
                        "(default 0: no scene stage)")
    parser.add_argument("--num-scenes", type=int, default=60_000,
                        help="scene frames for --scene-steps, a tenth (at most 1,000) held out (default 60000)")
    parser.add_argument("--init-backbone", default=None,
                        help="start from this backbone directory instead of fresh weights (default: fresh)")
    for flag, what in TERM_WEIGHTS.items():
        parser.add_argument(f"--{flag}", type=float, default=0.0,
                            help=f"weight of the term that {what} (default 0, the shipped backbone: left out)")
    args = parser.parse_args()
    weights = [flag.replace("-", "_") for flag in TERM_WEIGHTS]
    logs = pretrain_backbone(args.output_dir, num_clips=args.num_clips, steps=args.steps, seed=args.seed,
                             hard_negative_fraction=args.hard_negative_fraction, patch_size=args.patch_size,
                             attribute_warmup_steps=args.attribute_warmup_steps, learning_rate=args.learning_rate,
                             init_backbone=args.init_backbone, scene_steps=args.scene_steps,
                             num_scenes=args.num_scenes, **{name: getattr(args, name) for name in weights})
    logs.update(steps=args.steps, num_clips=args.num_clips, seed=args.seed)
    if args.hard_negative_fraction:
        logs["hard_negative_fraction"] = args.hard_negative_fraction
    if args.attribute_warmup_steps:
        logs["attribute_warmup_steps"] = args.attribute_warmup_steps
    if args.scene_steps:
        logs["num_scenes"] = args.num_scenes
    if args.patch_size not in (None, 8):
        logs["patch_size"] = args.patch_size
    for name in ["learning_rate", "init_backbone", "scene_steps", *weights]:
        if getattr(args, name) != parser.get_default(name):
            logs[name] = getattr(args, name)
    (Path(args.output_dir) / "pretraining.json").write_text(json.dumps(logs, indent=2) + "\n")
    print(json.dumps(logs, indent=2))


if __name__ == "__main__":
    main()
