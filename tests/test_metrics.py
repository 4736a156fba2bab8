"""Metrics against hand-computed cases."""

import pytest

from peft_vtg.metrics import best_iou, evaluate_moments, rank_predictions, temporal_iou, temporal_nms


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 10], [0, 10], 1.0),
        ([0, 10], [5, 15], 5 / 15),
        ([0, 10], [2, 4], 2 / 10),  # contained
        ([0, 10], [10, 20], 0.0),  # touching
        ([0, 10], [20, 30], 0.0),  # disjoint
        ([5, 5], [0, 10], 0.0),  # zero-length prediction inside the window
        ([5, 5], [5, 5], 1.0),  # identical zero-length windows
        ([-5, 5], [0, 10], 5 / 15),  # out of range: not clipped, overlaps less
        ([8, 40], [0, 10], 2 / 40),  # beyond the duration
    ],
)
def test_temporal_iou(a, b, expected):
    assert temporal_iou(a, b) == pytest.approx(expected)
    assert temporal_iou(b, a) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, truth, expected_hit", [
    ([0.0, 21.13], [0.0, 42.26], True),  # IoU exactly 0.5: the sum-of-lengths union rounds it to 0.4999999999999999
    ([4.165625, 10.830625], [0.0, 13.33], False),  # the span union rounds to 0.49999999999999994: no hit, as theirs
])
def test_an_iou_of_exactly_a_threshold_is_decided_as_the_community_evaluators_decide_it(prediction, truth, expected_hit):
    # Moment-DETR's R1 (compute_temporal_iou_batch_paired), 2D-TAN and VSLNet divide by the span of the two windows.
    intersection = min(prediction[1], truth[1]) - max(prediction[0], truth[0])
    reference = intersection / (max(prediction[1], truth[1]) - min(prediction[0], truth[0]))
    assert temporal_iou(prediction, truth) == reference and (reference >= 0.5) == expected_hit
    assert evaluate_moments({"q": [prediction + [1.0]]}, {"q": [truth]})["R1@0.5"] == 100.0 * expected_hit
    from peft_vtg.moment_detr_eval import evaluate_moment_retrieval

    assert evaluate_moment_retrieval({"q": [prediction + [1.0]]}, {"q": [truth]})["MR-full-R1@0.5"] == \
        100.0 * expected_hit


def test_strict_iou_counts_iou_above_the_threshold_as_2d_tan_does():
    predictions, truth = {"q": [[0.0, 5.0, 1.0]], "r": [[0.0, 6.0, 1.0]]}, {"q": [[0.0, 10.0]], "r": [[0.0, 10.0]]}
    assert evaluate_moments(predictions, truth)["R1@0.5"] == 100.0  # IoU 0.5 and 0.6
    assert evaluate_moments(predictions, truth, strict_iou=True)["R1@0.5"] == 50.0
    with pytest.raises(ValueError, match="strict_iou must be True or False"):
        evaluate_moments(predictions, truth, strict_iou="yes")


def test_reversed_window_is_an_error():
    with pytest.raises(ValueError, match="end < start"):
        temporal_iou([5, 1], [0, 10])


def test_several_ground_truth_windows_take_the_best():
    assert best_iou([20, 30], [[0, 10], [22, 30]]) == pytest.approx(8 / 10)


def test_ranking_is_by_score_and_stable_for_ties():
    ranked = rank_predictions([[0, 1, 0.5], [2, 3, 0.9], [4, 5, 0.5]])
    assert ranked == [[2, 3, 0.9], [0, 1, 0.5], [4, 5, 0.5]]


def test_temporal_nms_suppresses_overlaps_above_threshold():
    preds = [[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7], [0, 5, 0.6]]
    # [1,10] vs [0,10]: IoU 0.9 > 0.5 -> dropped; [0,5] vs [0,10]: IoU 0.5, not above 0.5 -> kept
    assert temporal_nms(preds, 0.5) == [[0, 10, 0.9], [20, 30, 0.7], [0, 5, 0.6]]
    assert temporal_nms(preds, 0.5, max_windows=2) == [[0, 10, 0.9], [20, 30, 0.7]]


def test_evaluate_hand_computed():
    ground_truth = {"a": [[0, 10]], "b": [[10, 20]], "c": [[0, 4], [30, 40]]}
    predictions = {
        # top-1 IoU 5/15 = 0.333; a lower-ranked window is exact -> R5 hits at every threshold
        "a": [[5, 15, 0.9], [0, 10, 0.1]],
        # [12, 20] vs [10, 20]: IoU 8/10
        "b": [[12, 20, 1.0]],
        # top-1 matches the second window with IoU 6/10 = 0.6
        "c": [[30, 36, 0.7], [0, 1, 0.2]],
    }
    result = evaluate_moments(predictions, ground_truth)
    assert result["num_queries"] == 3
    ious = [5 / 15, 8 / 10, 6 / 10]
    for m in (0.1, 0.3, 0.5, 0.7):
        assert result[f"R1@{m}"] == pytest.approx(100 * sum(i >= m for i in ious) / 3)
    assert result["R5@0.7"] == pytest.approx(100 * 2 / 3)  # a (exact, rank 2) and b (0.8); c's best is 0.6
    assert result["R5@0.5"] == pytest.approx(100.0)
    assert result["mIoU"] == pytest.approx(100 * sum(ious) / 3)
    assert set(result) == {f"R{n}@{m}" for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)} | {"mIoU", "num_queries"}


