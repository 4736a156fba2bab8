"""Videos of any length (issue #15): streaming decoding, windows, spans mapped back to the video's seconds, joins
across window edges, the window recorded by training, and the short-video path unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import get_peft_model

from peft_vtg import VTGPromptConfig, ground
from peft_vtg.data import decode_video, iter_video_frames, preprocess_frames, sample_times, video_duration
from peft_vtg.heads.decoding import calibrated_spans, match_probabilities, merge_window_spans, window_starts
from peft_vtg.heads.task import VTGGroundingOutput
from tiny_models import LIGHT_COLOURS, tiny_clip, tiny_tokenizer, write_video

HEAD = dict(head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1, num_video_tokens=2,
            num_text_tokens=2)


# ---------------------------------------------------------------- windows and merging, by hand
def test_window_starts_cover_the_video_and_end_on_its_last_frame():
    assert window_starts(8, 8, 4) == [0]
    assert window_starts(5, 8, 4) == [0]
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(21, 8, 4) == [0, 4, 8, 12, 13]
    with pytest.raises(ValueError, match="must be >= 1"):
        window_starts(10, 0, 4)


def test_spans_cut_by_a_window_edge_are_joined_and_extended_over_several_windows():
    starts, frames = [0, 4, 8], 8  # windows [0, 7], [4, 11], [8, 15]
    per_window = [
        [(5, 7, 0.8), (1, 2, 0.5)],  # ends on window 0's last frame: open
        [(5, 11, 0.6), (8, 9, 0.3)],  # runs on past frame 7, and ends on window 1's last frame again
        [(9, 13, 0.4)],
    ]
    merged = {span[:2]: span[2] for span in merge_window_spans(per_window, starts, frames)}
    # (5, 7) + (5, 11): one (start, end), the better of the window's own span (0.6) and the join (min 0.8, 0.6)
    assert merged[(5, 11)] == pytest.approx(0.6)
    assert (5, 9) not in merged  # (8, 9) starts after (5, 7) ends: no overlap, no join
    assert merged[(5, 13)] == pytest.approx(0.4)  # (5, 11) extended into the third window: min(0.6, 0.4)
    assert len(merged) == 5 + 1  # every window's spans, and one new join
    # many windows whose spans all touch their edges: the joins stay few (no blow-up)
    many = [[(4 * w + 1, 4 * w + 7, 0.5 + 0.01 * k) for k in range(5)] for w in range(400)]
    assert len(merge_window_spans(many, [4 * w for w in range(400)], 8)) < 10 * 400


def test_calibration_ranks_a_window_without_the_moment_below_one_with_it():
    start, end = torch.tensor([0.0, 5.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 5.0, 0.0])
    inside = calibrated_spans(start, end, torch.full((4,), 6.0), top_k=1)[0]
    outside = calibrated_spans(start, end, torch.full((4,), -6.0), top_k=1)[0]
    assert inside[:2] == outside[:2] == (1, 2) and inside[2] > 100 * outside[2]
    assert calibrated_spans(start, end, None, top_k=2)[0][:2] == (1, 2)


def test_calibrated_score_is_span_probability_times_span_inside_times_window_presence_by_hand():
    start, end = torch.tensor([0.0, 3.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0, 0.0])
    # the same span logits and the same inside logits over the span (frames 1..2), other frames differ
    busy, quiet = torch.tensor([2.0, 4.0, 4.0, 2.0]), torch.tensor([-3.0, 4.0, 4.0, -3.0])
    p_span = float(torch.softmax(start, 0)[1] * torch.softmax(end, 0)[2])
    for inside in (busy, quiet):
        (i, j, score), = calibrated_spans(start, end, inside, top_k=1)
        probabilities = torch.sigmoid(inside)
        expected = p_span ** 0.5 * float(probabilities[1:3].mean()) * float(probabilities.mean()) ** 2
        assert (i, j) == (1, 2) and score == pytest.approx(expected, rel=1e-5)
        (_, _, plain), = calibrated_spans(start, end, inside, top_k=1, span_exponent=1.0, presence_exponent=0.0)
        assert plain == pytest.approx(p_span * float(probabilities[1:3].mean()), rel=1e-5)
    # a window that sees the moment over more of its frames ranks first, though its best span is the same
    assert calibrated_spans(start, end, busy, 1)[0][2] > calibrated_spans(start, end, quiet, 1)[0][2]
    for bad in (-1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="presence_exponent must be a number >= 0"):
            calibrated_spans(start, end, busy, 1, presence_exponent=bad)
        with pytest.raises(ValueError, match="span_exponent must be a number >= 0"):
            calibrated_spans(start, end, busy, 1, span_exponent=bad)


def test_a_matching_head_scales_each_window_by_its_match_probability():
    start, end = torch.tensor([0.0, 5.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 5.0, 0.0])
    plain = calibrated_spans(start, end, torch.full((4,), 6.0), top_k=1)[0]
    matched = calibrated_spans(start, end, torch.full((4,), 6.0), top_k=1, match_probability=0.25)[0]
    assert matched[:2] == plain[:2] and matched[2] == pytest.approx(0.25 * plain[2])
    # without inside logits the scores are probabilities too (not log-probabilities), so the two scale alike
    no_inside = calibrated_spans(start, end, None, top_k=1, match_probability=0.5)[0]
    assert 0 < no_inside[2] <= 0.5
    out = VTGGroundingOutput(start_logits=start[None], end_logits=end[None],
                             violet_vtm_logits=torch.tensor([0.0, 2.0]),
                             all_in_one_vtm_logits=torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    expected = torch.sigmoid(torch.tensor([0.0, 2.0]))  # softmax of (0, x)[1] is sigmoid(x): both heads agree here
    assert torch.allclose(match_probabilities(out), expected)
    assert match_probabilities(VTGGroundingOutput(start_logits=start[None], end_logits=end[None])) is None


# ---------------------------------------------------------------- streaming decode
@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """A 64 s video at 1 fps made of eight 8-second scenes; in scene k the light of colour k % 3 is on for a
    stretch; returns (path, list of (colour, start, end) per scene)."""
    pytest.importorskip("av")
    rng = np.random.default_rng(0)
    frames, scenes = [], []
    for k in range(8):
        colour = list(LIGHT_COLOURS)[k % 3]
        start = int(rng.integers(0, 5))
        end = int(rng.integers(start + 2, 9))
        scene = np.full((8, 32, 32, 3), 96, np.uint8)
        scene[start:end, :, :, LIGHT_COLOURS[colour]] = 255
        frames.append(scene)
        scenes.append((colour, 8 * k + start, 8 * k + end))
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_video(path, np.concatenate(frames), fps=1)
    return path, scenes


def test_streaming_decode_picks_the_frames_a_full_decode_picks(long_video):
    import av

    path, _ = long_video
    duration = video_duration(path)
    assert duration == pytest.approx(64.0, abs=1e-6)
    with av.open(str(path)) as container:  # the old way: every frame in memory, then a search
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(container.streams.video[0])]
    for count in (5, 64, 150):
        times = sample_times(duration, count)
        picks = np.clip(np.searchsorted([t for t, _ in decoded], times, side="right") - 1, 0, len(decoded) - 1)
        streamed = list(iter_video_frames(path, times))
        assert len(streamed) == count
        for frame, pick in zip(streamed, picks):
            assert torch.equal(frame, torch.from_numpy(decoded[pick][1]).permute(2, 0, 1))
    frames, seconds = decode_video(path, fps=0.5)
    assert frames.shape == (32, 3, 32, 32) and seconds == pytest.approx(64.0, abs=1e-6)
    with pytest.raises(ValueError, match="ascending"):
        list(iter_video_frames(path, [2.0, 1.0]))


# ---------------------------------------------------------------- grounding a long video
def windowed_model(seconds=8.0, frames=8):
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), VTGPromptConfig(predict_saliency=True, **HEAD)).eval()
    config = model.peft_config["default"]
    config.trained_window_frames, config.trained_window_seconds = frames, seconds
    return model


def test_each_window_sees_its_own_frames_and_spans_land_in_video_seconds(long_video):
    from peft_vtg.inference import _window_settings, _window_spans

    path, _ = long_video
    model = windowed_model()
    tuner, layer = model.base_model, model.base_model.model.vtg_prompts
    window = _window_settings(layer, tuner, None, 0.5, 3, None, None)  # 3 windows per forward: batches cross edges
    assert (window.frames, window.seconds) == (8, 8.0)
    queries = ["the red light turns on", "a green light"]
    total, starts, spans, saliency = _window_spans(tuner, path, queries, tiny_tokenizer(), 64.0, window, 32, None, 3,
                                                   None, None, True, True)
    per_window = spans[0]
    assert total == 64 and starts == list(range(0, 57, 4)) and len(per_window) == len(starts)
    assert len(saliency) == 2 and len(saliency[0]) == 64
    frames, _ = decode_video(path, num_frames=64)
    pixels = preprocess_frames(frames, image_size=32)
    text = tiny_tokenizer()(["the red light turns on"], return_tensors="pt")
    for w in (0, 5, len(starts) - 1):  # the first, one in the middle, the last
        start = starts[w]
        with torch.no_grad():
            out = model.forward_grounding(**text, pixel_values=pixels[start:start + 8].unsqueeze(0))
        expected = calibrated_spans(out.start_logits[0], out.end_logits[0], out.inside_logits[0], 3)
        got = [(first - start, last - start, score) for first, last, score in per_window[w]]
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], rel=1e-4)
        if w == 0:  # frames 0..3 are seen by window 0 only: their saliency is that window's
            torch.testing.assert_close(torch.tensor(saliency[0][:4]), out.saliency_logits[0, :4], atol=1e-4, rtol=1e-4)


def test_video_files_are_sampled_at_the_adapters_trained_frames_on_every_path(tmp_path):
    import argparse

    from peft_vtg.cli.common import video_setup
    from peft_vtg.inference import DEFAULT_NUM_FRAMES, default_num_frames, ground_queries

    model = windowed_model(seconds=100.0, frames=4)  # a 100-s window: the 8-s video below takes the single pass
    tokenizer, query = tiny_tokenizer(), "the red light turns on"
    short = tmp_path / "short.mp4"
    write_video(short, np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=1)
    assert default_num_frames(model) == 4
    expected = ground(model, str(short), query, tokenizer, image_size=32, num_frames=4)
    assert expected != ground(model, str(short), query, tokenizer, image_size=32, num_frames=DEFAULT_NUM_FRAMES)

    def same(got):  # batched rows: the same spans, scores equal up to float summation order
        assert [m[:2] for m in got] == [m[:2] for m in expected]
        assert [m[2] for m in got] == pytest.approx([m[2] for m in expected], rel=1e-5)

    # One video, a list of videos, many queries of one video (batch prediction): the same 4 frames.
    assert ground(model, str(short), query, tokenizer, image_size=32) == expected
    for got in ground(model, [str(short), str(short)], query, tokenizer, image_size=32):
        same(got)
    same(ground_queries(model, str(short), [query], tokenizer, image_size=32)[0])
    # The CLI's --video-dir (evaluate, train with a loaded adapter) samples what `ground` samples.
    flags = argparse.Namespace(cache_dir=None, features_dir=None, video_dir=str(tmp_path), num_frames=None, fps=None,
                               image_size=None, video_suffix=".mp4")
    source, num_frames, _ = video_setup(flags, model)
    assert num_frames == 4 and source.num_frames == 4
    assert video_setup(argparse.Namespace(**{**vars(flags), "num_frames": 6}), model)[1] == 6
    # An adapter that records no training (a new one): 32.
    model.peft_config["default"].trained_window_frames = None
    assert default_num_frames(model) == DEFAULT_NUM_FRAMES == video_setup(flags, model)[1]


def test_ground_returns_moments_of_the_whole_video_and_leaves_short_videos_alone(long_video, tmp_path):
    path, scenes = long_video
    model = windowed_model()
    tokenizer = tiny_tokenizer()
    moments = ground(model, str(path), "the red light turns on", tokenizer, image_size=32, top_k=5)
    assert 1 <= len(moments) <= 5 and moments == sorted(moments, key=lambda m: -m[2])
    assert all(0 <= start < end <= 64.0 for start, end, _ in moments)
    result = ground(model, str(path), "the red light turns on", tokenizer, image_size=32, return_saliency=True)
    assert len(result.saliency) == 32 and result.saliency[-1][:2] == (62.0, 64.0)
    # A long video among short ones: each takes its own path, answers come back in the caller's order.
    short = tmp_path / "short.mp4"
    write_video(short, np.full((8, 32, 32, 3), 96, np.uint8), fps=1)
    both = ground(model, [str(short), str(path)], "the red light turns on", tokenizer, image_size=32, num_frames=8)
    assert both[1] == ground(model, str(path), "the red light turns on", tokenizer, image_size=32, num_frames=8)
    # The short video: the single pass, exactly as for an adapter that records no window.
    plain = windowed_model()
    plain.peft_config["default"].trained_window_seconds = None
    alone = ground(plain, str(short), "the red light turns on", tokenizer, image_size=32, num_frames=8)
    assert both[0] == alone
    # Windowing off for a long video: one pass over 8 frames of the whole hour... of the whole 64 s.
    assert len(ground(plain, str(path), "the red light turns on", tokenizer, image_size=32, num_frames=8)) <= 5
    with pytest.raises(ValueError, match=r"window_overlap must be a fraction in \[0, 1\)"):
        ground(model, str(path), "the red light", tokenizer, window_overlap=1.0)
    with pytest.raises(ValueError, match="window_seconds"):
        ground(model, str(path), "the red light", tokenizer, window_seconds=-1.0)


def test_training_records_the_window_the_adapter_saw(tmp_path):
    from peft_vtg.data import GroundingCollator
    from peft_vtg.training import VTGTrainingArguments, train
    from test_cache import Frames, rows

    model = get_peft_model(tiny_clip(), VTGPromptConfig(**HEAD))
    data = [{**row, "duration": 8.0 + i} for i, row in enumerate(rows(5))]  # median 10 s
    args = VTGTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2,
                                disable_tqdm=True)
    train(model, data, GroundingCollator(tiny_tokenizer(), Frames()), args)
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert (saved["trained_window_frames"], saved["trained_window_seconds"]) == (4, 10.0)  # Frames: 4 per video


# ---------------------------------------------------------------- batch prediction
@pytest.fixture(scope="module")
def batch_workspace(tmp_path_factory, long_video):
    """The coloured-light workspace (6 short videos), the long video among them, an adapter that records an 8-s
    window, and a query file with two queries per video."""
    import shutil

    from tiny_models import write_light_workspace

    root = tmp_path_factory.mktemp("batch")
    torch.manual_seed(0)
    write_light_workspace(root, tiny_clip(), num_videos=3)
    shutil.copy(long_video[0], root / "videos" / "long.mp4")
    from transformers import AutoModel

    model = get_peft_model(AutoModel.from_pretrained(root / "base"), VTGPromptConfig(**HEAD))
    config = model.peft_config["default"]
    config.trained_window_frames, config.trained_window_seconds = 8, 8.0
    model.save_pretrained(root / "adapter")
    queries = [{"qid": f"{vid}-{k}", "vid": vid, "query": f"the {colour} light turns on"}
               for vid in ("v0", "long", "v1", "v2") for k, colour in enumerate(("red", "green"))]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


def test_ground_queries_encodes_a_video_once_for_all_its_queries(batch_workspace):
    from peft import PeftModel
    from transformers import AutoModel

    from peft_vtg import ground_queries

    root = batch_workspace
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), root / "adapter")
    calls = []
    model.get_base_model().vision_model.register_forward_pre_hook(lambda *a: calls.append(1))
    queries = ["the red light turns on", "the green light turns on", "a blue light"]
    results = ground_queries(model, str(root / "videos" / "v0.mp4"), queries, tiny_tokenizer(), image_size=32)
    assert len(calls) == 1 and len(results) == 3  # one encoder pass, three answers
    # each answer is what grounding the query alone gives (to float rounding of the batched head)
    for query, moments in zip(queries, results):
        alone = ground_queries(model, str(root / "videos" / "v0.mp4"), [query], tiny_tokenizer(), image_size=32)[0]
        assert [m[:2] for m in moments] == [m[:2] for m in alone]
        assert [m[2] for m in moments] == pytest.approx([m[2] for m in alone], rel=1e-4)
    calls.clear()
    long = ground_queries(model, str(root / "videos" / "long.mp4"), queries, tiny_tokenizer(), image_size=32)
    assert len(long) == 3 and len(calls) == 2  # 15 windows in batches of 8: two encoder passes for all queries


def test_a_frame_size_the_encoder_cannot_take_is_named_before_the_encoder_runs(batch_workspace, capsys):
    from peft import PeftModel
    from transformers import AutoModel

    from peft_vtg.cli import main

    root = batch_workspace
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), root / "adapter")
    video = str(root / "videos" / "v0.mp4")
    for path in (video, str(root / "videos" / "long.mp4")):  # the single pass and the window-by-window one
        with pytest.raises(ValueError, match=r"image_size=64, but the video encoder takes 32-pixel frames"):
            ground(model, path, "the red light", tiny_tokenizer(), image_size=64)
    assert len(ground(model, video, "the red light", tiny_tokenizer(), image_size=32)) >= 1
    frames = preprocess_frames(decode_video(video, num_frames=8)[0], image_size=64)  # (8, 3, 64, 64)
    with pytest.raises(ValueError, match=r"frames of 64x64 pixels.*preprocess_frames\(frames, image_size=32\)"):
        ground(model, frames, "the red light", tiny_tokenizer(), duration=8.0)
    flags = ["--adapter", str(root / "adapter"), "--image-size", "64"]
    for argv in (["predict", *flags, "--video", video, "--query", "the red light"],
                 ["predict", *flags, "--videos", str(root / "videos"), "--queries", str(root / "queries.jsonl"),
                  "--output", str(root / "never.jsonl")],
                 ["evaluate", *flags, "--annotations", str(root / "ann.jsonl"), "--video-dir", str(root / "videos")]):
        assert main(argv) == 2, argv[0]
        assert "--image-size=64, but the video encoder takes 32-pixel frames" in capsys.readouterr().err, argv
    assert not (root / "never.jsonl").exists()


def test_queries_the_text_encoder_cannot_take_are_named_before_any_video(batch_workspace, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModel

    from peft_vtg.cli import main
    from peft_vtg.data import GroundingCollator, VideoFiles

    root = batch_workspace
    long_query = " ".join(["red"] * 25)  # 27 tokens with BOS and EOS; the tiny CLIP holds 24 positions, 2 prompts
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"qid": "short", "vid": "v0", "query": "the red light"}) + "\n"
                       + json.dumps({"qid": "long", "vid": "v1", "query": long_query}) + "\n")
    batch = ["predict", "--adapter", str(root / "adapter"), "--videos", str(root / "videos"), "--queries",
             str(queries), "--image-size", "32", "--disable-tqdm", "--output", str(tmp_path / "preds.jsonl")]
    assert main(batch) == 2
    err = capsys.readouterr().err
    assert "max_position_embeddings=24, of which 2 for the text prompts: 22 tokens per query): qid long (27)" in err
    assert "--max-text-length 22" in err and not (tmp_path / "preds.jsonl").exists()  # not after the first video
    assert main([*batch, "--max-text-length", "22"]) == 0
    assert len((tmp_path / "preds.jsonl").read_text().splitlines()) == 2
    single = ["predict", "--adapter", str(root / "adapter"), "--video", str(root / "videos" / "v0.mp4"), "--query",
              long_query, "--image-size", "32"]
    assert main(single) == 2 and "--query (27)" in capsys.readouterr().err
    assert main([*single, "--max-text-length", "22"]) == 0
    capsys.readouterr()
    # A length that leaves no room for a word was ignored by the tokenizer (1) or grounded nothing (2).
    assert main([*single, "--max-text-length", "2"]) == 2
    assert "--max-text-length=2 leaves no room for a word: the tokenizer adds 2 special token(s)" in \
        capsys.readouterr().err
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), root / "adapter")
    with pytest.raises(ValueError, match="max_text_length=1 leaves no room for a word"):
        ground(model, str(root / "videos" / "v0.mp4"), long_query, tiny_tokenizer(), max_text_length=1)
    with pytest.raises(ValueError, match="max_text_length=2 leaves no room for a word"):
        GroundingCollator(tiny_tokenizer(), VideoFiles(root / "videos", num_frames=8), max_text_length=2)
    # evaluate checks its annotation file's queries the same way, before the model sees a video
    annotations = [json.loads(line) for line in (root / "ann.jsonl").read_text().splitlines()]
    annotations[-1]["query"] = long_query
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(row) + "\n" for row in annotations))
    assert main(["evaluate", "--adapter", str(root / "adapter"), "--annotations", str(tmp_path / "ann.jsonl"),
                 "--video-dir", str(root / "videos"), "--image-size", "32"]) == 2
    assert f"qid {annotations[-1]['qid']} (27)" in capsys.readouterr().err


def test_batch_prediction_writes_submission_lines_and_resumes_after_a_kill(batch_workspace, tmp_path, capsys,
                                                                          monkeypatch):
    from peft_vtg.cli import main

    root = batch_workspace
    command = ["predict", "--adapter", str(root / "adapter"), "--videos", str(root / "videos"), "--queries",
               str(root / "queries.jsonl"), "--image-size", "32", "--disable-tqdm"]
    assert main([*command, "--output", str(tmp_path / "whole.jsonl")]) == 0
    assert "wrote 8 predictions for 4 videos" in capsys.readouterr().out
    whole = (tmp_path / "whole.jsonl").read_text().splitlines()
    assert [json.loads(line)["qid"] for line in whole] == [f"{v}-{k}" for v in ("v0", "long", "v1", "v2")
                                                           for k in (0, 1)]
    assert all(len(json.loads(line)["pred_relevant_windows"]) >= 1 for line in whole)
    # A run killed while writing the third video's lines: two videos done, half a line after them.
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(whole[:4]) + "\n" + whole[4][: len(whole[4]) // 2])
    assert main([*command, "--output", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 predictions for 2 videos" in out and "(4 already there)" in out
    assert partial.read_text().splitlines() == whole
    assert main([*command, "--output", str(partial)]) == 0  # nothing left to do
    assert "wrote 0 predictions for 0 videos" in capsys.readouterr().out
    # The run is recorded beside the output; a resume with another adapter or other settings is refused before the
    # file is touched (it would mix two runs' lines), and the same run resumes.
    record = json.loads((tmp_path / "whole.jsonl.run.json").read_text())
    assert [a["name"] for a in record["adapters"]] == ["default"] and len(record["adapters"][0]["sha256"]) == 64
    assert record["settings"]["top_k"] == 5 and record["settings"]["image_size"] == 32
    from peft import PeftModel
    from transformers import AutoModel

    other = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), root / "adapter")
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if "span_head" in n or "grounding" in n).add_(0.01)
    other.save_pretrained(tmp_path / "other-adapter")
    cut = "\n".join(whole[:4]) + "\n" + whole[4][:10]
    (tmp_path / "cut.jsonl").write_text(cut)
    (tmp_path / "cut.jsonl.run.json").write_text((tmp_path / "whole.jsonl.run.json").read_text())
    for changed, message in (([*command[:2], str(tmp_path / "other-adapter"), *command[3:]], "adapters: file default"),
                             ([*command, "--top-k", "3"], "top_k: file 5, now 3"),
                             ([*command, "--num-frames", "4"], "num_frames: file 8, now 4")):
        assert main([*changed, "--output", str(tmp_path / "cut.jsonl")]) == 2, message
        err = capsys.readouterr().err
        assert "holds predictions of another run" in err and message in err, err
        assert (tmp_path / "cut.jsonl").read_text() == cut
    # the same run in other words: the encoder's frame size left out, the adapter's trained frames given
    same = [*command[:-3], "--disable-tqdm", "--num-frames", "8"]
    assert main([*same, "--output", str(tmp_path / "cut.jsonl")]) == 0
    assert (tmp_path / "cut.jsonl").read_text().splitlines() == whole
    assert "cannot check" not in capsys.readouterr().err
    # scored like any submission
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps({"qid": json.loads(line)["qid"], "duration": 64, "windows": [[0, 8]]}) + "\n"
                             for line in whole))
    assert main(["score", "--predictions", str(partial), "--ground-truth", str(truth), "--json"]) == 0
    capsys.readouterr()
    # A list file's relative paths are relative to the list file, whatever the working directory.
    (root / "list.txt").write_text("".join(f"videos/{vid}.mp4\n" for vid in ("v0", "long", "v1", "v2")))
    monkeypatch.chdir(tmp_path)
    assert main([*command[:4], str(root / "list.txt"), *command[5:], "--output", str(tmp_path / "listed.jsonl")]) == 0
    assert (tmp_path / "listed.jsonl").read_text().splitlines() == whole
    capsys.readouterr()
    # bad input fails before anything is written
    (tmp_path / "few.txt").write_text(str(root / "videos" / "v0.mp4") + "\n")
    assert main([*command[:4], str(tmp_path / "few.txt"), *command[5:], "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "3 queried video(s) have no file listed in" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    assert main([*command, "--output", str(tmp_path / "y.jsonl"), "--video", "a.mp4"]) == 2
    assert "drop --video" in capsys.readouterr().err
    (tmp_path / "other.jsonl").write_text("not json\n")
    assert main([*command, "--output", str(tmp_path / "other.jsonl")]) == 2
    assert "is not a prediction line" in capsys.readouterr().err
    # Files a resume must not append to, each left byte for byte as it was: the queries file itself (its last line
    # unterminated, which a resume would cut as a killed write), ground truth (lines with a qid but no prediction),
    # and the output of a run over other queries or other query texts.
    queries_text = (root / "queries.jsonl").read_text().rstrip("\n")
    foreign = whole[0].replace('"v0-0"', '"elsewhere-0"')
    retexted = json.dumps({**json.loads(whole[0]), "query": "another sentence"})
    cases = {"queries.jsonl": (queries_text, "is the --queries file"),
             "truth.jsonl": (truth.read_text(), "is not a prediction line (qid and pred_relevant_windows)"),
             "foreign.jsonl": (foreign + "\n", "a qid the queries do not hold ('elsewhere-0')"),
             "retexted.jsonl": (retexted + "\n", "another query text for this qid")}
    for name, (text, message) in cases.items():
        path = tmp_path / "resume" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        queries = path if name == "queries.jsonl" else root / "queries.jsonl"
        assert main([*command[:6], str(queries), *command[7:], "--output", str(path)]) == 2, name
        assert message in capsys.readouterr().err, name
        assert path.read_text() == text, name


def test_long_rows_warn_when_their_annotated_duration_is_not_the_files(batch_workspace):
    from peft import PeftModel
    from transformers import AutoModel

    from peft_vtg.batch_predict import ground_rows_by_video

    root = batch_workspace
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), root / "adapter")
    rows = [{"qid": "q", "vid": "long", "query": "the red light", "duration": 8.0}]
    with pytest.warns(UserWarning, match=r"'long' \(annotated 8.00 s, file 64.\d+ s\)"):
        items = ground_rows_by_video(model, tiny_tokenizer(), rows, {"long": str(root / "videos" / "long.mp4")},
                                     image_size=32, disable_tqdm=True)
    assert [qid for qid, _, _ in items] == ["q"]


def test_evaluate_grounds_long_videos_window_by_window(batch_workspace, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModel

    from peft_vtg import ground_queries
    from peft_vtg.cli import main

    root = batch_workspace
    lines = [json.loads(line) for line in (root / "ann.jsonl").read_text().splitlines()]
    lines += [{"qid": f"long-{k}", "vid": "long", "query": f"the {colour} light turns on", "duration": 64.0,
               "relevant_windows": [[8.0 * k, 8.0 * k + 4]]} for k, colour in enumerate(("red", "green"))]
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = ["evaluate", "--adapter", str(root / "adapter"), "--annotations", str(tmp_path / "ann.jsonl"),
               "--video-dir", str(root / "videos"), "--image-size", "32", "--num-frames", "8", "--json"]
    assert main([*command, "--predictions-out", str(tmp_path / "preds.jsonl")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_queries"] == 5
    predicted = {json.loads(line)["qid"]: json.loads(line)
                 for line in (tmp_path / "preds.jsonl").read_text().splitlines()}
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), root / "adapter")
    # the long video's queries: what windowed grounding of the file gives (its moments reach past the first window)
    windowed = ground_queries(model, str(root / "videos" / "long.mp4"), ["the red light turns on",
                              "the green light turns on"], tiny_tokenizer(), image_size=32, num_frames=8, top_k=10)
    for k in range(2):
        got = [t for w in predicted[f"long-{k}"]["pred_relevant_windows"] for t in w[:2]]
        assert got == pytest.approx([t for m in windowed[k] for t in m[:2]], abs=1e-4)
    assert max(w[1] for w in predicted["long-0"]["pred_relevant_windows"]) > 12.0
    # the short videos: the batched single pass, as before (same numbers as without the long rows)
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[:3]))
    short = [*command[:4], str(tmp_path / "short.jsonl"), *command[5:]]
    assert main([*short, "--predictions-out", str(tmp_path / "short_preds.jsonl")]) == 0
    capsys.readouterr()
    for line in (tmp_path / "short_preds.jsonl").read_text().splitlines():
        entry = json.loads(line)
        flat = [t for w in entry["pred_relevant_windows"] for t in w]
        assert flat == pytest.approx([t for w in predicted[entry["qid"]]["pred_relevant_windows"] for t in w])
    # windowing off (a window longer than the video): the long video in one pass, other answers
    assert main([*command, "--window-seconds", "100", "--predictions-out", str(tmp_path / "one.jsonl")]) == 0
    capsys.readouterr()
    one_pass = {json.loads(line)["qid"]: json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()}
    assert one_pass["long-0"]["pred_relevant_windows"] != predicted["long-0"]["pred_relevant_windows"]


def test_evaluate_on_two_processes_equals_one(batch_workspace, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m peft_vtg evaluate` (CPU, gloo): the short videos' batches
    sharded, the long videos split between the processes and gathered; the same predictions as one process, for
    one adapter and for an ensemble of two."""
    import shutil
    import sys

    from test_training import free_port, run

    root = batch_workspace
    shutil.copytree(root / "adapter", tmp_path / "adapter_copy")
    lines = [json.loads(line) for line in (root / "ann.jsonl").read_text().splitlines()]
    lines += [{"qid": f"long-{k}", "vid": "long", "query": f"the {colour} light turns on", "duration": 64.0,
               "relevant_windows": [[8.0 * k, 8.0 * k + 4]]} for k, colour in enumerate(("red", "green", "blue"))]
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    flags = ["evaluate", "--annotations", str(tmp_path / "ann.jsonl"), "--video-dir", str(root / "videos"),
             "--image-size", "32", "--num-frames", "8", "--batch-size", "2", "--json"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "peft_vtg"]
    for name, adapters in (("single", [root / "adapter"]), ("ensemble", [root / "adapter", tmp_path / "adapter_copy"])):
        adapter_flags = [flag for adapter in adapters for flag in ("--adapter", str(adapter))]
        run([sys.executable, "-m", "peft_vtg", *flags, *adapter_flags, "--predictions-out",
             str(tmp_path / "one.jsonl")])
        run([*launch, *flags, *adapter_flags, "--predictions-out", str(tmp_path / "two.jsonl")], ACCELERATE_USE_CPU="1")
        one, two = ({json.loads(line)["qid"]: json.loads(line)["pred_relevant_windows"]
                     for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()} for n in ("one", "two"))
        assert sorted(one) == sorted(two) and len(one) == 6, name
        for qid in one:
            assert [t for w in two[qid] for t in w] == pytest.approx([t for w in one[qid] for t in w], abs=1e-5)


