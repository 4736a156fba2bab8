"""SynthVTG: deterministic, well-formed, held-out combinations held out, queries readable by the tokenizer."""

import numpy as np
import pytest

from peft_vtg.synth import SynthVTG, build_tokenizer, generate_clip, generate_video, held_out_combinations
from peft_vtg.synth.generator import COLOURS


def test_generation_is_deterministic():
    a, b = generate_video("v", 11), generate_video("v", 11)
    assert np.array_equal(a.frames, b.frames) and a.events == b.events and a.duration == b.duration
    assert not np.array_equal(generate_video("v", 12).frames[:32], a.frames[:32])
    rows_a, _ = SynthVTG(seed=3, num_videos={"train": 5, "val": 1, "test": 1}).split("train")
    rows_b, _ = SynthVTG(seed=3, num_videos={"train": 5, "val": 1, "test": 1}).split("train")
    assert rows_a.to_list() == rows_b.to_list()


def test_videos_are_well_formed():
    for seed in range(40):
        video = generate_video(f"v{seed}", seed)
        assert 32 <= len(video.frames) <= 96 and video.frames.shape[1:] == (32, 32, 3)
        assert 30.0 <= video.duration <= 120.0
        assert 2 <= len(video.events) <= 5 and 2 <= len(video.actors) <= 4
        spans = [(e.start, e.end) for e in video.events]
        assert spans == sorted(spans) and all(s1[1] < s2[0] for s1, s2 in zip(spans, spans[1:]))  # sequential
        triples = [video.triple(e) for e in video.events]
        assert len(set(triples)) == len(triples)  # every query names one event
        for event in video.events:
            start, end = video.window(event)
            assert 0 <= start < end <= video.duration + 1e-9
        assert len({(a.colour, a.shape) for a in video.actors}) == len(video.actors)


def _centroid(frame, colour):
    target = np.array(COLOURS[colour])
    mask = np.abs(frame.astype(int) - target).sum(axis=-1) < 40
    ys, xs = np.nonzero(mask)
    return (xs.mean(), ys.mean(), mask.sum()) if len(xs) else None


def test_events_are_visible_in_the_frames():
    checked = 0
    for seed in range(60):
        video = generate_video("v", seed)
        for event in video.events:
            actor = video.actors[event.actor]
            if sum(a.colour == actor.colour for a in video.actors) > 1:
                continue  # another actor of that colour would blur the centroid
            before, after = _centroid(video.frames[event.start], actor.colour), _centroid(video.frames[event.end],
                                                                                          actor.colour)
            if event.action == "move_left" and before and after:
                assert after[0] < before[0] - 4
                checked += 1
            elif event.action == "move_down" and before and after:
                assert after[1] > before[1] + 4
                checked += 1
            elif event.action == "grow" and before and after:
                assert after[2] > before[2]
                checked += 1
            elif event.action == "appear":
                assert before is None or before[2] < 10
                checked += 1
    assert checked >= 10


def test_held_out_combinations_stay_out_of_training_data():
    held_out = held_out_combinations()
    assert len(held_out) == 19
    data = SynthVTG(seed=0, num_videos={"train": 40, "val": 10, "test": 60})
    for split in ("train", "val"):
        rows, videos = data.split(split)
        assert not any(rows["held_out"])
        assert all(v.triple(e) not in held_out for v in videos.values() for e in v.events)
    test_rows, _ = data.split("test")
    assert any(test_rows["held_out"])
    # pre-training captions never describe a held-out combination: generate_clip excludes them
    for seed in range(30):
        frames, caption, triple = generate_clip(seed, held_out)
        assert frames.shape == (16, 32, 32, 3) and caption and triple not in held_out


