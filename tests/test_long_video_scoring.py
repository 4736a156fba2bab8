"""`benchmarks/long_video_scoring.py`: the grid that chose `calibrated_spans`' exponents scores what it says."""

import pytest
import torch

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def scoring():
    return load_benchmark("long_video_scoring")


def test_presence_moves_the_top_moment_to_the_window_that_holds_it(scoring):
    frames = 8
    start, end, inside = (torch.zeros(2, 1, frames) for _ in range(3))
    # window 0 (frames 0..7): a sharp span at frames 1..2, inside there only (its presence is low); wrong
    start[0, 0, 1] = end[0, 0, 2] = 8.0
    inside[0, 0] = torch.tensor([-4.0, 2.0, 2.0, -4.0, -4.0, -4.0, -4.0, -4.0])
    # window 1 (frames 4..11): a vaguer span at its frames 1..3 (video frames 5..7), inside high throughout; right
    start[1, 0, 1] = end[1, 0, 3] = 2.0
    inside[1, 0] = torch.tensor([1.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    hour = {"start": start, "end": end, "inside": inside, "starts": [0, 4], "step": 1.0,
            "queries": [{"query": "q", "right": [[5.0, 8.0]], "own": [5.0, 8.0], "video": [0.0, 12.0]}]}
    plain, presence = scoring.score_grid([hour], frames, [(1.0, 0.0), (0.5, 2.0)])
    assert plain["hour R1@0.5"] == 0.0 and plain["within its video R1@0.5"] == 0.0
    assert presence["hour R1@0.5"] == 100.0 and presence["within its video R1@0.5"] == 100.0
    assert presence["queries"] == 1 and (presence["span_exponent"], presence["presence_exponent"]) == (0.5, 2.0)


def test_an_ensembles_hour_is_its_members_fused_as_ground_fuses_them(scoring):
    torch.manual_seed(0)
    members = [{name: torch.randn(3, 2, 8) for name in ("start", "end", "inside")} for _ in range(2)]
    for member in members:
        member.update(starts=[0, 4, 8], step=1.0, queries=[{"query": "q"}, {"query": "r"}])
    fused = scoring.fuse_hours(members)
    assert fused["starts"] == [0, 4, 8] and fused["queries"] == members[0]["queries"]
    # By hand: inside, the logit of the members' mean probability; start / end, the log of their mean softmax.
    mean = (members[0]["inside"].sigmoid() + members[1]["inside"].sigmoid()) / 2
    torch.testing.assert_close(fused["inside"], torch.log(mean / (1 - mean)), atol=1e-5, rtol=1e-5)
    for name in ("start", "end"):
        mixture = (members[0][name].softmax(-1) + members[1][name].softmax(-1)) / 2
        torch.testing.assert_close(fused[name].softmax(-1), mixture, atol=1e-6, rtol=1e-5)
    # An ensemble of one scores as its member.
    alone = scoring.fuse_hours(members[:1])
    torch.testing.assert_close(alone["inside"], members[0]["inside"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone["start"].softmax(-1), members[0]["start"].softmax(-1))


def test_wrong_top1_names_what_the_top_moment_lands_on(scoring):
    frames = 8
    start, end, inside = (torch.full((1, 3, frames), -4.0) for _ in range(3))
    start[0, :, 2] = end[0, :, 4] = 8.0  # every query's top moment: frames 2..4, seconds [2, 5)
    inside[0, :, 2:5] = 3.0
    events = [{"triple": ("red", "circle", "grow"), "moment": [2.0, 5.0]},
              {"triple": ("red", "square", "grow"), "moment": [6.0, 8.0]},
              {"triple": ("blue", "square", "blink"), "moment": [0.0, 1.0]}]
    queries = [{"triple": ("red", "circle", "grow"), "right": [[2.0, 5.0]]},  # right
               {"triple": ("red", "square", "grow"), "right": [[6.0, 8.0]]},  # lands on another shape
               {"triple": ("blue", "square", "blink"), "right": [[0.0, 1.0]]}]  # lands on nothing it shares
    hour = {"start": start, "end": end, "inside": inside, "starts": [0], "step": 1.0, "queries": queries,
            "events": events}
    assert scoring.wrong_top1([hour], frames, 0.5, 2.0) == {"right": 1, "same colour+action": 1, "nothing shared": 1}
    # A top moment over background is "no event".
    hour["events"] = events[1:]
    hour["queries"] = queries[1:]
    assert scoring.wrong_top1([hour], frames, 0.5, 2.0) == {"no event": 2}


def test_event_ranking_counts_which_other_events_outscore_the_querys(scoring, monkeypatch):
    events = [{"triple": ("red", "circle", "grow"), "moment": [0.0, 2.0]},
              {"triple": ("red", "circle", "grow"), "moment": [10.0, 12.0]},  # the same event, a second time
              {"triple": ("red", "square", "grow"), "moment": [2.0, 4.0]},
              {"triple": ("blue", "circle", "grow"), "moment": [4.0, 6.0]},
              {"triple": ("red", "circle", "blink"), "moment": [6.0, 8.0]},
              {"triple": ("blue", "square", "grow"), "moment": [8.0, 10.0]},
              {"triple": ("green", "triangle", "blink"), "moment": [14.0, 16.0]}]
    queries = [{"triple": ("red", "circle", "grow"), "video": [0.0, 5.0]},  # two videos: seconds 0-5 and 5-16
               {"triple": ("red", "square", "grow"), "video": [0.0, 5.0]},
               {"triple": ("green", "triangle", "blink"), "video": [5.0, 16.0]}]
    ranked = [
        # its event's best moment (0.9, the second time) is beaten by another colour of it (0.95)
        [[4.0, 6.0, 0.95], [10.0, 12.0, 0.9], [2.0, 4.0, 0.8], [0.0, 2.0, 0.1]],
        [[2.2, 4.0, 0.7]],  # found (IoU 0.9), nothing else: first
        [[6.0, 8.0, 0.5], [13.0, 14.5, 0.4]],  # its own moment never found (IoU 1/6): anything found beats it
    ]
    monkeypatch.setattr(scoring, "ranked_moments", lambda hour, q, *args: ranked[q])
    result = scoring.event_ranking([{"events": events, "queries": queries}], 8, 0.5, 2.0)
    assert result["queries"] == 3 and result["first_among_events"] == pytest.approx(100 / 3)
    # within its video, the first query's event (0.1 at seconds 0-2) still loses to red square grow (0.8); the second
    # comes first again; the third's own moment is still not found
    assert result["first_within_its_video"] == pytest.approx(100 / 3)
    queries[0]["video"] = [0.0, 2.0]  # a video holding its event alone: nothing there to lose to
    assert scoring.event_ranking([{"events": events, "queries": queries}], 8, 0.5, 2.0)[
        "first_within_its_video"] == pytest.approx(200 / 3)
    # per query, the other events by what they share: (red circle grow), (red square grow), (green triangle blink)
    assert result["other_events_per_query"] == pytest.approx(
        {"colour+shape": 1 / 3, "colour+action": 3 / 3, "shape+action": 2 / 3, "one attribute": 4 / 3, "none": 7 / 3})
    assert result["outscoring_percent"] == pytest.approx(
        {"colour+shape": 0.0, "colour+action": 0.0, "shape+action": 50.0, "one attribute": 25.0, "none": 0.0})
    # found and first (the second query), found and beaten by one (the first), not found (the third)
    assert result["own_event_not_found"] == pytest.approx(100 / 3)
    assert result["outscored_by"] == pytest.approx({"0": 100 / 3, "1": 100 / 3, "2-4": 0.0, "5-19": 0.0, "20+": 0.0})
    # the first query lost to a look-alike (another colour of its event): first without look-alikes; the third's event
    # is never found, first under neither
    assert (result["first_if_look_alikes_lost"], result["first_if_others_lost"]) == pytest.approx((200 / 3, 100 / 3))
    ranked[0][0] = [8.0, 10.0, 0.95]  # now blue square grow, sharing the action alone, beats the first query's event
    result = scoring.event_ranking([{"events": events, "queries": queries}], 8, 0.5, 2.0)
    assert (result["first_if_look_alikes_lost"], result["first_if_others_lost"]) == pytest.approx((100 / 3, 200 / 3))


def test_exact_span_ranking_scores_each_events_own_span_as_calibrated_spans_would(scoring):
    import math

    frames = 4
    start, end = torch.zeros(2, 1, frames), torch.zeros(2, 1, frames)  # uniform: every span's p_span is 1/16
    inside = torch.tensor([[[-2.0, 1.0, 1.0, -2.0]], [[-2.0, -1.0, 3.0, 3.0]]])  # (windows, queries, frames)
    events = [{"triple": ("red", "circle", "grow"), "moment": [1.0, 3.0]},  # frames 1-2: window 0 alone holds both
              {"triple": ("blue", "square", "blink"), "moment": [4.0, 6.0]},  # frames 4-5: window 1 (frames 2-5)
              {"triple": ("red", "square", "grow"), "moment": [0.0, 5.0]}]  # frames 0-4: no window holds it whole
    hour = {"start": start, "end": end, "inside": inside, "starts": [0, 2], "step": 1.0, "events": events,
            "queries": [{"triple": ("red", "circle", "grow"), "video": [0.0, 3.5]}]}
    p = torch.sigmoid(inside[:, 0]).tolist()
    presence = [sum(window) / frames for window in p]

    def score(w: int, i: int, j: int) -> float:  # calibrated_spans' p_span ** 0.5 * inside(span) * presence ** 2
        return math.sqrt(1 / 16) * sum(p[w][i:j + 1]) / (j - i + 1) * presence[w] ** 2

    expected = [score(0, 1, 2), score(1, 2, 3), score(0, 0, 3)]  # the third cut to window 0, which holds 4 of its 5
    assert scoring.exact_span_scores(hour, 0, frames, 0.5, 2.0) == pytest.approx(expected)
    assert expected[1] > expected[0] > expected[2]  # blue square blink outscores the query's event
    # In the hour, blue square blink wins; within its video (seconds 0-3.5) only red square grow is there, and loses.
    # Of the two other events, blue square blink shares nothing with the query's, red square grow two (another shape).
    assert scoring.exact_span_ranking([hour], frames, 0.5, 2.0) == {"adapter": {
        "first_among_events": 0.0, "first_within_its_video": 100.0, "outscoring_percent": {
            "colour+shape": 0.0, "colour+action": 0.0, "shape+action": 0.0, "one attribute": 0.0, "none": 100.0}}}
    # The backbone's retrieval puts the query's event first; by 3 logits, enough to outweigh the adapter's ratio.
    hour["retrieval"] = [[4.0, 1.0, 0.0]]
    assert expected[1] / expected[0] < math.exp(3.0)
    ranking = scoring.exact_span_ranking([hour], frames, 0.5, 2.0)
    assert ranking["backbone retrieval"]["first_among_events"] == 100.0
    assert ranking["adapter x backbone"]["first_among_events"] == 100.0
    hour["retrieval"] = [[1.0, 1.0, 0.0]]  # a tie in retrieval: only a higher score outscores, so first there; and
    ranking = scoring.exact_span_ranking([hour], frames, 0.5, 2.0)  # the product is the adapter's ranking again
    assert ranking["backbone retrieval"]["first_among_events"] == 100.0
    assert ranking["adapter x backbone"]["first_among_events"] == 0.0
    assert ranking["adapter x backbone"]["first_within_its_video"] == 100.0
