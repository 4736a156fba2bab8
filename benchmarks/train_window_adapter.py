"""Train the demo's adapter recipe on long-video windows (issue 15), for `benchmarks/long_video.py`.

    python benchmarks/train_window_adapter.py --output-dir demo-windows --max-steps 1200 --window-fraction 0.7
    python benchmarks/train_window_adapter.py --output-dir demo-1200 --max-steps 1200 --window-fraction 0   # control
    python benchmarks/long_video.py --adapter demo-windows --skip-memory --results benchmarks/results/long_video_windows.json

The demo's data (SynthVTG plain, seed 0, 1,500 training videos), config and learning rates; only the collator differs:
`LongVideoWindowCollator` gives `--window-fraction` of the rows a 74.8-s window (the median duration, 16 frames) of
the training videos put one after another, `--absent-fraction` of those windows without the row's moment (trained
as "not here"). Validation and the printed test numbers use whole videos, as the demo does.

`--hard-partners` (with the presence contrast) is an oracle experiment on SynthVTG's own labels, not a library
feature: half of each batch is replaced by partners of the other half, a row whose event shares two of the anchor's
three attributes (most often the colour and the action, another shape, the confusion that the
hour's wrong top-1 answers show most) from a video without the anchor's event, each clip holding its moment, placed
right after its anchor so that the contrast (which takes the next rows' clips as negatives) sees it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import time

import torch


def hard_partner_collator(base: type, rows, videos, seed: int) -> type:
    """A subclass of the window collator `base` whose batches are anchors, each followed by its hard partner: which
    two attributes it shares with its anchor is drawn by `HARD_NEGATIVE_KINDS`' weights (the backbone pre-training's
    pairs: colour and action most often, the hour's most frequent wrong answer)."""
    from peft_vtg.synth.backbone import HARD_NEGATIVE_KINDS

    rows = [dict(row) for row in rows]
    triples, held = [], []
    for row in rows:
        video = videos[row["vid"]]
        event = next(e for e in video.events if all(abs(a - b) < 1e-6 for a, b in zip(video.window(e),
                                                                                         row["windows"][0])))
        triples.append(video.triple(event))
        held.append({video.triple(e) for e in video.events})
    index: dict = {}
    for i, triple in enumerate(triples):
        for kind, _ in HARD_NEGATIVE_KINDS:
            index.setdefault((kind, tuple(triple[k] for k in kind)), []).append(i)
    position = {row["qid"]: i for i, row in enumerate(rows)}

    class HardPartnerCollator(base):
        def _partner(self, anchor: dict) -> dict:
            i = position[anchor["qid"]]
            key = f"{seed}:{self.epoch}:{anchor['qid']}:partner".encode()
            draw = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
            kinds = sorted(HARD_NEGATIVE_KINDS, key=lambda kind: -draw.random() ** (1 / kind[1]))  # weighted order
            for kind, _ in kinds:
                candidates = [j for j in index[(kind, tuple(triples[i][k] for k in kind))]
                              if triples[j] != triples[i] and triples[i] not in held[j]]
                if candidates:
                    return rows[draw.choice(candidates)]
            return rows[draw.randrange(len(rows))]

        def _window(self, row):
            window = super()._window(row)
            if row["qid"] in self._partners and window is not None and not window[2]:
                return None  # a partner's clip holds its moment: its whole video
            return window

        def __call__(self, batch):
            anchors = list(batch)[: max(1, len(batch) // 2)]
            partners = [self._partner(anchor) for anchor in anchors]
            self._partners = {p["qid"] for p in partners} - {a["qid"] for a in anchors}
            try:
                return super().__call__([row for pair in zip(anchors, partners) for row in pair])
            finally:
                self._partners = set()

    HardPartnerCollator._partners = set()
    return HardPartnerCollator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=1200)
    parser.add_argument("--window-fraction", type=float, default=0.7)
    parser.add_argument("--absent-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vtm-heads", nargs="*", default=[], help="matching heads (e.g. violet): a window without "
                        "the moment is their mismatched pair, and their match probability scales windows in `ground`")
    parser.add_argument("--inside-loss-weight", type=float, default=None, help="default: the config's (1.0)")
    parser.add_argument("--presence-contrast-weight", type=float, default=0.0,
                        help="presence_contrast_loss_weight (default 0: off)")
    parser.add_argument("--presence-contrast-negatives", type=int, default=None,
                        help="presence_contrast_negatives (default: the config's, 7)")
    parser.add_argument("--backbone", default=None, help="the frozen backbone to adapt (default: the shipped one; "
                        "e.g. one made by pretrain_backbone.py --output-dir)")
    parser.add_argument("--hard-partners", action="store_true", help="oracle hard negatives for the presence "
                        "contrast from SynthVTG's event labels (see the module's docstring)")
    args = parser.parse_args()

    from peft import PeftModel, get_peft_model

    from peft_vtg.data import GroundingCollator, LongVideoWindowCollator
    from peft_vtg.demo import DEMO_FRAMES, demo_config
    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.synth.dataset import FrameSource, SynthVTG
    from peft_vtg.training import GroundingModule, VTGTrainingArguments, evaluate_grounding, train

    torch.manual_seed(args.seed)
    base, tokenizer = load_backbone(args.backbone)
    splits, videos = SynthVTG(seed=args.seed, num_videos={"train": 1500, "val": 150, "test": 300}).splits()
    splits = {name: rows.remove_columns(["relevant_clip_ids", "saliency_scores", "clip_length"])
              for name, rows in splits.items()}
    collator_class = LongVideoWindowCollator
    if args.hard_partners:
        if args.presence_contrast_weight <= 0:
            parser.error("--hard-partners feeds the presence contrast; give --presence-contrast-weight > 0")
        collator_class = hard_partner_collator(LongVideoWindowCollator, splits["train"], videos, args.seed)
    collator = collator_class(tokenizer, FrameSource(videos), splits["train"], DEMO_FRAMES,
                              window_fraction=args.window_fraction, absent_fraction=args.absent_fraction,
                              seed=args.seed)
    config = dataclasses.replace(demo_config(), vtm_heads=list(args.vtm_heads),
                                 presence_contrast_loss_weight=args.presence_contrast_weight)
    if args.presence_contrast_negatives is not None:
        config = dataclasses.replace(config, presence_contrast_negatives=args.presence_contrast_negatives)
    if args.inside_loss_weight is not None:
        config = dataclasses.replace(config, inside_loss_weight=args.inside_loss_weight)
    model = get_peft_model(base, config)
    training = VTGTrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=32,
        per_device_eval_batch_size=32, learning_rate=3e-2, head_learning_rate=3e-3, warmup_ratio=0.05,
        eval_steps=max(1, args.max_steps // 3), metric_for_best_model="R1@0.5", seed=args.seed, disable_tqdm=True,
        logging_steps=max(1, args.max_steps // 10),
    )
    started = time.perf_counter()
    train(model, splits["train"], collator, training, eval_dataset=splits["val"])
    seconds = time.perf_counter() - started
    reloaded = PeftModel.from_pretrained(load_backbone(args.backbone)[0], args.output_dir)
    whole = GroundingCollator(tokenizer, FrameSource(videos, num_frames=DEMO_FRAMES))
    loader = torch.utils.data.DataLoader(splits["test"], batch_size=32, collate_fn=whole)
    metrics, _ = evaluate_grounding(GroundingModule(reloaded), loader, splits["test"], disable_tqdm=True)
    print(json.dumps({"training_seconds": round(seconds, 1), "test": {k: round(v, 2) for k, v in metrics.items()
                                                                      if k.startswith(("R1@", "R5@", "mIoU"))}}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
