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
