"""Calibration probes on SynthVTG with the shipped backbone (not the benchmark of BENCHMARKS.md; they ask whether the
task is learnable at the demo's scale). Each prints metrics on the named split.

    python benchmarks/synthvtg_probes.py zero-shot                  # frame-query similarity, test split of the demo
    python benchmarks/synthvtg_probes.py full-finetune [--lr 3e-4]  # backbone + head, the demo's data and budget
    python benchmarks/synthvtg_probes.py frozen-head [--train-videos 1500] [--steps 3000]
                                                                    # head alone on cached frozen per-frame features

Videos are sampled to 32 frames, as in `peft-vtg demo`; data seed 0 (the demo's splits).
"""

import argparse
import json

import torch
from torch.utils.data import DataLoader

from peft_vtg.baselines import frame_query_similarity, zero_shot_moments
from peft_vtg.data import GroundingCollator
from peft_vtg.heads import VTGTaskHeads, decode_moments
from peft_vtg.metrics import evaluate_moments, format_table
from peft_vtg.synth import FrameSource, SynthVTG
from peft_vtg.synth.backbone import load_backbone
from peft_vtg.timeline import seconds_to_frames

FRAMES = 32


def truth(rows):
    return {row["qid"]: row["windows"] for row in rows}


def zero_shot(args):
    model, tokenizer = load_backbone()
    rows, videos = SynthVTG(seed=0, num_videos={"test": 200}).split("test")
    source = FrameSource(videos, FRAMES)
    predictions = {}
    for start in range(0, len(rows), 50):
        part = rows.select(range(start, min(start + 50, len(rows))))
        text = tokenizer(list(part["query"]), padding=True, return_tensors="pt")
        similarity = frame_query_similarity(model, torch.stack([source(v) for v in part["vid"]]), text["input_ids"],
                                            text["attention_mask"])
        predictions.update(zip(part["qid"], zero_shot_moments(similarity, list(part["duration"]))))
    return evaluate_moments(predictions, truth(rows))


def full_finetune(args):
    from peft import get_peft_model

    from peft_vtg import VTGPromptConfig
    from peft_vtg.training import GroundingModule, VTGTrainingArguments, evaluate_grounding, train

    torch.manual_seed(0)
    base, tokenizer = load_backbone()
    # The demo's head, no prompts, and every backbone parameter trainable: full fine-tuning + head.
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=0, grounding_head=True,
                                                 head_hidden_size=64, head_num_layers=2, boundary_smoothing=1.0))
    for param in model.parameters():
        param.requires_grad = True
    data = SynthVTG(seed=0, num_videos={"train": 600, "val": 100, "test": 200})
    splits = {name: data.split(name) for name in ("train", "val", "test")}
    collator = GroundingCollator(tokenizer, FrameSource({k: v for _, d in splits.values() for k, v in d.items()}, FRAMES))
    training = VTGTrainingArguments(output_dir=args.output_dir, max_steps=500, per_device_train_batch_size=16,
                                    learning_rate=args.lr, eval_steps=166, logging_steps=50, disable_tqdm=True)
    result = train(model, splits["train"][0], collator, training, eval_dataset=splits["val"][0])
    for logs in result.history:
        print({k: round(v, 2) for k, v in logs.items() if k in ("step", "loss", "eval/R1@0.5", "eval/mIoU")})
    test_rows = splits["test"][0]
    metrics, _ = evaluate_grounding(GroundingModule(model), DataLoader(test_rows, batch_size=32, collate_fn=collator),
                                    test_rows)
    return metrics  # of the last weights


def frozen_head(args):
    torch.manual_seed(0)
    model, tokenizer = load_backbone()
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
                         boundary_smoothing=1.0)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=args.lr)
    frame_mask = torch.ones(32, FRAMES, dtype=torch.long)

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
        index = torch.randint(len(video), (32,))
        out = heads(video[index], frame_mask, tokens[index], mask[index], spans[index, 0], spans[index, 1])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 1000 == 0:
            metrics = evaluate()
            print({"step": step, "train_loss": round(out.loss.item(), 2), "val_R1@0.5": metrics["R1@0.5"],
                   "val_mIoU": round(metrics["mIoU"], 1)}, flush=True)
    return metrics  # val, at the last step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["zero-shot", "full-finetune", "frozen-head"])
    parser.add_argument("--lr", type=float, default=None, help="learning rate (3e-4 full-finetune, 1e-3 frozen-head)")
    parser.add_argument("--train-videos", type=int, default=1500, help="frozen-head: training videos")
    parser.add_argument("--steps", type=int, default=3000, help="frozen-head: steps of 32")
    parser.add_argument("--output-dir", default="synthvtg-probe", help="full-finetune: where train() writes")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 3e-4 if args.probe == "full-finetune" else 1e-3
    run = {"zero-shot": zero_shot, "full-finetune": full_finetune, "frozen-head": frozen_head}[args.probe]
    metrics = run(args)
    print(json.dumps(metrics) if args.json else format_table(metrics))


if __name__ == "__main__":
    main()
