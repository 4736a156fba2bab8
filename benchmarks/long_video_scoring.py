"""How `ground` should score spans across the windows of a long video: the exponents of `calibrated_spans`.

    python benchmarks/long_video_scoring.py --adapter demo-windows-3600        # about 2 minutes on 2 cores
    python benchmarks/long_video_scoring.py --adapter demo-presence-3600 demo-presence-k15-3600 \
        --results benchmarks/results/long_video_scoring_ensemble.json           # a prompt ensemble, and each member

A span found in window w is scored `p_span ** a * inside(span) * presence(w) ** b` (`calibrated_spans`), where
`presence` is the window's mean inside probability. This script picks `a` and `b` on hours that
`benchmarks/long_video.py`'s hour does not share: SynthVTG test videos from `--first-videos` on (default 60, 150 and
220; the benchmark's hour is videos 0 to ~50), each written at 1 frame per second until it lasts an hour, every query
of those videos grounded in its hour. Each window is run through the adapter once for all queries and its logits
kept, then every (a, b) of the grid rescored: the hour's R1@0.5 (right: any moment of the query's (colour, shape,
action) in the hour, as in `long_video.py`) and the R1@0.5 of the best span inside the query's own video. With
`ground`'s exponents it also counts where each query's top-1 lands (`wrong_top1`: right, or which look-alike event)
and how the query's event ranks among the hour's events (`event_ranking`: how often it comes first there and among
its own video's events, which kinds of other event outscore it, and by how many), and the same first places when
every event is scored on its exact span (`exact_span_ranking`: the bound of any decoding of these logits), by the
adapter, by the backbone's own text-to-clip retrieval, and by the two together. Results go
to `benchmarks/results/long_video_scoring.json`. Several adapters: the grid scores their prompt ensemble (each
member's logits fused by `peft_vtg.heads.fuse_grounding_outputs`, the mean of probabilities, what
`ground(adapter_names=...)` decodes), and each member alone is scored with `ground`'s exponents.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "long_video_scoring.json"
sys.path.insert(0, str(HERE))


def build_hour(videos: dict[str, Any], rows: Any, first: int, seconds: float) -> dict[str, Any]:
    """SynthVTG videos from the `first`-th (sorted by id) at 1 frame per second, until `seconds` long: the frames,
    every query of those videos with its own moment, its video's span and its event's moments in the hour, and every
    event of the hour (its (colour, shape, action) and moment, seconds)."""
    from long_video import at_one_fps

    parts, offset, queries, moments = [], 0, [], {}
    for vid in sorted(videos)[first:]:
        video = videos[vid]
        frames = at_one_fps(video)
        scale = len(frames) / video.duration
        for event in video.events:
            moments.setdefault(video.triple(event), []).append([t * scale + offset for t in video.window(event)])
        for row in rows:
            if row["vid"] == vid:
                event = next(e for e in video.events if np.allclose(video.window(e), row["windows"][0]))
                queries.append({"query": row["query"], "triple": video.triple(event),
                                "own": [t * scale + offset for t in row["windows"][0]],
                                "video": [offset, offset + len(frames)]})
        parts.append(frames)
        offset += len(frames)
        if offset >= seconds:
            break
    for query in queries:
        query["right"] = moments[query["triple"]]
    events = [{"triple": triple, "moment": moment} for triple, spans in moments.items() for moment in spans]
    return {"frames": np.concatenate(parts), "queries": queries, "events": events}


def window_logits(model: Any, tokenizer: Any, frames: np.ndarray, queries: list[str], window_frames: int,
                  window_seconds: float) -> dict[str, Any]:
    """Start, end and inside logits of every (window, query): (windows, queries, window_frames) each, on the grid
    `ground` cuts the hour into (the adapter's window, half-window overlap)."""
    from peft_vtg.heads.decoding import window_starts
    from peft_vtg.inference import _encode_windows, _ground_encoded, _query_batch
    from peft_vtg.synth.dataset import pixel_values

    duration = len(frames)  # 1 frame per second
    total = int(round(duration * window_frames / window_seconds))
    picks = np.minimum(((np.arange(total) + 0.5) * duration / total).astype(int), duration - 1)
    pixels = pixel_values(frames[picks])  # (total, 3, H, W)
    starts = window_starts(total, window_frames, window_frames // 2)
    tuner = model.base_model
    tuner.eval()
    text = _query_batch(tokenizer, queries, None)
    reference = next(tuner.parameters())
    shape = (len(starts), len(queries), window_frames)
    logits = {name: torch.zeros(shape) for name in ("start", "end", "inside")}
    with torch.no_grad():
        for begin in range(0, len(starts), 8):
            clips = torch.stack([pixels[s:s + window_frames] for s in starts[begin:begin + 8]])
            out = _ground_encoded(tuner, _encode_windows(tuner, clips, None), text, reference, None)
            n = len(clips)
            for name, value in (("start", out.start_logits), ("end", out.end_logits), ("inside", out.inside_logits)):
                logits[name][begin:begin + n] = value.view(n, len(queries), window_frames).float()
    return {**logits, "starts": starts, "step": duration / total}


def ranked_moments(hour: dict[str, Any], q: int, window_frames: int, span_exponent: float,
                   presence_exponent: float) -> list[list[float]]:
    """Query `q`'s moments in the hour, best first, `[start_s, end_s, score]`: each window's spans scored by
    `calibrated_spans` with these exponents and merged across window edges, as `ground` does."""
    from peft_vtg.heads.decoding import calibrated_spans, merge_window_spans
    from peft_vtg.timeline import rank_windows

    starts, step = hour["starts"], hour["step"]
    per_window = [[(start + i, start + j, score) for i, j, score in calibrated_spans(
        hour["start"][w, q], hour["end"][w, q], hour["inside"][w, q], 5, span_exponent=span_exponent,
        presence_exponent=presence_exponent)] for w, start in enumerate(starts)]
    return rank_windows([[f * step, (l + 1) * step, s]
                         for f, l, s in merge_window_spans(per_window, starts, window_frames)])


ATTRIBUTES = ("colour", "shape", "action")


def wrong_top1(hours: list[dict[str, Any]], window_frames: int, span_exponent: float,
               presence_exponent: float) -> dict[str, int]:
    """Where the hour's top-1 moment lands, counted over the queries: "right" (IoU >= 0.5 with a moment of the
    query's event), else the event of the hour it overlaps most when that IoU is >= 0.3, named by the attributes it
    shares with the query's ("same colour+action": another shape; "same colour+shape+action": the query's event, IoU
    0.3-0.5), else "no event" (a span over background or across several events)."""
    from peft_vtg.timeline import temporal_iou

    counts: dict[str, int] = {}
    for hour in hours:
        for q, query in enumerate(hour["queries"]):
            top = ranked_moments(hour, q, window_frames, span_exponent, presence_exponent)[0]
            if any(temporal_iou(top, m) >= 0.5 for m in query["right"]):
                kind = "right"
            else:
                event = max(hour["events"], key=lambda e: temporal_iou(top, e["moment"]))
                shared = shared_attributes(query["triple"], event["triple"])
                kind = "no event" if temporal_iou(top, event["moment"]) < 0.3 else \
                    ("same " + "+".join(shared) if shared else "nothing shared")
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def shared_attributes(mine: tuple[str, ...], theirs: tuple[str, ...]) -> list[str]:
    """The names of the attributes (colour, shape, action) two events' triples have in common, in that order."""
    return [name for name, a, b in zip(ATTRIBUTES, mine, theirs) if a == b]


# How `event_ranking` groups the hour's other events by what they share with the query's.
DISTRACTOR_KINDS = ("colour+shape", "colour+action", "shape+action", "one attribute", "none")
LOOK_ALIKE_KINDS = DISTRACTOR_KINDS[:3]  # sharing two of the three attributes
OUTSCORED_BINS = ((0, 0), (1, 1), (2, 4), (5, 19), (20, None))  # inclusive ranges of other events that outscore


def _distractor_kind(shared: list[str]) -> str:
    return "+".join(shared) if len(shared) == 2 else ("one attribute" if shared else "none")


def _outscores(score: float, truth: float) -> bool:
    """Whether an event scored `score` outranks the query's event scored `truth` (0: none of its moments found)."""
    return score > truth or (truth == 0.0 and score > 0.0)


def _comes_first(scores: np.ndarray, own: np.ndarray, among: np.ndarray) -> bool:
    """Whether the query's event (`own`, a mask over the hour's events) is found and no other event of `among` (a
    mask) outscores it, each event scored by `scores` (events,)."""
    truth = scores[own & among].max(initial=0.0)
    return truth > 0.0 and not any(_outscores(score, truth) for score in scores[~own & among])


def event_ranking(hours: list[dict[str, Any]], window_frames: int, span_exponent: float,
                  presence_exponent: float) -> dict[str, Any]:
    """How the query's event ranks among the hour's events and among its own video's, and what outscores it.

    An event's score for a query is the best score of the query's ranked moments (`ranked_moments`) that find it
    (IoU >= 0.5 with its moment), 0 when none does; the query's own score is the best over its event's moments (every
    moment of its (colour, shape, action)). Another event "outscores" the query's when its score is higher, or when
    the query's is 0 and its own is not. Returned, over all queries:

    - `first_among_events`: percent of queries whose event no other event outscores (an upper bound of the hour's
      R1@0.5, which also loses top-1 spans over no event or at IoU < 0.5);
    - `first_within_its_video`: the same with only the events and moments inside the query's own video (as if the
      right few minutes were known): how often the query's event comes first among a short video's events;
    - `other_events_per_query` and `outscoring_percent`: per kind of other event (`DISTRACTOR_KINDS`: the two
      attributes it shares with the query's event, one, or none), how many an hour holds per query and the percent of
      them that outscore the query's event;
    - `own_event_not_found`: percent of queries none of whose event's moments the ranked moments find;
    - `outscored_by`: percent of queries whose event is found and outscored by this many other events (`OUTSCORED_BINS`):
      how far from first the query's event is when it is not first;
    - `first_if_look_alikes_lost` / `first_if_others_lost`: what `first_among_events` would be if every other event
      sharing two attributes with the query's (a look-alike) / every one sharing one or none scored below it, the
      rest unchanged: which kind of loss keeps the query's event from first place.
    """
    from peft_vtg.moment_detr_eval import _cross_iou

    counts = {kind: 0 for kind in DISTRACTOR_KINDS}
    beaten = {kind: 0 for kind in DISTRACTOR_KINDS}
    queries = first = first_within = not_found = first_without_look_alikes = first_without_others = 0
    outscored: list[int] = []  # per query whose event is found: how many other events outscore it
    for hour in hours:
        events = hour["events"]
        event_moments = np.array([e["moment"] for e in events], np.float64).reshape(-1, 2)  # (events, 2) seconds
        for q, query in enumerate(hour["queries"]):
            ranked = np.array(ranked_moments(hour, q, window_frames, span_exponent, presence_exponent),
                              np.float64).reshape(-1, 3)  # (moments, 3): start, end, score
            iou = np.array([_cross_iou(moment, ranked[:, :2]) for moment in event_moments]).reshape(
                len(events), len(ranked))  # (events, moments)
            found = iou >= 0.5
            scores = np.where(found, ranked[None, :, 2], 0.0).max(axis=1, initial=0.0)  # (events,)
            is_own = np.array([tuple(e["triple"]) == tuple(query["triple"]) for e in events], bool)  # (events,)
            truth = scores[is_own].max(initial=0.0)
            low, high = query["video"]
            inside = (event_moments[:, 0] >= low) & (event_moments[:, 1] <= high)  # (events,) in its own video
            own_video = np.where(found & ((ranked[:, 0] >= low) & (ranked[:, 1] <= high))[None, :],
                                 ranked[None, :, 2], 0.0).max(axis=1, initial=0.0)  # (events,) its video's moments
            above, above_look_alikes = 0, 0
            for k, event in enumerate(events):
                if is_own[k]:
                    continue
                kind = _distractor_kind(shared_attributes(query["triple"], event["triple"]))
                counts[kind] += 1
                wins = _outscores(scores[k], truth)
                beaten[kind] += wins
                above += wins
                above_look_alikes += wins and kind in LOOK_ALIKE_KINDS
            first += truth > 0.0 and not above
            first_without_look_alikes += truth > 0.0 and above == above_look_alikes
            first_without_others += truth > 0.0 and not above_look_alikes
            first_within += _comes_first(own_video, is_own, inside)
            if truth > 0.0:
                outscored.append(above)
            else:
                not_found += 1
            queries += 1
    rates = {kind: beaten[kind] / counts[kind] if counts[kind] else 0.0 for kind in DISTRACTOR_KINDS}
    bins = {(f"{low}" if low == high else f"{low}+" if high is None else f"{low}-{high}"):
            100.0 * sum(low <= n and (high is None or n <= high) for n in outscored) / max(queries, 1)
            for low, high in OUTSCORED_BINS}
    return {"queries": queries, "first_among_events": 100.0 * first / max(queries, 1),
            "first_within_its_video": 100.0 * first_within / max(queries, 1),
            "other_events_per_query": {k: counts[k] / max(queries, 1) for k in DISTRACTOR_KINDS},
            "outscoring_percent": {k: 100.0 * rates[k] for k in DISTRACTOR_KINDS},
            "own_event_not_found": 100.0 * not_found / max(queries, 1), "outscored_by": bins,
            "first_if_look_alikes_lost": 100.0 * first_without_look_alikes / max(queries, 1),
            "first_if_others_lost": 100.0 * first_without_others / max(queries, 1)}


def _event_frames(moment: list[float], step: float) -> tuple[int, int]:
    """The hour's grid frames (`step` seconds each) whose centres lie in `moment` (seconds), first and last
    inclusive; the frame nearest its middle when none does."""
    first, last = int(np.ceil(moment[0] / step - 0.5)), int(np.floor(moment[1] / step - 0.5))
    if last < first:
        first = last = int((moment[0] + moment[1]) / 2 / step)
    return first, last


def exact_span_scores(hour: dict[str, Any], q: int, window_frames: int, span_exponent: float,
                      presence_exponent: float) -> np.ndarray:
    """(events,): each event of the hour scored for query `q` on its exact span, as `calibrated_spans` scores a span
    (`p_span ** a * inside(span) * presence ** b`), in the best of the windows that hold the span whole; an event
    no window holds whole is scored in the window holding most of it, its span cut to that window. What the decoder
    would score the event's own span if it proposed it: ranking events by these bounds any decoding of the logits."""
    from peft_vtg.heads.decoding import span_log_scores, window_presence

    starts, step = hour["starts"], hour["step"]
    log_span = [span_log_scores(hour["start"][w, q], hour["end"][w, q], window_frames) for w in range(len(starts))]
    inside = torch.sigmoid(hour["inside"][:, q].float())  # (windows, frames)
    presence = window_presence(hour["inside"][:, q]) ** presence_exponent  # (windows,)
    scores = []
    for event in hour["events"]:
        first, last = _event_frames(event["moment"], step)
        held = [min(last, s + window_frames - 1) - max(first, s) + 1 for s in starts]  # frames of it in each window
        whole = [w for w, s in enumerate(starts) if s <= first and last < s + window_frames]
        best = 0.0
        for w in whole or [int(np.argmax(held))]:
            i, j = max(first, starts[w]) - starts[w], min(last, starts[w] + window_frames - 1) - starts[w]
            score = (float(torch.exp(span_exponent * log_span[w][i, j])) * float(inside[w, i:j + 1].mean())
                     * float(presence[w]))
            best = max(best, score)
        scores.append(best)
    return np.array(scores)


def retrieval_logits(model: Any, tokenizer: Any, frames: np.ndarray, hour: dict[str, Any],
                     frames_per_clip: int = 8) -> np.ndarray:
    """(queries, events): the backbone's own text-to-clip logits, with no adapter: the query's text embedding
    against the motion embedding (`peft_vtg.synth.backbone.motion_embedding`, what its pre-training contrasts with
    captions) of `frames_per_clip` frames spread evenly over the event's moment, times the backbone's logit scale.
    `frames` is the hour at 1 frame per second."""
    import torch.nn.functional as F

    from peft_vtg.synth.backbone import motion_embedding
    from peft_vtg.synth.dataset import pixel_values

    model.eval()
    with torch.no_grad():
        projected = torch.cat([model.visual_projection(model.vision_model(
            pixel_values=pixel_values(frames[k:k + 512])).pooler_output) for k in range(0, len(frames), 512)])
        picks = [np.clip(np.round(np.linspace(e["moment"][0], e["moment"][1] - 1, frames_per_clip)).astype(int), 0,
                         len(frames) - 1) for e in hour["events"]]
        clips = motion_embedding(torch.stack([projected[torch.as_tensor(p)] for p in picks]))  # (events, dim)
        text = tokenizer([query["query"] for query in hour["queries"]], padding=True, return_tensors="pt")
        queries = F.normalize(model.text_projection(model.text_model(**text).pooler_output), dim=-1)  # (queries, dim)
        return (model.logit_scale.exp() * queries @ clips.t()).numpy()


def exact_span_ranking(hours: list[dict[str, Any]], window_frames: int, span_exponent: float,
                       presence_exponent: float) -> dict[str, dict[str, Any]]:
    """How the query's event ranks among the hour's events (and among its own video's) when every event is scored
    on its exact span (`exact_span_scores`), as in `event_ranking` but with no decoding in the way. Scored by the
    adapter; and, for hours with `retrieval` logits (`retrieval_logits`, queries x events), by the backbone's own
    retrieval alone and by the adapter's score times `exp(retrieval logit)` (the two as independent evidence).
    Per scorer, over the queries: `first_among_events` and `first_within_its_video` (percent of queries whose event
    no other event there outscores) and `outscoring_percent` (per `DISTRACTOR_KINDS`, the percent of such events in
    the hour that outscore the query's)."""
    tallies: dict[str, dict[str, Any]] = {}
    counts = {kind: 0 for kind in DISTRACTOR_KINDS}
    queries = 0
    for hour in hours:
        events = hour["events"]
        moments = np.array([e["moment"] for e in events], np.float64).reshape(-1, 2)
        for q, query in enumerate(hour["queries"]):
            adapter = exact_span_scores(hour, q, window_frames, span_exponent, presence_exponent)
            scorers = {"adapter": adapter}
            if hour.get("retrieval") is not None:
                logits = np.asarray(hour["retrieval"][q], np.float64)
                scorers["backbone retrieval"] = np.exp(logits - logits.max())
                scorers["adapter x backbone"] = adapter * scorers["backbone retrieval"]
            own = np.array([tuple(e["triple"]) == tuple(query["triple"]) for e in events])
            kinds = [_distractor_kind(shared_attributes(query["triple"], e["triple"])) for e in events]
            for k in np.flatnonzero(~own):
                counts[kinds[k]] += 1
            low, high = query["video"]
            inside = (moments[:, 0] >= low) & (moments[:, 1] <= high)
            for name, scores in scorers.items():
                tally = tallies.setdefault(name, {"hour": 0, "video": 0, "beaten": dict.fromkeys(DISTRACTOR_KINDS, 0)})
                truth = scores[own].max(initial=0.0)
                wins = {k: _outscores(scores[k], truth) for k in np.flatnonzero(~own)}
                for k, won in wins.items():
                    tally["beaten"][kinds[k]] += won
                tally["hour"] += truth > 0.0 and not any(wins.values())
                tally["video"] += _comes_first(scores, own, inside)
            queries += 1
    return {name: {"first_among_events": 100.0 * tally["hour"] / max(queries, 1),
                   "first_within_its_video": 100.0 * tally["video"] / max(queries, 1),
                   "outscoring_percent": {kind: 100.0 * tally["beaten"][kind] / counts[kind] if counts[kind] else 0.0
                                          for kind in DISTRACTOR_KINDS}}
            for name, tally in tallies.items()}


def score_grid(hours: list[dict[str, Any]], window_frames: int, grid: list[tuple[float, float]]) -> list[dict]:
    """Each (a, b) of `grid`: R1@0.5 of the hours' top-1 moments and of the best span inside each query's video, the
    windows' spans scored by `calibrated_spans(..., span_exponent=a, presence_exponent=b)` (what `ground` runs) and
    merged across window edges as `ground` merges them."""
    from peft_vtg.timeline import temporal_iou

    results = []
    for a, b in grid:
        hits = within = count = 0
        for hour in hours:
            for q, query in enumerate(hour["queries"]):
                ranked = ranked_moments(hour, q, window_frames, a, b)
                hits += any(temporal_iou(ranked[0], m) >= 0.5 for m in query["right"])
                low, high = query["video"]
                own = [m for m in ranked if low <= m[0] and m[1] <= high]
                within += bool(own) and temporal_iou(own[0], query["own"]) >= 0.5
                count += 1
        results.append({"span_exponent": a, "presence_exponent": b, "queries": count,
                        "hour R1@0.5": 100.0 * hits / count, "within its video R1@0.5": 100.0 * within / count})
        print(f"p_span^{a} x inside x presence^{b}: hour R1@0.5 {results[-1]['hour R1@0.5']:5.1f}, within its video "
              f"{results[-1]['within its video R1@0.5']:5.1f} ({count} queries)", flush=True)
    return results


def fuse_hours(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One hour's window logits of several adapters (each `window_logits`' output) -> their prompt ensemble's, fused
    as `ground(adapter_names=...)` fuses them (`fuse_grounding_outputs`, mean of probabilities)."""
    from peft_vtg.heads import fuse_grounding_outputs
    from peft_vtg.heads.task import VTGGroundingOutput

    shape = members[0]["start"].shape  # (windows, queries, frames)

    def interleaved(name: str) -> torch.Tensor:  # member-minor rows: (windows * queries * members, frames)
        return torch.stack([m[name] for m in members], dim=2).reshape(-1, shape[-1])

    fused = fuse_grounding_outputs(VTGGroundingOutput(start_logits=interleaved("start"),
                                                      end_logits=interleaved("end"),
                                                      inside_logits=interleaved("inside")), len(members))
    return {**members[0], "start": fused.start_logits.view(shape), "end": fused.end_logits.view(shape),
            "inside": fused.inside_logits.view(shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", nargs="+", required=True, help="a SynthVTG adapter with inside logits; "
                        "several: their prompt ensemble (the first one's window), and each alone")
    parser.add_argument("--first-videos", type=int, nargs="+", default=[60, 150, 220],
                        help="where each hour starts among the sorted test videos (default: 60 150 220)")
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--backbone", default=None, help="the backbone the adapters were trained on (default: the "
                        "shipped one)")
    args = parser.parse_args()

    from peft import PeftModel

    from peft_vtg.synth import SynthVTG
    from peft_vtg.synth.backbone import load_backbone

    from peft_vtg.heads.decoding import SPAN_PROBABILITY_EXPONENT, WINDOW_PRESENCE_EXPONENT

    config = json.loads((Path(args.adapter[0]) / "adapter_config.json").read_text())
    window_frames, window_seconds = config["trained_window_frames"], config["trained_window_seconds"]
    rows, videos = SynthVTG(seed=0, num_videos={"train": 1, "val": 1, "test": 300}).split("test")
    built = [build_hour(videos, rows, first, args.seconds) for first in args.first_videos]
    per_adapter = []  # per adapter, per hour: its window logits
    for path in args.adapter:
        base, tokenizer = load_backbone(args.backbone)
        model = PeftModel.from_pretrained(base, path)
        per_adapter.append([{"queries": hour["queries"], "events": hour["events"], **window_logits(
            model, tokenizer, hour["frames"], [q["query"] for q in hour["queries"]], window_frames, window_seconds)}
            for hour in built])
    names = [os.path.basename(os.path.normpath(path)) for path in args.adapter]
    members = []
    if len(args.adapter) > 1:
        for name, hours in zip(names, per_adapter):
            print(f"{name} alone:", flush=True)
            members.append({"adapter": name, **score_grid(hours, window_frames, [
                (SPAN_PROBABILITY_EXPONENT, WINDOW_PRESENCE_EXPONENT)])[0]})
        print("their ensemble:", flush=True)
    hours = [fuse_hours(list(parts)) for parts in zip(*per_adapter)] if len(args.adapter) > 1 else per_adapter[0]
    grid = [(a, b) for a in (1.0, 0.5, 0.25) for b in (0.0, 1.0, 2.0, 3.0)]
    results = score_grid(hours, window_frames, grid)
    landed = wrong_top1(hours, window_frames, SPAN_PROBABILITY_EXPONENT, WINDOW_PRESENCE_EXPONENT)
    print("where the top-1 lands, `ground`'s exponents:", json.dumps(landed), flush=True)
    ranking = event_ranking(hours, window_frames, SPAN_PROBABILITY_EXPONENT, WINDOW_PRESENCE_EXPONENT)
    print("how the query's event ranks among the hour's events:", json.dumps(ranking), flush=True)
    base, tokenizer = load_backbone(args.backbone)  # a fresh copy: the adapters' copies carry their prompts
    for hour, frames in zip(hours, built):
        hour["retrieval"] = retrieval_logits(base, tokenizer, frames["frames"], hour)
    exact = exact_span_ranking(hours, window_frames, SPAN_PROBABILITY_EXPONENT, WINDOW_PRESENCE_EXPONENT)
    print("the query's event among the hour's, every event scored on its exact span:", json.dumps(exact), flush=True)
    look_alikes = sum(any(e["triple"][0] == q["triple"][0] and e["triple"][2] == q["triple"][2]
                          and e["triple"][1] != q["triple"][1] for e in hour["events"])
                      for hour in built for q in hour["queries"])
    print(f"queries whose hour shows their colour and action in another shape: {look_alikes}", flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({
        "adapter": names[0] if len(names) == 1 else names, "first_videos": args.first_videos,
        "torch": torch.__version__, "results": results, "top1_lands_on": landed, "event_ranking": ranking,
        "exact_span_ranking": exact,
        "queries_with_a_look_alike_of_another_shape": look_alikes,
        **({"backbone": args.backbone} if args.backbone else {}), **({"members": members} if members else {})},
        indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