def test_every_query_tokenizes_without_unknown_words():
    tokenizer = build_tokenizer()
    rows, _ = SynthVTG(seed=1, num_videos={"train": 1, "val": 1, "test": 30}).split("test")
    ids = tokenizer(list(rows["query"]))["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert all(row[0] == tokenizer.bos_token_id and row[-1] == tokenizer.eos_token_id for row in ids)
    assert tokenizer.eos_token_id == len(tokenizer) - 1  # argmax-EOS pooling of CLIP finds it


def test_splits_and_errors():
    data = SynthVTG(num_videos={"train": 3, "val": 1, "test": 1}, queries_per_video=2)
    rows, videos = data.split("train")
    assert len(videos) == 3 and len(rows) == 6 and set(rows["vid"]) == set(videos)
    with pytest.raises(ValueError, match="splits"):
        data.split("dev")


def test_a_domain_changes_the_look_but_not_the_content():
    plain, cluttered = generate_video("v", 7), generate_video("v", 7, domain="cluttered")
    assert cluttered.events == plain.events and cluttered.actors == plain.actors and cluttered.duration == plain.duration
    assert cluttered.frames.shape == plain.frames.shape
    # the plain background is grey (channels within the tint of each other), the cluttered one is coloured and noisier
    first = [v.frames[0].astype(float) for v in (plain, cluttered)]
    spread = [np.abs(f - f.mean(axis=-1, keepdims=True)).mean() for f in first]
    assert spread[1] > 2 * spread[0]
    noise = [np.abs(np.diff(v.frames[:2].astype(float), axis=0)).mean() for v in (plain, cluttered)]
    assert noise[1] > 2 * noise[0]  # consecutive frames differ by sensor noise (and motion, the same in both)
    frames, caption, triple = generate_clip(7)
    shifted_frames, shifted_caption, shifted_triple = generate_clip(7, domain="cluttered")
    assert (shifted_caption, shifted_triple) == (caption, triple) and not np.array_equal(shifted_frames, frames)
    sizes = {"train": 2, "val": 1, "test": 1}
    rows, _ = SynthVTG(num_videos=sizes).split("train")
    shifted_rows, videos = SynthVTG(num_videos=sizes, domain="cluttered").split("train")
    assert shifted_rows.to_list() == rows.to_list()  # same queries and moments
    assert np.array_equal(videos["train00000"].frames, generate_video("train00000", 0, held_out_combinations(),
                                                                      domain="cluttered").frames)


def test_scene_frames_show_two_to_four_actors_of_the_labelled_colours():
    frames, labels = SynthVTG(seed=2).scene_frames(40)
    again, same_labels = SynthVTG(seed=2).scene_frames(40)
    assert frames.shape == (40, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, again) and labels == same_labels
    assert {len(actors) for actors in labels} == {2, 3, 4}
    assert all(len(set(actors)) == len(actors) for actors in labels)  # no two actors alike, as in the videos
    assert any(len({colour for colour, _ in actors}) < len(actors) for actors in labels)  # colours shared on purpose
    for frame, actors in zip(frames, labels):
        shown = {name for name, rgb in COLOURS.items() if (frame == np.array(rgb, np.uint8)).all(-1).any()}
        assert shown == {colour for colour, _ in actors}  # each actor paints its colour; overlaps never hide one


def test_unknown_domain_is_refused_before_generating():
    with pytest.raises(ValueError, match="domain 'foggy'.*'plain'.*'cluttered'"):
        SynthVTG(domain="foggy")
    with pytest.raises(ValueError, match="domain 'foggy'"):
        generate_video("v", 0, domain="foggy")


def test_object_frames_show_one_actor_of_the_labelled_colour():
    from peft_vtg.synth.generator import SHAPES

    frames, labels = SynthVTG(seed=2).object_frames(60)
    again, same_labels = SynthVTG(seed=2).object_frames(60)
    assert frames.shape == (60, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, again) and labels == same_labels
    assert {shape for _, shape in labels} == set(SHAPES) and len({colour for colour, _ in labels}) == len(COLOURS)
    for frame, (colour, _) in zip(frames, labels):
        shown = {name for name, rgb in COLOURS.items() if (frame == np.array(rgb, np.uint8)).all(-1).any()}
        assert shown == {colour}  # an opaque actor paints its exact colour; no other actor is on screen
    other = SynthVTG(seed=2, domain="cluttered").object_frames(5)
    assert other[1] == labels[:5] and not np.array_equal(other[0], frames[:5])  # the look changes, not the object
