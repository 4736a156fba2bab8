"""Which of a query's attributes (colour, shape, action) the frozen backbone and an adapter tell apart (issue 15).

    python benchmarks/attribute_probe.py --adapter demo-presence-3600                 # about 1 minute on 2 cores
    python benchmarks/attribute_probe.py --backbone my-backbone --adapter A --results R.json

On each of SynthVTG's 600 test queries, the true sentence against the same kind of sentence with one attribute
changed to a (colour, shape, action) that the video does not show (so the changed sentence is false there). A hit is
the true sentence scoring higher:
- backbone: the CLIP similarity of the caption with the moment's 16 frames (sampled over the moment), by the
  mean-pooled embedding and by the motion embedding (`peft_vtg.synth.backbone`);
- adapter: the mean inside probability over the moment's frames of the whole video (16 frames, as trained), and
  over all of the video's frames (its presence, what `ground` ranks a long video's windows by).
50 % is chance. With an adapter, also its R1@0.5 on the short videos, split by whether the query's video shows the
same colour doing the same action in another shape. It also asks whether the backbone's text tower reads each
attribute: the cosine similarity of a sentence's text embedding with the same sentence (same template) with one
attribute's words changed, against the same (colour, shape, action) in another phrasing. A long video needs every
attribute: in an hour of SynthVTG the same colour doing the same thing in another shape is the most common wrong
answer (`long_video_scoring.py`'s `top1_lands_on`). Results go to `benchmarks/results/attribute_probe.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "attribute_probe.json"
SWAPS = (("colour", 0), ("shape", 1), ("action", 2))


def probe_rows(rows: Any, videos: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Per test query: its video, event, and sentences with their (colour, shape, action): the true one first, then
    one per attribute that can be swapped to a (colour, shape, action) absent from the video."""
    from peft_vtg.synth.text import ACTIONS, COLOURS, SHAPES, describe

    pools = (list(COLOURS), list(SHAPES), list(ACTIONS))
    rng = random.Random(seed)
    probes = []
    for row in rows:
        video = videos[row["vid"]]
        event = next(e for e in video.events if np.allclose(video.window(e), row["windows"][0]))
        truth = video.triple(event)
        shown = {video.triple(e) for e in video.events}
        sentences, names, triples = [row["query"]], ["true"], [truth]
        for name, slot in SWAPS:
            options = [triple for triple in (truth[:slot] + (value,) + truth[slot + 1:] for value in pools[slot])
                       if triple not in shown]
            if options:
                triples.append(rng.choice(options))
                sentences.append(describe(*triples[-1], rng))
                names.append(name)
        probes.append({"row": row, "video": video, "event": event, "sentences": sentences, "names": names,
                       "triples": triples})
    return probes


def tally(wins: dict[str, list[bool]]) -> dict[str, dict[str, float]]:
    return {name: {"true_wins_percent": 100.0 * float(np.mean(hits)), "queries": len(hits)}
            for name, hits in sorted(wins.items())}


def backbone_probe(base: Any, tokenizer: Any, probes: list[dict[str, Any]]) -> dict[str, Any]:
    from peft_vtg.synth.backbone import _clip_embeddings
    from peft_vtg.synth.dataset import pixel_values

    wins: dict[str, dict[str, list[bool]]] = {"mean embedding": {}, "motion embedding": {}}
    with torch.no_grad():
        for probe in probes:
            event = probe["event"]
            picks = np.linspace(event.start, event.end, 16).round().astype(int)
            count = len(probe["sentences"])
            frames = pixel_values(probe["video"].frames[picks])[None].expand(count, -1, -1, -1, -1)
            text = tokenizer(probe["sentences"], padding=True, return_tensors="pt")
            _, _, video, motion, caption = _clip_embeddings(base, frames, text["input_ids"], text["attention_mask"])
            for key, embedding in (("mean embedding", video), ("motion embedding", motion)):
                similarity = (caption * embedding).sum(-1)  # (sentences,)
                for k, name in enumerate(probe["names"][1:], start=1):
                    wins[key].setdefault(name, []).append(bool(similarity[0] > similarity[k]))
    return {key: tally(value) for key, value in wins.items()}


