"""Grounding in an hour-long video (issue 15): memory against a 2-minute video, and accuracy against the short videos.

    python benchmarks/long_video.py                      # trains the demo adapter first if --adapter is not given
    python benchmarks/long_video.py --adapter vtg-demo-adapter

The long video is SynthVTG test videos put one after another, written at 1 frame per second, until it lasts an hour;
each embedded video keeps its queries, with their moments shifted by its offset. The same queries are grounded

- in their own short video (the single pass, at the adapter's trained frames per video), and
- in the hour-long video, window by window (`peft_vtg.ground` with the adapter's trained window),

and scored with R1@0.5 / R1@0.7 / mIoU. A diagnostic separates the two ways the long video is harder: `long, within
its video` keeps only the hour's moments that lie inside the query's own embedded video (its best-scored one is the
top-1), as if the right few minutes were known; the gap between it and `long` is the cost of the other videos'
distractor events, the gap between it and `short` the cost of windows (another frame rate, scene cuts). Peak memory:
`ground` of one query in the hour-long video and in its first two minutes, each in a fresh process (resident set
size polled every 2 ms: the peak, and its rise above the level before the call).
Results go to `benchmarks/results/long_video.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "long_video.json"
sys.path.insert(0, str(HERE))


def at_one_fps(video: Any) -> np.ndarray:
    """A SynthVTG video's frames at 1 frame per second (bin centres): (round(duration), 32, 32, 3) uint8."""
    count = max(1, int(round(video.duration)))
    picks = ((np.arange(count) + 0.5) * len(video.frames) / count).astype(int)
    return video.frames[np.minimum(picks, len(video.frames) - 1)]


