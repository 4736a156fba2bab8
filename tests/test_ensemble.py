"""Prompt ensembles (issue #15): several adapters' start/end distributions fused before decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import get_peft_model

from peft_vtg import VTGPromptConfig, ground
from peft_vtg.heads import VTGGroundingOutput, decode_moments, fuse_grounding_outputs
from peft_vtg.inference import ground_queries
from tiny_models import tiny_clip, tiny_tokenizer, write_video

HEAD = dict(head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1, num_video_tokens=2,
            num_text_tokens=2, predict_saliency=True, vtm_heads=["violet"])
QUERY = "the red light turns on"


def test_fusion_is_the_mean_of_the_members_probabilities():
    # two pairs x two members, 4 frames; the second pair has a padded last frame
    start = torch.tensor([[0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, -5.0], [0.0, 0.0, 4.0, -5.0]])
    mask = torch.tensor([[1, 1, 1, 1]] * 2 + [[1, 1, 1, 0]] * 2)
    lowest = torch.finfo(torch.float32).min
    out = VTGGroundingOutput(start_logits=start.masked_fill(mask == 0, lowest), end_logits=start.flip(-1),
                             frame_mask=mask, inside_logits=torch.tensor([[0.0] * 4, [2.0] * 4] * 2),
                             saliency_logits=torch.ones(4, 4), violet_vtm_logits=torch.tensor([0.0, 2.0, -1.0, 1.0]))
    fused = fuse_grounding_outputs(out, members=2)
    assert fused.start_logits.shape == (2, 4) and fused.frame_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    expected = (torch.softmax(start[0], 0) + torch.softmax(start[1], 0)) / 2
    assert torch.allclose(fused.start_logits[0].exp(), expected)
    real = (torch.softmax(start[2, :3], 0) + torch.softmax(start[3, :3], 0)) / 2
    assert torch.allclose(fused.start_logits[1, :3].exp(), real) and fused.start_logits[1, 3] == lowest
    mean_inside = (0.5 + torch.sigmoid(torch.tensor(2.0))) / 2
    assert torch.allclose(torch.sigmoid(fused.inside_logits[0]), mean_inside * torch.ones(4))
    assert torch.allclose(torch.sigmoid(fused.violet_vtm_logits),
                          torch.stack([(0.5 + torch.sigmoid(torch.tensor(2.0))) / 2,
                                       (torch.sigmoid(torch.tensor(-1.0)) + torch.sigmoid(torch.tensor(1.0))) / 2]))
    assert fused.saliency_logits[1, 3] == lowest and fused.saliency_logits[0].tolist() == [1.0] * 4
    # one member: the same distribution as the member's logits, so the same moments
    alone = fuse_grounding_outputs(out, members=1)
    assert torch.allclose(alone.start_logits[0], torch.log_softmax(start[0], 0))
    for got, expected in zip(decode_moments(alone.start_logits, alone.end_logits, [8.0] * 4, alone.frame_mask),
                             decode_moments(out.start_logits, out.end_logits, [8.0] * 4, mask)):
        assert_same_moments(got, expected)
    with pytest.raises(ValueError, match="groups of 3"):
        fuse_grounding_outputs(out, members=3)
    with pytest.raises(ValueError, match="fusion must be one of"):
        fuse_grounding_outputs(out, members=2, fusion="max")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A 10-s video (one pass: under 1.5 windows) and a 64-s video (grounded window by window with an 8-s window)."""
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("ensemble")
    rng = np.random.default_rng(1)
    paths = []
    for name, seconds in (("short", 10), ("long", 64)):
        frames = np.full((seconds, 32, 32, 3), 96, np.uint8)
        for start in rng.integers(0, seconds - 4, size=seconds // 8):
            frames[start:start + 3, :, :, 0] = 255
        write_video(root / f"{name}.mp4", frames, fps=1)
        paths.append(str(root / f"{name}.mp4"))
    return root, paths


def three_adapters(root):
    """Adapters "a" and "b" (different random prompts and heads) and "a_again", "a" saved and loaded again."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**HEAD), adapter_name="a")
    torch.manual_seed(1)
    model.add_adapter("b", VTGPromptConfig(**HEAD))
    for name in ("a", "b"):
        config = model.peft_config[name]
        config.trained_window_frames, config.trained_window_seconds = 8, 8.0
    model.save_pretrained(root / "saved", selected_adapters=["a"])
    model.load_adapter(str(root / "saved" / "a"), adapter_name="a_again")  # non-default: a subfolder
    model.set_adapter("a")
    return model.eval()


def assert_same_moments(left, right, rel=1e-4):
    """The same ranked moments up to float noise: scores equal position by position, and spans equal within each run
    of scores tied to `rel` (their order there is the noise's). The last run's spans are not compared: top-k may cut
    it at different members of a tie that continues past the list (an untrained head scores many spans alike)."""
    assert len(left) == len(right)
    assert [m[2] for m in left] == pytest.approx([m[2] for m in right], rel=rel)
    begin = 0
    for k in range(1, len(left)):
        if left[k][2] != pytest.approx(left[begin][2], rel=rel):  # a run of tied scores ends before k
            assert sorted(tuple(round(t, 4) for t in m[:2]) for m in left[begin:k]) == \
                sorted(tuple(round(t, 4) for t in m[:2]) for m in right[begin:k]), (left, right)
            begin = k


@pytest.mark.parametrize("which", ["short", "long"])
def test_an_ensemble_of_one_adapter_is_that_adapter(videos, which):
    root, paths = videos
    model, tokenizer = three_adapters(root), tiny_tokenizer()
    path = paths[["short", "long"].index(which)]
    settings = dict(image_size=32, num_frames=8, top_k=5, return_saliency=True, disable_tqdm=True)
    alone = ground(model, path, QUERY, tokenizer, **settings)
    assert_same_moments(ground(model, path, QUERY, tokenizer, adapter_names=["a"], **settings).moments, alone.moments)
    # the same adapter twice (loaded again under another name): the mean of two equal distributions
    twice = ground(model, path, QUERY, tokenizer, adapter_names=["a", "a_again"], **settings)
    assert_same_moments(twice.moments, alone.moments)
    assert [s for *_, s in twice.saliency] == pytest.approx([s for *_, s in alone.saliency], rel=1e-4, abs=1e-5)
    # members weigh the same: their order does not matter (each row reads its own member's encoding)
    assert_same_moments(ground(model, path, QUERY, tokenizer, adapter_names=["a", "b"], **settings).moments,
                        ground(model, path, QUERY, tokenizer, adapter_names=["b", "a"], **settings).moments)
    # and the other adapter's answer differs, so the comparison above could fail
    model.set_adapter("b")
    other = ground(model, path, QUERY, tokenizer, **settings)
    assert [m[:2] for m in other.moments] != [m[:2] for m in alone.moments] or \
        other.moments[0][2] != pytest.approx(alone.moments[0][2], rel=1e-3)


def test_a_batched_ensemble_equals_each_adapter_run_alone_then_fused(videos):
    root, paths = videos
    model, tokenizer = three_adapters(root), tiny_tokenizer()
    from peft_vtg.data import decode_video, preprocess_frames

    frames, duration = decode_video(paths[0], num_frames=8)
    pixels = preprocess_frames(frames, image_size=32).unsqueeze(0)  # (1, 8, 3, 32, 32)
    text = tokenizer([QUERY], return_tensors="pt")
    per_adapter = []
    for name in ("b", "a"):
        model.set_adapter(name)
        with torch.no_grad():
            per_adapter.append(model.forward_grounding(input_ids=text["input_ids"],
                                                       attention_mask=text["attention_mask"], pixel_values=pixels))
    stacked = VTGGroundingOutput(**{key: torch.cat([out[key] for out in per_adapter])
                                    for key in ("start_logits", "end_logits", "inside_logits", "frame_mask")})
    fused = fuse_grounding_outputs(stacked, members=2)
    expected = decode_moments(fused.start_logits, fused.end_logits, [duration], fused.frame_mask, top_k=5)[0]
    model.set_adapter("a")  # the active adapter plays no part in an ensemble
    got = ground(model, paths[0], QUERY, tokenizer, image_size=32, num_frames=8, top_k=5, adapter_names=["b", "a"])
    assert_same_moments(got, expected)
    # batch prediction's path (one encoding per member, all queries) gives the same
    both = ground_queries(model, paths[0], [QUERY, "the green light turns on"], tokenizer, image_size=32,
                          num_frames=8, top_k=5, adapter_names=["b", "a"])
    assert_same_moments(both[0], expected)


def test_ensemble_names_are_checked(videos):
    root, paths = videos
    model, tokenizer = three_adapters(root), tiny_tokenizer()
    for names, error, match in [
        ([], ValueError, "adapter_names is empty"),
        ("a", TypeError, "list of adapter names"),
        (["a", "a"], ValueError, r"lists \['a'\] more than once"),
        (["a", "c"], ValueError, r"not loaded: \['c'\]; loaded: \['a', 'a_again', 'b'\]"),
        (["a", 3], TypeError, "adapter names"),
    ]:
        with pytest.raises(error, match=match):
            ground(model, paths[0], QUERY, tokenizer, adapter_names=names)


def test_ensemble_module_evaluates_like_its_members_fused(videos):
    from torch.utils.data import DataLoader

    from peft_vtg.data import GroundingCollator
    from peft_vtg.training import EnsembleGroundingModule, GroundingModule, evaluate_grounding
    from test_cache import Frames, rows

    root, _ = videos
    model = three_adapters(root)
    data = rows(6)
    collator = GroundingCollator(tiny_tokenizer(), Frames())
    loader = DataLoader(data, batch_size=4, collate_fn=collator)
    model.set_adapter("a")
    alone, alone_moments = evaluate_grounding(GroundingModule(model), loader, data, disable_tqdm=True)
    single, single_moments = evaluate_grounding(EnsembleGroundingModule(model, ["a"]), loader, data, disable_tqdm=True)
    twice, _ = evaluate_grounding(EnsembleGroundingModule(model, ["a", "a_again"]), loader, data, disable_tqdm=True)
    assert single == pytest.approx(alone) and twice == pytest.approx(alone)
    for qid in alone_moments:
        assert_same_moments(single_moments[qid], alone_moments[qid])
    # two different members: the module's rows are each member's, fused (checked against one member run at a time)
    _, mixed = evaluate_grounding(EnsembleGroundingModule(model, ["a", "b"]), loader, data, disable_tqdm=True)
    batch = {k: v for k, v in collator(data[:2]).items() if k not in ("start_frames", "end_frames")}
    outputs = []
    for name in ("a", "b"):
        model.set_adapter(name)
        with torch.no_grad():
            outputs.append(GroundingModule(model).eval()(**batch))
    stacked = VTGGroundingOutput(**{key: torch.stack([out[key] for out in outputs], 1).flatten(0, 1)
                                    for key in ("start_logits", "end_logits", "inside_logits", "frame_mask")})
    fused = fuse_grounding_outputs(stacked, 2)
    expected = decode_moments(fused.start_logits, fused.end_logits, [8.0, 8.0], fused.frame_mask, top_k=5,
                              nms_threshold=0.5)
    assert_same_moments(mixed["q0"], expected[0])
    assert_same_moments(mixed["q1"], expected[1])
    with pytest.raises(ValueError, match="each once"):
        EnsembleGroundingModule(model, ["a", "zzz"])
    with pytest.raises(ValueError, match="evaluated, not trained"):
        EnsembleGroundingModule(model, ["a", "b"])(**collator(data[:2]))


def test_cli_takes_several_adapters_as_an_ensemble(tmp_path, capsys):
    import json
    import shutil

    from transformers import AutoModel

    from peft_vtg.cli import main
    from tiny_models import write_light_workspace

    torch.manual_seed(0)
    write_light_workspace(tmp_path, tiny_clip(), num_videos=4)
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        config = VTGPromptConfig(**{k: v for k, v in HEAD.items() if k != "vtm_heads"})
        get_peft_model(AutoModel.from_pretrained(tmp_path / "base"), config).save_pretrained(tmp_path / name)
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")
    data = ["--annotations", str(tmp_path / "ann.jsonl"), "--video-dir", str(tmp_path / "videos"), "--num-frames", "8",
            "--image-size", "32", "--json"]

    def metrics(*adapters):
        flags = [flag for adapter in adapters for flag in ("--adapter", str(tmp_path / adapter))]
        assert main(["evaluate", *flags, *data]) == 0
        return json.loads(capsys.readouterr().out)

    alone = metrics("a")
    assert metrics("a", "a_copy") == pytest.approx(alone)  # two copies of one adapter: that adapter
    assert metrics("a", "b")["num_queries"] == alone["num_queries"]
    video = ["--video", str(tmp_path / "videos" / "v0.mp4"), "--query", QUERY, "--num-frames", "8",
             "--image-size", "32", "--json"]
    assert main(["predict", "--adapter", str(tmp_path / "a"), *video]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["predict", "--adapter", str(tmp_path / "a"), "--adapter", str(tmp_path / "a_copy"), *video]) == 0
    doubled = json.loads(capsys.readouterr().out)
    assert [(m["start"], m["end"]) for m in doubled] == [(m["start"], m["end"]) for m in single]
    assert [m["score"] for m in doubled] == pytest.approx([m["score"] for m in single], rel=1e-4)
    assert main(["predict", "--adapter", str(tmp_path / "a"), "--adapter", str(tmp_path / "a"), *video]) == 2
    assert "given more than once" in capsys.readouterr().err


def test_geometric_fusion_is_the_renormalised_mean_of_log_probabilities(videos):
    start = torch.tensor([[0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, -1.0]])
    out = VTGGroundingOutput(start_logits=start, end_logits=start, frame_mask=torch.ones(2, 4, dtype=torch.long),
                             inside_logits=torch.tensor([[1.0] * 4, [3.0] * 4]),
                             all_in_one_vtm_logits=torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    fused = fuse_grounding_outputs(out, members=2, fusion="geometric")
    expected = torch.softmax((torch.log_softmax(start[0], 0) + torch.log_softmax(start[1], 0)) / 2, 0)
    assert torch.allclose(fused.start_logits[0].exp(), expected)
    assert torch.allclose(fused.inside_logits, torch.full((1, 4), 2.0))  # the mean logit
    assert torch.allclose(fused.all_in_one_vtm_logits.exp().sum(-1), torch.ones(1))
    # disagreement: member 1 peaks at frame 0, member 2 at frame 1, both give frame 2 much weight. The mixture keeps
    # the two peaks first; the geometric mean ranks first the frame both weigh.
    split = torch.tensor([[5.0, 0.0, 4.0, 0.0], [0.0, 5.0, 4.0, 0.0]])
    two = VTGGroundingOutput(start_logits=split, end_logits=split, frame_mask=torch.ones(2, 4, dtype=torch.long))
    assert fuse_grounding_outputs(two, 2).start_logits[0].argmax() in (0, 1)
    assert fuse_grounding_outputs(two, 2, "geometric").start_logits[0].argmax() == 2
    # an ensemble of one: both rules give the member's own distribution
    assert torch.allclose(fuse_grounding_outputs(out, 1, "geometric").start_logits, torch.log_softmax(start, -1))
    # through ground(): a geometric ensemble of an adapter and its copy is that adapter
    root, paths = videos
    model, tokenizer = three_adapters(root), tiny_tokenizer()
    settings = dict(image_size=32, num_frames=8, top_k=5, disable_tqdm=True)
    alone = ground(model, paths[1], QUERY, tokenizer, **settings)
    assert_same_moments(ground(model, paths[1], QUERY, tokenizer, adapter_names=["a", "a_again"],
                               ensemble_fusion="geometric", **settings), alone)
    with pytest.raises(ValueError, match="ensemble_fusion must be one of"):
        ground(model, paths[1], QUERY, tokenizer, adapter_names=["a", "b"], ensemble_fusion="max")


def test_grounding_settings_in_the_wrong_unit_or_type_are_refused_before_the_work(videos):
    import json

    root, paths = videos
    model, tokenizer = three_adapters(root), tiny_tokenizer()
    settings = dict(image_size=32, num_frames=8, disable_tqdm=True)
    with pytest.raises(ValueError, match=r"window_seconds=1e-06 with 8 frames per window samples 512,000,000 frames "
                                         r"of this 64.0 s video, more than 1,000,000"):
        ground(model, paths[1], QUERY, tokenizer, window_seconds=1e-6, **settings)  # 16 million windows before
    with pytest.raises(ValueError, match=r"num_frames=10000000 samples 10,000,000 frames of .*short.mp4"):
        ground(model, paths[0], QUERY, tokenizer, **{**settings, "num_frames": 10**7})
    with pytest.raises(ValueError, match=r"clip_length: a clip_length of 1e-08 s cuts the .* video into more than"):
        ground_queries(model, paths[1], [QUERY], tokenizer, return_saliency=True, clip_length=1e-8, **settings)
    for queries in (5, {QUERY: 1}):  # a dict was grounded as its keys
        with pytest.raises(TypeError, match="queries must be a list of sentences"):
            ground_queries(model, paths[0], queries, tokenizer, **settings)
    (result,) = ground_queries(model, paths[0], [QUERY], tokenizer, return_saliency=True,
                               clip_length=np.float32(2.0), **settings)
    json.dumps(result.saliency)  # plain floats: a numpy clip_length made numpy scalars JSON cannot write


def test_video_inputs_are_checked_and_named_as_given_before_any_is_grounded(videos, monkeypatch):
    import peft_vtg.inference as inference

    root, paths = videos
    model, tokenizer = three_adapters(root), tiny_tokenizer()
    settings = dict(image_size=32, num_frames=8, disable_tqdm=True)
    monkeypatch.setattr(inference, "_ground_long_video", lambda *a, **k: pytest.fail("a long video was grounded"))
    bad = torch.zeros(8, 3, 16, 16)  # frames of the wrong size, after a long video (the second item)
    with pytest.raises(ValueError, match=r"^Video 1: frames of 16x16 pixels"):  # numbered "Video 0" before
        ground(model, [paths[1], bad], QUERY, tokenizer, duration=[None, 8.0], **settings)
    for video, error, message in ((paths[0].encode(), TypeError, "video is bytes; give a file path as a str"),
                                  ([], ValueError, "video is an empty list"),
                                  (torch.zeros(0, 8, 3, 32, 32), ValueError, "video is an empty batch")):
        with pytest.raises(error, match=message):
            ground(model, video, QUERY, tokenizer, **settings)
    huge = torch.full((8, 3, 32, 32), 1e39, dtype=torch.float64)  # "the model's output is broken" before
    with pytest.raises(ValueError, match=r"Video 0: its frames reach 1e\+39, beyond float32's range"):
        ground(model, huge, QUERY, tokenizer, duration=8.0, **settings)
