"""`benchmarks/attribute_probe.py`: each changed sentence is false in its video and differs in the one attribute."""

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("attribute_probe")


def test_each_changed_sentence_differs_in_its_attribute_and_is_absent_from_the_video(probe):
    from peft_vtg.synth import SynthVTG

    rows, videos = SynthVTG(seed=0, num_videos={"train": 1, "val": 1, "test": 4}).split("test")
    probes = probe.probe_rows(rows, videos)
    assert len(probes) == len(rows)
    slots = dict(probe.SWAPS)
    for item in probes:
        video, truth = item["video"], item["triples"][0]
        assert truth == video.triple(item["event"]) and item["sentences"][0] == item["row"]["query"]
        shown = {video.triple(e) for e in video.events}
        assert item["names"][0] == "true" and len(item["names"]) == len(item["sentences"]) == len(item["triples"])
        for name, triple in zip(item["names"][1:], item["triples"][1:]):
            assert triple not in shown
            assert [k for k in range(3) if triple[k] != truth[k]] == [slots[name]]


def test_tally_is_the_percent_of_wins(probe):
    assert probe.tally({"shape": [True, False, False, True], "colour": [True]}) == {
        "colour": {"true_wins_percent": 100.0, "queries": 1}, "shape": {"true_wins_percent": 50.0, "queries": 4}}


def test_text_pairs_change_one_attribute_and_keep_the_template(probe):
    from peft_vtg.synth.text import ACTION_PHRASES, COLOUR_WORDS, SHAPE_WORDS

    pairs = probe.text_pairs(count=40, seed=1)
    assert [p["attribute"] for p in pairs[:4]] == ["colour", "shape", "action", "another phrasing"]
    slots = dict(probe.SWAPS)
    words = (COLOUR_WORDS, SHAPE_WORDS, ACTION_PHRASES)
    for pair in pairs:
        changed = [k for k in range(3) if pair["triple"][k] != pair["other_triple"][k]]
        if pair["attribute"] == "another phrasing":
            assert changed == []
            continue
        assert changed == [slots[pair["attribute"]]]
        slot = changed[0]
        # the same template: taking the changed attribute's phrase out leaves the same words around it
        mine = next(w for w in sorted(words[slot][pair["triple"][slot]], key=len, reverse=True)
                    if f" {w} " in f" {pair['sentence']} ")
        theirs = next(w for w in sorted(words[slot][pair["other_triple"][slot]], key=len, reverse=True)
                      if f" {w} " in f" {pair['other']} ")
        assert f" {pair['sentence']} ".replace(f" {mine} ", " _ ") == f" {pair['other']} ".replace(f" {theirs} ", " _ ")


def test_text_probe_sees_a_changed_word_and_not_an_unchanged_one(probe):
    from peft_vtg.synth.backbone import load_backbone

    base, tokenizer = load_backbone()
    pairs = probe.text_pairs(count=20)
    same = [dict(p, other=p["sentence"]) for p in pairs]  # nothing changed: similarity 1
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in probe.text_probe(base, tokenizer, same).values())
    similarity = probe.text_probe(base, tokenizer, pairs)
    assert set(similarity) == {"colour", "shape", "action", "another phrasing"}
    assert similarity["colour"] < 0.9  # the shipped text tower reads colour words