def test_r5_uses_the_nms_top_five():
    ground_truth = {"q": [[50, 60]]}
    # Five near-duplicates of a wrong window outrank the right one; NMS removes the duplicates.
    predictions = {"q": [[0, 10, 1.0 - i * 0.01] for i in range(5)] + [[50, 60, 0.5]]}
    assert evaluate_moments(predictions, ground_truth)["R5@0.5"] == 0.0
    assert evaluate_moments(predictions, ground_truth, nms_threshold=0.7)["R5@0.5"] == 100.0


def test_missing_and_unknown_qids_are_named():
    with pytest.raises(ValueError, match=r"missing predictions for \['b'\].*unknown qids \['z'\]"):
        evaluate_moments({"a": [[0, 1, 1]], "z": [[0, 1, 1]]}, {"a": [[0, 1]], "b": [[0, 1]]})
    with pytest.raises(ValueError, match="'a' has no predicted window"):
        evaluate_moments({"a": []}, {"a": [[0, 1]]})
    # Not one qid in common (lighthouse's numbered Charades qids against a native file's '<vid>_<k>'): the hint says so.
    with pytest.raises(ValueError, match=r"No predicted qid is a ground-truth qid.*e\.g\. '12404' against 'AO8RW_0'"):
        evaluate_moments({"12404": [[0, 1, 1]]}, {"AO8RW_0": [[0, 1]]})


def test_arrays_of_windows_are_read_as_the_lists_they_hold():
    import numpy as np
    import torch

    lists = evaluate_moments({"q": [[0.0, 5.0, 1.0], [0.0, 10.0, 0.5]]}, {"q": [[0.0, 10.0]]})
    assert evaluate_moments({"q": np.array([[0.0, 5.0, 1.0], [0.0, 10.0, 0.5]])}, {"q": np.array([[0.0, 10.0]])}) \
        == lists
    assert evaluate_moments({"q": torch.tensor([[0.0, 5.0, 1.0], [0.0, 10.0, 0.5]])}, {"q": [[0.0, 10.0]]}) == lists


def test_iou_and_nms_refuse_what_would_rank_or_score_wrongly():
    for window, message in (([float("nan"), 1.0], "not a finite number"), (["0", "1"], r"must be \[start, end\]"),
                            (None, r"must be \[start, end\]"), ([True, 2], r"must be \[start, end\]")):
        with pytest.raises(ValueError, match=message):
            temporal_iou(window, [0.0, 1.0])
    windows = [[0.0, 1.0, float("nan")], [0.0, 1.0, 0.9], [5.0, 6.0, 0.1]]
    with pytest.raises(ValueError, match="its score must be a finite number"):  # NaN suppressed the 0.9 window
        temporal_nms(windows, 0.5)
    good = windows[1:]
    assert temporal_nms(good, 0.5, max_windows=1) == [[0.0, 1.0, 0.9]]
    for kwargs, message in ((dict(max_windows=0), "max_windows must be a whole number >= 1"),
                            (dict(max_windows=-1), "max_windows must be a whole number >= 1"),
                            (dict(iou_threshold=None), "iou_threshold must be an IoU"),
                            (dict(iou_threshold=2), "must be an IoU in")):
        with pytest.raises(ValueError, match=message):
            temporal_nms(good, **{"iou_threshold": 0.5, **kwargs})


def test_moment_detr_metrics_refuse_settings_that_change_the_numbers():
    from peft_vtg.moment_detr_eval import evaluate_highlights, evaluate_moment_retrieval

    predictions, truth = {"q": [[0.0, 2.0, 0.9], [4.0, 6.0, 0.5]]}, {"q": [[4.0, 6.0]]}
    assert evaluate_moment_retrieval(predictions, truth, max_predictions=10)["MR-full-mAP"] == 50.0
    for bad in (0, -1, 1.5, "10", True):  # -1 dropped the last window: mAP 0 instead of 50
        with pytest.raises(ValueError, match="max_predictions must be a whole number >= 1"):
            evaluate_moment_retrieval(predictions, truth, max_predictions=bad)
    labels = {"q": {"duration": 8.0, "relevant_clip_ids": [1, 2], "saliency_scores": [[1, 2, 3], [4, 4, 4]]}}
    saliency = {"q": [0.1, 0.5, 0.9, 0.2]}
    assert evaluate_highlights(saliency, labels)["HL-min-VeryGood-Hit1"] == 100.0
    for bad in (0, float("nan"), "2", -2):
        with pytest.raises(ValueError, match="clip_length must be a finite number of seconds > 0"):
            evaluate_highlights(saliency, labels, clip_length=bad)
    with pytest.raises(ValueError, match=r"ground truth of query 'q' has no \['relevant_clip_ids'\]"):
        evaluate_highlights(saliency, {"q": {"duration": 8.0, "saliency_scores": [[1, 2, 3]]}})
    with pytest.raises(ValueError, match=r"query 'q': relevant clip ids must be whole numbers"):
        evaluate_highlights(saliency, {"q": {**labels["q"], "relevant_clip_ids": [1.0, 2.0]}})