# ---------------------------------------------------------------- features for your own videos
@pytest.mark.parametrize("arch", ["clip", "siglip", "x_clip"])
def test_extracted_features_equal_encode_video(arch, tmp_path):
    from peft_vtg.data import FeatureDirectory
    from peft_vtg.extract import extract_features
    from test_cache import Frames, base

    model = base(arch)
    frames = Frames()
    manifest = extract_features(model, ["v0", "v1"], frames, str(tmp_path), disable_tqdm=True)
    assert manifest["complete"] and sorted(manifest["videos"]) == ["v0", "v1"]
    from peft_vtg.injection import bind_architecture

    bound = bind_architecture(model)
    with torch.no_grad():  # the reference: the architecture's own per-frame features, as encode_video computes them
        expected = bound.spec.features.video_frames(bound.root, frames("v1").unsqueeze(0))[0]
    extracted = torch.from_numpy(np.asarray(FeatureDirectory(tmp_path)("v1")))
    torch.testing.assert_close(extracted, expected, atol=1e-5, rtol=1e-5)
    assert manifest["feature_size"] == expected.shape[-1]


def test_extract_cli_formats_resume_and_mismatch(batch_workspace, tmp_path, capsys):
    from peft_vtg.cli import main

    import shutil

    root = tmp_path / "workspace"  # a copy: a folder is added among the videos
    shutil.copytree(batch_workspace / "videos", root / "videos")
    (root / "videos" / "clips.mp4").mkdir()  # a folder named like a video is not one
    (root / "base").symlink_to(batch_workspace / "base")
    common = ["extract", "--base-model", str(root / "base"), "--video-dir", str(root / "videos"), "--image-size", "32",
              "--disable-tqdm"]
    assert main([*common, "--num-frames", "8", "--output-dir", str(tmp_path / "npy")]) == 0
    assert "features of 4 videos" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "npy").iterdir()) == ["long.npy", "manifest.json", "v0.npy", "v1.npy",
                                                                    "v2.npy"]
    assert np.load(tmp_path / "npy" / "v0.npy").shape == (8, 48)
    stamp = (tmp_path / "npy" / "v0.npy").stat().st_mtime_ns
    # what kills leave behind: our own temporary, and the one safetensors' save_file writes through
    (tmp_path / "npy" / "v1.npy.tmp-4242").write_bytes(b"half")
    (tmp_path / "npy" / ".tmpQ3xZ9a").write_bytes(b"half")
    assert main([*common, "--num-frames", "8", "--output-dir", str(tmp_path / "npy")]) == 0  # done: nothing redone
    assert (tmp_path / "npy" / "v0.npy").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "npy").iterdir()) == ["long.npy", "manifest.json", "v0.npy", "v1.npy",
                                                                    "v2.npy"]
    capsys.readouterr()
    assert main([*common, "--num-frames", "4", "--output-dir", str(tmp_path / "npy")]) == 2
    assert "other settings (num_frames: features 8, now 4)" in capsys.readouterr().err
    assert main([*common, "--format", "moment_detr", "--output-dir", str(tmp_path / "mdetr")]) == 0
    with np.load(tmp_path / "mdetr" / "long.npz") as archive:
        assert list(archive.keys()) == ["features"] and archive["features"].shape == (32, 48)  # 64 s / 2 s
    capsys.readouterr()
    assert main([*common, "--format", "moment_detr", "--fps", "1", "--output-dir", str(tmp_path / "x")]) == 2
    assert "one feature per 2-second clip" in capsys.readouterr().err
    # A frame size the encoder cannot take is refused by its flag before anything is written.
    wrong = [*common[:-3], "--image-size", "64", "--disable-tqdm", "--num-frames", "8"]
    assert main([*wrong, "--output-dir", str(tmp_path / "retry")]) == 2
    assert "--image-size=64, but the video encoder takes 32-pixel frames" in capsys.readouterr().err
    assert not (tmp_path / "retry").exists()
    # A first run that wrote no video (killed, or failed on its first video) does not block a rerun with other
    # settings; a manifest that is damaged or not ours is an error naming it, not a traceback.
    assert main([*common, "--num-frames", "4", "--output-dir", str(tmp_path / "retry")]) == 0
    manifest = json.loads((tmp_path / "retry" / "manifest.json").read_text())
    for vid in manifest["videos"]:
        (tmp_path / "retry" / f"{vid}.npy").unlink()
    (tmp_path / "retry" / "manifest.json").write_text(json.dumps({**manifest, "videos": {}, "complete": False}))
    capsys.readouterr()
    assert main([*common, "--num-frames", "8", "--output-dir", str(tmp_path / "retry")]) == 0
    assert "features of 4 videos" in capsys.readouterr().out
    assert json.loads((tmp_path / "retry" / "manifest.json").read_text())["num_frames"] == 8
    for name, text, message in (("list", "[1, 2]", "is not a peft_vtg feature manifest"),
                                ("broken", '{"format": "peft_vtg', "manifest.json is not readable JSON")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
        assert main([*common, "--num-frames", "8", "--output-dir", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- training on long-video windows
def _marked_videos(durations):
    """Feature 'videos' whose frame k of video i is [i, k, 1 if inside the row's moment else 0, 0]: every frame of a
    clip says where it came from. One row per video, its moment [2, 4] s; video i has 2 frames per second."""
    videos, rows = {}, []
    for i, duration in enumerate(durations):
        frames = int(duration * 2)
        times = (torch.arange(frames) + 0.5) / 2
        inside = ((times >= 2.0) & (times < 4.0)).float()
        videos[f"v{i}"] = torch.stack([torch.full((frames,), float(i)), torch.arange(frames).float(), inside,
                                       torch.zeros(frames)], dim=1)
        rows.append({"qid": f"q{i}", "vid": f"v{i}", "query": "the red light turns on", "duration": float(duration),
                     "windows": [[2.0, 4.0]]})
    return videos, rows


def test_window_collator_cuts_windows_that_hold_or_miss_the_moment_from_videos_side_by_side():
    from peft_vtg.data import LongVideoWindowCollator

    videos, rows = _marked_videos([10.0, 6.0, 8.0, 12.0, 9.0])
    source = videos.__getitem__
    torch.manual_seed(0)
    holding = LongVideoWindowCollator(tiny_tokenizer(), source, rows, window_frames=8, window_seconds=8.0,
                                      window_fraction=1.0, absent_fraction=0.0)
    copies = [{**row, "qid": f"{row['qid']}-{k}"} for k in range(8) for row in rows]  # row i shows video i % 5
    batch = holding(copies)
    assert batch["video_features"].shape == (40, 8, 4) and bool(batch["moment_present"].all())
    assert batch["duration"].tolist() == [8.0] * 40  # a window lasts window_seconds, whatever the video
    for i, clip in enumerate(batch["video_features"]):
        own = clip[:, 0] == i % 5
        marked = (clip[:, 2] == 1) & own  # frames of the row's own moment
        start, end = int(batch["start_frames"][i]), int(batch["end_frames"][i])
        # The whole moment (2 s at 1 frame a second: 2 frames) is in the window, and the labels cover it (the
        # frames its seconds touch: one more when it starts mid-frame).
        assert int(marked.sum()) == 2 and set(marked.nonzero().flatten().tolist()) <= set(range(start, end + 1))
        assert end - start + 1 <= 3
        # One stream in time order: from frame to frame a video goes on (a later frame, at the window's rate of 1
        # per second: 2 frames on), or the next video starts (a neighbour may be drawn twice in a row).
        for (vid, index), (next_vid, next_index) in zip(clip[:-1, :2].tolist(), clip[1:, :2].tolist()):
            assert (next_vid == vid and next_index == index + 2) or next_index <= 1, clip[:, :2].tolist()
    assert sum(len(clip[:, 0].unique()) > 1 for clip in batch["video_features"]) > 20

    missing = LongVideoWindowCollator(tiny_tokenizer(), source, rows, window_frames=8, window_seconds=8.0,
                                      window_fraction=1.0, absent_fraction=1.0)
    batch = missing(copies)
    assert not bool(batch["moment_present"].any()) and batch["windows"] == [[]] * 40
    for i, clip in enumerate(batch["video_features"]):
        assert not bool(((clip[:, 2] == 1) & (clip[:, 0] == i % 5)).any())  # no frame of the row's own moment
    # Hard negatives: a good share of the windows show the row's own video elsewhere than its moment.
    assert sum(bool((clip[:, 0] == i % 5).any()) for i, clip in enumerate(batch["video_features"])) > 10

    # Each row's draw depends on (seed, epoch, qid) only: not on its batch, its position or earlier draws (so a
    # resumed run, a loader that fetches ahead and each process of a DDP run draw the same windows).
    mixed = LongVideoWindowCollator(tiny_tokenizer(), source, rows, window_frames=8, window_seconds=8.0,
                                    window_fraction=0.7, seed=5)
    first = mixed(copies)
    torch.manual_seed(123)
    again = mixed(list(reversed(copies[20:])) + copies[:20])
    order = list(reversed(range(20, 40))) + list(range(20))
    assert torch.equal(again["video_features"], first["video_features"][order])
    assert again["moment_present"].tolist() == first["moment_present"][order].tolist()
    mixed.set_epoch(1)
    assert not torch.equal(mixed(copies)["video_features"], first["video_features"])  # a new epoch, new windows

    whole = LongVideoWindowCollator(tiny_tokenizer(), source, rows, window_frames=4, window_fraction=0.0)
    batch = whole(rows)
    assert bool(batch["moment_present"].all()) and batch["duration"].tolist() == [r["duration"] for r in rows]
    # Bin centres of each whole video, as GroundingCollator with a frame source sampled to 4 frames.
    expected = [((torch.arange(4) + 0.5) * len(videos[r["vid"]]) / 4).long().tolist() for r in rows]
    assert batch["video_features"][:, :, 1].long().tolist() == expected
    assert whole.window_seconds == 9.0  # the median duration


def test_window_collator_errors_name_the_argument():
    from peft_vtg.data import LongVideoWindowCollator

    videos, rows = _marked_videos([10.0, 6.0])
    for kwargs, message in ((dict(window_fraction=1.5), "window_fraction must be a fraction"),
                            (dict(absent_fraction=-0.1), "absent_fraction must be a fraction"),
                            (dict(window_seconds=0), "window_seconds must be a number of seconds > 0"),
                            (dict(window_frames=0), "num_frames")):
        with pytest.raises(ValueError, match=message):
            LongVideoWindowCollator(tiny_tokenizer(), videos.__getitem__, rows, **{"window_frames": 4, **kwargs})
    with pytest.raises(ValueError, match="at least 2 videos"):
        LongVideoWindowCollator(tiny_tokenizer(), videos.__getitem__, rows[:1], window_frames=4)


def test_a_window_without_its_moment_trains_every_frame_towards_not_inside():
    from peft_vtg.heads import grounding_loss

    torch.manual_seed(0)
    start, end, inside = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.long)
    first, last = torch.tensor([1, 99, 0]), torch.tensor([2, -7, 4])  # row 1's labels are placeholders
    present = torch.tensor([True, False, True])
    terms = grounding_loss(start, end, inside, mask, first, last, moment_present=present)
    keep = present.nonzero().flatten()
    alone = grounding_loss(start[keep], end[keep], inside[keep], mask[keep], first[keep], last[keep])
    assert terms["start_loss"] == pytest.approx(float(alone["start_loss"]))  # absent rows add no span term
    assert terms["end_loss"] == pytest.approx(float(alone["end_loss"]))
    targets = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(inside, targets)
    assert terms["inside_loss"] == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="outside its video"):  # present rows' labels are still checked
        grounding_loss(start, end, inside, mask, first, last, moment_present=torch.tensor([True, True, True]))
    start.requires_grad_(True)
    nothing = grounding_loss(start, end, inside, mask, first, last, moment_present=torch.zeros(3, dtype=torch.bool))
    assert float(nothing["start_loss"].detach()) == 0.0
    nothing["loss"].backward()  # a batch without any moment still trains (the inside term) and has a graph
    assert float(start.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="one flag per row"):
        grounding_loss(start, end, inside, mask, first, last, moment_present=torch.ones(2, dtype=torch.bool))


def test_training_on_windows_evaluates_whole_videos_and_records_the_window(tmp_path):
    from peft_vtg.data import LongVideoWindowCollator
    from peft_vtg.training import VTGTrainingArguments, train
    from test_cache import Frames, rows

    model = get_peft_model(tiny_clip(), VTGPromptConfig(**HEAD))
    data = [{**row, "duration": 8.0 + i} for i, row in enumerate(rows(5))]
    collator = LongVideoWindowCollator(tiny_tokenizer(), Frames(), data, window_frames=4, window_fraction=1.0)
    seen = []
    evaluation = collator.for_evaluation()
    collator.for_evaluation = lambda: (lambda batch: seen.append(evaluation(batch)) or seen[-1])
    args = VTGTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                eval_steps=2, disable_tqdm=True)
    result = train(model, data, collator, args, eval_dataset=data)
    assert all(step["loss"] == step["loss"] for step in result.history if "loss" in step)  # finite, not NaN
    assert seen and all("moment_present" not in batch for batch in seen)
    assert [d.item() for batch in seen for d in batch["duration"]] == [row["duration"] for row in data]
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert (saved["trained_window_frames"], saved["trained_window_seconds"]) == (4, 10.0)