def text_pairs(count: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """`count` random (colour, shape, action) triples, each phrased once, then again with the same template and one
    attribute's words changed ("colour", "shape", "action"), and once in another random phrasing ("another
    phrasing")."""
    from peft_vtg.synth.text import ACTION_PHRASES, ACTIONS, COLOUR_WORDS, COLOURS, SHAPE_WORDS, SHAPES, TEMPLATES, \
        describe

    pools = (list(COLOURS), list(SHAPES), list(ACTIONS))
    rng = random.Random(seed)

    def phrase(triple: tuple[str, str, str], template: str, picks: list[int]) -> str:
        colour, shape, action = (options[picks[k] % len(options)] for k, options in
                                 enumerate((COLOUR_WORDS[triple[0]], SHAPE_WORDS[triple[1]], ACTION_PHRASES[triple[2]])))
        return template.format(colour=colour, shape=shape, action=action)

    pairs = []
    for _ in range(count):
        truth = tuple(rng.choice(pool) for pool in pools)
        template, picks = rng.choice(TEMPLATES), [rng.randrange(60) for _ in range(3)]  # 60: every synonym count divides
        sentence = phrase(truth, template, picks)
        for name, slot in SWAPS:
            changed = truth[:slot] + (rng.choice([v for v in pools[slot] if v != truth[slot]]),) + truth[slot + 1:]
            pairs.append({"attribute": name, "sentence": sentence, "triple": truth, "other_triple": changed,
                          "other": phrase(changed, template, picks)})
        pairs.append({"attribute": "another phrasing", "sentence": sentence, "triple": truth, "other_triple": truth,
                      "other": describe(*truth, rng)})
    return pairs


def text_probe(base: Any, tokenizer: Any, pairs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean cosine similarity of the backbone's projected text embeddings of each pair of `text_pairs`, per kind of
    change. A text tower that reads an attribute moves the embedding when its word changes (low similarity); one that
    ignores it leaves the sentence nearly where it was (close to 1)."""
    def embed(sentences: list[str]) -> torch.Tensor:
        text = tokenizer(sentences, padding=True, return_tensors="pt")
        out = base.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        return torch.nn.functional.normalize(base.text_projection(out.pooler_output), dim=-1)  # (n, dim)

    with torch.no_grad():
        cosine = (embed([p["sentence"] for p in pairs]) * embed([p["other"] for p in pairs])).sum(-1)
    kinds: dict[str, list[float]] = {}
    for pair, value in zip(pairs, cosine.tolist()):
        kinds.setdefault(pair["attribute"], []).append(value)
    return {name: float(np.mean(values)) for name, values in kinds.items()}


def adapter_probe(model: Any, tokenizer: Any, videos: dict[str, Any], probes: list[dict[str, Any]],
                  batch_size: int = 64) -> dict[str, Any]:
    from peft_vtg.data import GroundingCollator
    from peft_vtg.synth.dataset import FrameSource

    collator = GroundingCollator(tokenizer, FrameSource(videos, num_frames=16))
    flat = [(p, k) for p in probes for k in range(len(p["sentences"]))]
    scores: dict[tuple[str, int], tuple[float, float]] = {}
    with torch.no_grad():
        for begin in range(0, len(flat), batch_size):
            chunk = flat[begin:begin + batch_size]
            batch = collator([{**{key: p["row"][key] for key in ("qid", "vid", "duration", "windows")},
                               "query": p["sentences"][k]} for p, k in chunk])
            out = model.forward_grounding(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          pixel_values=batch["pixel_values"], frame_mask=batch["frame_mask"])
            inside = out.inside_logits.float().sigmoid()  # (batch, frames)
            for row, (p, k) in enumerate(chunk):
                first, last = int(batch["start_frames"][row]), int(batch["end_frames"][row])
                real = batch["frame_mask"][row].float()
                scores[(p["row"]["qid"], k)] = (inside[row, first:last + 1].mean().item(),
                                                (inside[row] * real).sum().item() / real.sum().item())
    wins: dict[str, dict[str, list[bool]]] = {"inside the moment": {}, "presence (whole video)": {}}
    for p in probes:
        qid = p["row"]["qid"]
        for k, name in enumerate(p["names"][1:], start=1):
            for index, key in enumerate(wins):
                wins[key].setdefault(name, []).append(scores[(qid, 0)][index] > scores[(qid, k)][index])
    return {key: tally(value) for key, value in wins.items()}


def look_alike_recall(model: Any, tokenizer: Any, rows: Any, videos: dict[str, Any],
                      probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The adapter's R1@0.5 on the short test videos (whole video, 16 frames), split by whether the query's video
    also shows its colour doing its action in another shape (a look-alike only shape tells apart)."""
    from peft_vtg.data import GroundingCollator
    from peft_vtg.synth.dataset import FrameSource
    from peft_vtg.timeline import temporal_iou
    from peft_vtg.training import GroundingModule, evaluate_grounding

    columns = [c for c in ("relevant_clip_ids", "saliency_scores", "clip_length") if c in rows.column_names]
    rows = rows.remove_columns(columns)
    loader = torch.utils.data.DataLoader(rows, batch_size=32,
                                         collate_fn=GroundingCollator(tokenizer, FrameSource(videos, num_frames=16)))
    _, moments = evaluate_grounding(GroundingModule(model), loader, rows, disable_tqdm=True)
    groups: dict[str, list[bool]] = {"with a look-alike of another shape": [], "without": []}
    for p in probes:
        colour, shape, action = p["triples"][0]
        shown = {p["video"].triple(e) for e in p["video"].events}
        look_alike = any(t[0] == colour and t[2] == action and t[1] != shape for t in shown)
        top = moments[p["row"]["qid"]][0]
        groups["with a look-alike of another shape" if look_alike else "without"].append(
            temporal_iou(top[:2], p["row"]["windows"][0]) >= 0.5)
    return {name: {"R1@0.5": 100.0 * float(np.mean(hits)) if hits else None, "queries": len(hits)}
            for name, hits in groups.items()}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=None, help="a SynthVTG adapter with inside logits (default: the "
                        "backbone alone)")
    parser.add_argument("--backbone", default=None, help="default: the shipped backbone")
    parser.add_argument("--test-videos", type=int, default=300)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)

    from peft_vtg.synth.backbone import load_backbone
    from peft_vtg.synth.dataset import SynthVTG

    rows, videos = SynthVTG(seed=0, num_videos={"train": 1, "val": 1, "test": args.test_videos}).split("test")
    probes = probe_rows(rows, videos)
    base, tokenizer = load_backbone(args.backbone)
    result: dict[str, Any] = {"backbone": args.backbone or "shipped", "adapter": args.adapter,
                              "backbone_alone": backbone_probe(base, tokenizer, probes),
                              "text_similarity_one_attribute_changed": text_probe(base, tokenizer, text_pairs())}
    print("text embedding similarity, one attribute changed: " + ", ".join(
        f"{name} {value:.3f}" for name, value in result["text_similarity_one_attribute_changed"].items()), flush=True)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, args.adapter).eval()
        result["adapter_probe"] = adapter_probe(model, tokenizer, videos, probes)
        result["short_videos_R1@0.5"] = look_alike_recall(model, tokenizer, rows, videos, probes)
        print("short videos, R1@0.5:", json.dumps(result["short_videos_R1@0.5"]), flush=True)
    for part in ("backbone_alone", "adapter_probe"):
        for key, per_attribute in result.get(part, {}).items():
            print(f"{part}, {key}: " + ", ".join(f"{name} {v['true_wins_percent']:.1f} %"
                                                  for name, v in per_attribute.items()), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
