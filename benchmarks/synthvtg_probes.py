"""A fast calibration probe for SynthVTG backbones (not the benchmark of BENCHMARKS.md): the grounding head alone,
trained on cached frozen per-frame features, so a candidate backbone can be judged in about two minutes on 2 cores.
Prints val metrics every `--eval-every` steps and at the end.

    python benchmarks/synthvtg_probes.py frozen-head [--backbone DIR] [--train-videos 1500] [--steps 1500]
                                                     [--temporal-kernel 3]

Videos are sampled to 32 frames, as in `peft-vtg demo`; data seed 0.
"""

import argparse
import json

import torch

from peft_vtg.heads import VTGTaskHeads, decode_moments
from peft_vtg.metrics import evaluate_moments, format_table
from peft_vtg.synth import FrameSource, SynthVTG
from peft_vtg.synth.backbone import load_backbone
from peft_vtg.timeline import seconds_to_frames

FRAMES = 32  # overridden by --frames


def truth(rows):
    return {row["qid"]: row["windows"] for row in rows}


def frozen_head(args):
    global FRAMES
    FRAMES = args.frames
    torch.manual_seed(0)
    model, tokenizer = load_backbone(args.backbone)
    data = SynthVTG(seed=0, num_videos={"train": args.train_videos, "val": 150})

    def cached(split):
        rows, videos = data.split(split)
        source = FrameSource(videos, FRAMES)
        names = list(videos)
        features = {}
        with torch.no_grad():
            for start in range(0, len(names), 100):
                frames = torch.stack([source(v) for v in names[start : start + 100]])
                pooled = model.vision_model(pixel_values=frames.flatten(0, 1)).pooler_output
                features.update(zip(names[start : start + 100], pooled.view(len(frames), FRAMES, -1)))
            text = tokenizer(list(rows["query"]), padding=True, return_tensors="pt")
            tokens = model.text_model(**text).last_hidden_state
        video = torch.stack([features[v] for v in rows["vid"]])
        spans = torch.tensor([seconds_to_frames(w[0][0], w[0][1], d, FRAMES)
                              for w, d in zip(rows["windows"], rows["duration"])])
        return rows, video, tokens, text["attention_mask"], spans

    train_rows, video, tokens, mask, spans = cached("train")
    val = cached("val")
    heads = VTGTaskHeads(video.shape[-1], tokens.shape[-1], hidden_size=64, num_layers=2, num_heads=4, dropout=0.1,
                         boundary_smoothing=1.0, temporal_kernel_size=args.temporal_kernel, hadamard_fusion=args.hadamard)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=args.lr)
    frame_mask = torch.ones(args.batch_size, FRAMES, dtype=torch.long)

    def evaluate():
        rows, v, t, m, _ = val
        heads.eval()
        with torch.no_grad():
            out = heads(v, torch.ones(len(v), FRAMES, dtype=torch.long), t, m)
        heads.train()
        moments = decode_moments(out.start_logits, out.end_logits, list(rows["duration"]))
        return evaluate_moments(dict(zip(rows["qid"], moments)), truth(rows))

    metrics = {}
    for step in range(args.steps + 1):
        index = torch.randint(len(video), (args.batch_size,))
        out = heads(video[index], frame_mask, tokens[index], mask[index], spans[index, 0], spans[index, 1])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0:
            metrics = evaluate()
            print({"step": step, "train_loss": round(out.loss.item(), 2), "val_R1@0.5": metrics["R1@0.5"],
                   "val_mIoU": round(metrics["mIoU"], 1)}, flush=True)
    return metrics  # val, at the last step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["frozen-head"])
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    parser.add_argument("--train-videos", type=int, default=1500, help="frozen-head: training videos")
    parser.add_argument("--steps", type=int, default=1500, help="frozen-head: steps")
    parser.add_argument("--backbone", default=None, help="frozen-head: a backbone directory (default: the shipped one)")
    parser.add_argument("--temporal-kernel", type=int, default=3, help="frozen-head: the head's temporal conv width")
    parser.add_argument("--frames", type=int, default=32, help="frozen-head: frames sampled per video")
    parser.add_argument("--hadamard", action="store_true", help="frozen-head: the head's Hadamard fusion")
    parser.add_argument("--batch-size", type=int, default=32, help="frozen-head: pairs per step")
    parser.add_argument("--eval-every", type=int, default=1000, help="frozen-head: steps between val evaluations")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    args = parser.parse_args()
    metrics = frozen_head(args)
    print(json.dumps(metrics) if args.json else format_table(metrics))


if __name__ == "__main__":
    main()