def test_one_run_per_output_and_what_a_killed_run_leaves_is_cleaned(batch_workspace, tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys

    from peft_vtg.cli import main

    root = batch_workspace
    output = tmp_path / "preds.jsonl"
    predict = ["predict", "--adapter", str(root / "adapter"), "--videos", str(root / "videos"), "--queries",
               str(root / "queries.jsonl"), "--image-size", "32", "--disable-tqdm", "--output", str(output)]
    extract = ["extract", "--base-model", str(root / "base"), "--video-dir", str(root / "videos"), "--image-size",
               "32", "--disable-tqdm", "--num-frames", "4", "--output-dir", str(tmp_path / "feats")]
    cache = ["cache", "--base-model", str(root / "base"), "--annotations", str(root / "ann.jsonl"), "--video-dir",
             str(root / "videos"), "--num-frames", "4", "--image-size", "32", "--layer", "1", "--disable-tqdm",
             "--output-dir", str(tmp_path / "cache")]
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = json.dumps({"pid": owner.pid, "hostname": socket.gethostname(), "started": "2026-01-01T00:00:00"})
    try:  # a live run holds each output: a second is refused at once, naming it, and writes nothing
        (tmp_path / ".preds.jsonl.lock").write_text(lock)
        for directory, name in (("feats", ".peft-vtg-extract.lock"), ("cache", ".peft-vtg-cache.lock")):
            (tmp_path / directory).mkdir()
            (tmp_path / directory / name).write_text(lock)
        for argv, what in ((predict, "predict run"), (extract, "extract run"), (cache, "cache build")):
            assert main(argv) == 2, what
            err = capsys.readouterr().err
            assert f"is in use by another {what} (pid {owner.pid}" in err and "Traceback" not in err, err
        assert not output.exists() and sorted(os.listdir(tmp_path / "feats")) == [".peft-vtg-extract.lock"]
    finally:
        owner.kill()
        owner.wait()
    # The owner is gone: its locks are stale, taken over, and released at the end.
    assert main(predict) == 0 and main(extract) == 0 and main(cache) == 0
    capsys.readouterr()
    assert not (tmp_path / ".preds.jsonl.lock").exists() and not (tmp_path / "feats" / ".peft-vtg-extract.lock").exists()
    whole = output.read_text()
    # What a file written by two runs at once (before this lock) and a killed atomic write leave: repaired on rerun.
    lines = whole.splitlines()
    output.write_text("\n".join(lines[:3] + lines[1:3] + lines[3:]) + "\n")
    (tmp_path / "preds.jsonl.tmp-4242").write_text(whole)
    (tmp_path / "preds.jsonl.run.json.tmp-77").write_text("{")
    (tmp_path / "other.jsonl.tmp-5").write_text("not ours")
    assert main(predict) == 0
    assert "held 2 repeated prediction line(s)" in capsys.readouterr().err
    assert output.read_text() == whole
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == ["other.jsonl.tmp-5"]
    # extract: a run killed before listing its files, rerun with another format, leaves none of the old files behind
    manifest = json.loads((tmp_path / "feats" / "manifest.json").read_text())
    (tmp_path / "feats" / "manifest.json").write_text(json.dumps({**manifest, "videos": {}, "complete": False}))
    assert main([*extract, "--format", "safetensors"]) == 0
    capsys.readouterr()
    assert not [p for p in (tmp_path / "feats").iterdir() if p.suffix == ".npy"]


def test_predict_and_extract_refuse_a_multi_process_launch_before_writing(batch_workspace, tmp_path, capsys,
                                                                          monkeypatch):
    # Under `accelerate launch --num_processes 2` each copy did all of the work and raced for the output: the loser
    # stopped as "in use by another run", and the launcher killed the winner mid-write.
    from peft_vtg.cli import main

    root = batch_workspace
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")  # what accelerate launch and torchrun set
    commands = {"predict": ["predict", "--adapter", str(root / "adapter"), "--videos", str(root / "videos"),
                            "--queries", str(root / "queries.jsonl"), "--output", str(tmp_path / "p.jsonl")],
                "extract": ["extract", "--base-model", str(root / "base"), "--video-dir", str(root / "videos"),
                            "--output-dir", str(tmp_path / "features")]}
    for name, command in commands.items():
        assert main(command) == 2
        assert f"`peft-vtg {name}` runs in one process, and this launch started 2 of them" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    monkeypatch.delenv("LOCAL_RANK")  # WORLD_SIZE alone: a cluster's environment, not a launcher's copies
    assert main([*commands["predict"], "--image-size", "32", "--disable-tqdm"]) == 0