def write_video(path: Path, frames: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 400_000
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def build(workdir: Path, seconds: float, num_queries: int) -> dict[str, Any]:
    """Short video files, the long one and its 2-minute head, and the queries with both sets of ground truth."""
    from peft_vtg.synth import SynthVTG

    rows, videos = SynthVTG(seed=0, num_videos={"train": 1, "val": 1, "test": 300}).split("test")
    by_vid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_vid.setdefault(row["vid"], []).append(row)
    parts, offset, queries = [], 0, []
    moments: dict[tuple[str, str, str], list[list[float]]] = {}  # (colour, shape, action) -> its moments in the hour
    for vid in sorted(videos):
        video = videos[vid]
        frames = at_one_fps(video)
        scale = len(frames) / video.duration  # the file lasts len(frames) s: moments scale with it
        write_video(workdir / f"{vid}.mp4", frames)
        for event in video.events:
            start, end = (t * scale + offset for t in video.window(event))
            moments.setdefault(video.triple(event), []).append([start, end])
        for row in by_vid.get(vid, []):
            if len(queries) < num_queries:
                event = next(e for e in video.events if np.allclose(video.window(e), row["windows"][0]))
                start, end = (t * scale for t in row["windows"][0])
                queries.append({"qid": row["qid"], "vid": vid, "query": row["query"], "short": [start, end],
                                "long": [start + offset, end + offset], "video": [offset, offset + len(frames)],
                                "triple": video.triple(event)})
        parts.append(frames)
        offset += len(frames)
        if offset >= seconds and len(queries) >= num_queries:
            break
    for q in queries:
        # SynthVTG has 162 (colour, shape, action) events, so in an hour of ~50 videos most queries also describe
        # events of other embedded videos: each of those is a right answer too (the queries' sentences are what
        # they are, wherever the event happens), as several ground-truth windows are in QVHighlights.
        q["long_all"] = moments[q["triple"]]
    long_frames = np.concatenate(parts)
    write_video(workdir / "long.mp4", long_frames)
    write_video(workdir / "head.mp4", long_frames[:120])
    return {"queries": queries, "long_seconds": len(long_frames)}


def peak_memory(adapter: str, video: str, query: str, backbone: Optional[str] = None) -> dict[str, float]:
    """`ground` of one query on `video` in this (fresh) process: seconds and peak RSS above the level before."""
    from peft import PeftModel

    from peft_vtg import ground
    from peft_vtg.synth.backbone import load_backbone
    from synthvtg_benchmark import _PeakRss, _rss_bytes

    base, tokenizer = load_backbone(backbone)
    model = PeftModel.from_pretrained(base, adapter)
    ground(model, video, query, tokenizer, disable_tqdm=True)  # warm-up: allocator, lazy imports
    floor = _rss_bytes()
    started = time.perf_counter()
    with _PeakRss() as rss:
        ground(model, video, query, tokenizer, disable_tqdm=True)
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": rss.peak,
            "rise_bytes": max(0, rss.peak - floor)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", nargs="+", default=None, help="a SynthVTG adapter (default: train the demo's); "
                        "several: their prompt ensemble (`ground(adapter_names=...)`, mean of probabilities; the "
                        "first adapter's window and frames; accuracy only, with --skip-memory)")
    parser.add_argument("--seconds", type=float, default=3600.0, help="length of the long video (default: an hour)")
    parser.add_argument("--queries", type=int, default=50, help="queries to ground (default: 50)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="window of the long video (default: the adapter's trained window)")
    parser.add_argument("--skip-memory", action="store_true", help="accuracy only, no memory measurement")
    parser.add_argument("--backbone", default=None, help="the backbone the adapter was trained on (default: the "
                        "shipped one; e.g. one made by pretrain_backbone.py --output-dir)")
    parser.add_argument("--memory-only", nargs=3, metavar=("ADAPTER", "VIDEO", "QUERY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps(peak_memory(*args.memory_only, backbone=args.backbone)))
        return
    if args.adapter and len(args.adapter) > 1 and not args.skip_memory:
        parser.error("memory is measured for one adapter; add --skip-memory to score an ensemble")

    from peft import PeftModel

    from peft_vtg import ground
    from peft_vtg.metrics import evaluate_moments
    from peft_vtg.synth.backbone import load_backbone

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        adapter, members = (args.adapter[0], args.adapter[1:]) if args.adapter else (None, [])
        if adapter is None:
            from peft_vtg.demo import run_demo

            adapter = str(workdir / "adapter")
            if args.backbone:
                parser.error("--backbone needs --adapter: the demo's adapter is trained on the shipped backbone")
            run_demo(output_dir=adapter, disable_tqdm=True)
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
        data = build(workdir, args.seconds, args.queries)
        queries = data["queries"]
        base, tokenizer = load_backbone(args.backbone)
        model = PeftModel.from_pretrained(base, adapter)
        names = None
        if members:
            names = ["default"] + [f"member{k}" for k in range(1, len(members) + 1)]
            for name, path in zip(names[1:], members):
                model.load_adapter(path, adapter_name=name)
        frames = config["trained_window_frames"]
        short, long = {}, {}
        started = time.perf_counter()
        for q in queries:
            # One pass over the whole short video (a window far longer than any of them turns windowing off).
            short[q["qid"]] = ground(model, str(workdir / f"{q['vid']}.mp4"), q["query"], tokenizer,
                                     num_frames=frames, window_seconds=1e6, adapter_names=names, disable_tqdm=True)
        short_seconds = time.perf_counter() - started
        started = time.perf_counter()
        within = {}
        for q in queries:
            long[q["qid"]] = ground(model, str(workdir / "long.mp4"), q["query"], tokenizer, top_k=5,
                                    disable_tqdm=True, window_seconds=args.window_seconds, adapter_names=names)
        long_seconds = time.perf_counter() - started
        for q in queries:
            # The diagnostic: every span of every window, not suppressed (a better-scored span that crosses the
            # video's edge would suppress the best one inside it), the best-scored inside the query's own video.
            moments = ground(model, str(workdir / "long.mp4"), q["query"], tokenizer, top_k=100_000,
                             nms_threshold=None, disable_tqdm=True, window_seconds=args.window_seconds,
                             adapter_names=names)
            low, high = q["video"]
            within[q["qid"]] = [m for m in moments if low <= m[0] and m[1] <= high][:5] or [(low, low, 0.0)]
        truth_long = {q["qid"]: [q["long"]] for q in queries}
        truth_all = {q["qid"]: q["long_all"] for q in queries}
        unique = {q["qid"] for q in queries if len(q["long_all"]) == 1}
        metrics = {"short": evaluate_moments(short, {q["qid"]: [q["short"]] for q in queries}),
                   "long": evaluate_moments(long, truth_all),
                   "long, own moment only": evaluate_moments(long, truth_long),
                   "long, within its video": evaluate_moments(within, truth_long),
                   "short, unique queries": evaluate_moments({k: short[k] for k in unique},
                                                             {q["qid"]: [q["short"]] for q in queries
                                                              if q["qid"] in unique}),
                   "long, unique queries": evaluate_moments({k: long[k] for k in unique},
                                                            {k: truth_all[k] for k in unique})}
        memory = {}
        for name in () if args.skip_memory else ("head", "long"):
            command = [sys.executable, __file__, "--memory-only", adapter, str(workdir / f"{name}.mp4"),
                       queries[0]["query"]] + (["--backbone", args.backbone] if args.backbone else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            memory[name] = json.loads(output.strip().splitlines()[-1])
    result = {
        "adapters": [os.path.basename(os.path.normpath(path)) for path in args.adapter or ["vtg-demo-adapter"]],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "long_video_seconds": data["long_seconds"],
        "queries": len(queries), "window_frames": frames,
        "queries_unique_in_the_hour": len(unique),
        "moments_per_query_in_the_hour": float(np.mean([len(q["long_all"]) for q in queries])),
        "window_seconds": args.window_seconds or config["trained_window_seconds"],
        "metrics": metrics,
        "seconds_per_query": {"short": short_seconds / len(queries), "long": long_seconds / len(queries)},
        "peak_memory": memory,
        **({"backbone": args.backbone} if args.backbone else {}),
    }
    if memory:
        result["peak_rss_ratio_long_to_two_minutes"] = memory["long"]["peak_rss_bytes"] / memory["head"]["peak_rss_bytes"]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    for name, m in metrics.items():
        print(f"{name:22s}: R1@0.5 {m['R1@0.5']:.2f}  R1@0.7 {m['R1@0.7']:.2f}  mIoU {m['mIoU']:.2f}")
    print(f"seconds a query: short {result['seconds_per_query']['short']:.2f}, long {result['seconds_per_query']['long']:.2f}")
    if not memory:
        return
    for name, label in (("head", "2-minute video"), ("long", "hour-long video")):
        print(f"peak RSS, {label}: {memory[name]['peak_rss_bytes'] / 2**20:.1f} MiB "
              f"({memory[name]['rise_bytes'] / 2**20:.1f} MiB above the level before the call)")
    print(f"ratio (hour / 2 minutes): x{result['peak_rss_ratio_long_to_two_minutes']:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
