"""QVHighlights in full (issue #14): Moment-DETR's moment-retrieval mAP and highlight metrics against hand-computed
cases and the real val file, the readers' highlight labels, per-frame saliency targets, the saliency head and loss,
and `peft-vtg score` on other tools' submission files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_vtg.data import GroundingCollator, load_annotations, read_report
from peft_vtg.data.collate import saliency_targets
from peft_vtg.heads import saliency_loss
from peft_vtg.moment_detr_eval import (
    MAP_IOU_THRESHOLDS,
    brief,
    evaluate_highlights,
    evaluate_moment_retrieval,
    interpolated_average_precision,
    query_average_precision,
    saliency_average_precision,
    saliency_labels,
)
from peft_vtg.submission import read_submission, submission_lines
from peft_vtg.timeline import clip_scores_to_frames, frame_scores_to_clips

SHARED = Path(__file__).resolve().parents[2] / "shared" / "vtg-annotations"
QVH_VAL = SHARED / "qvhighlights" / "highlight_val_release.jsonl"


def write_lines(path: Path, entries: list) -> str:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
    return str(path)


# ---------------------------------------------------------------- moment-retrieval mAP
def test_average_precision_of_one_query_by_hand():
    truth = [[0, 10], [20, 30]]
    # ranked: [20,30] hit (1/1), [0,9] IoU 0.9 hit (2/2): AP 1 at every threshold up to 0.9, then [0,9] misses
    ap = query_average_precision([[0, 9, 0.5], [20, 30, 0.9]], truth)
    assert ap[:9] == pytest.approx([1.0] * 9) and ap[9] == pytest.approx(0.5)  # 0.95: one of two windows found
    # a miss ranked first: precision 1/2 at recall 1/2 and 2/3 at recall 1; interpolated, 2/3 at both recalls
    ap = query_average_precision([[50, 60, 0.9], [0, 10, 0.8], [20, 30, 0.7]], truth)
    assert ap[0] == pytest.approx(2 / 3)
    # a hit, a miss, a hit: precision 1 at recall 1/2, 2/3 at recall 1
    ap = query_average_precision([[0, 10, 0.9], [50, 60, 0.8], [20, 30, 0.7]], truth)
    assert ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a second window on an already matched ground truth is a false positive
    assert query_average_precision([[0, 10, 0.9], [0, 10, 0.8]], [[0, 10]])[0] == pytest.approx(1.0)
    assert query_average_precision([[0, 10, 0.8], [0, 10, 0.9], [40, 50, 0.95]], [[0, 10]])[0] == pytest.approx(0.5)
    # equal scores keep the order given
    assert query_average_precision([[40, 50, 0.5], [0, 10, 0.5]], [[0, 10]])[0] == pytest.approx(0.5)
    assert query_average_precision([[0, 10, 0.5], [40, 50, 0.5]], [[0, 10]])[0] == pytest.approx(1.0)
    assert query_average_precision([], [[0, 10]]) == [0.0] * len(MAP_IOU_THRESHOLDS)
    # VOC interpolation: precision is made non-increasing in recall
    assert interpolated_average_precision(np.array([0.5, 1.0]), np.array([0.5, 1.0])) == pytest.approx(1.0)


def test_moment_retrieval_buckets_first_ten_windows_and_listed_top1():
    truth = {"short": [[0, 8]], "long": [[0, 40]], "mixed": [[0, 8], [50, 90]]}
    predictions = {
        "short": [[0, 8, 0.9]],
        # the right window is the 11th listed: outside the ten that count, so AP 0 (R1 reads the first listed)
        "long": [[100 + k, 101 + k, 1.0] for k in range(10)] + [[0, 40, 2.0]],
        # listed first is the worse-scored window: Moment-DETR's R1 takes it anyway
        "mixed": [[50, 90, 0.1], [0, 8, 0.9]],
    }
    metrics = evaluate_moment_retrieval(predictions, truth)
    assert metrics["MR-short-num_queries"] == 2 and metrics["MR-long-num_queries"] == 2  # "mixed" in both
    assert "MR-middle-mAP" not in metrics  # no window of 10..30 s
    assert metrics["MR-short-mAP"] == pytest.approx(100.0)  # "mixed" reduced to its short window, found
    # "long" 0; "mixed" reduced to its long window, found second (after the better-scored short window): AP 1/2
    assert metrics["MR-long-mAP"] == pytest.approx(25.0)
    assert metrics["MR-full-mAP"] == pytest.approx(100 * (1 + 0 + 1) / 3)
    assert metrics["MR-full-R1@0.5"] == pytest.approx(100 * 2 / 3)  # "long"'s first listed window misses
    assert list(brief(metrics)) == ["MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-short-mAP",
                                    "MR-long-mAP", "MR-full-R1@0.5", "MR-full-R1@0.7"]
    with pytest.raises(ValueError, match=r"none for 1 ground-truth queries \['x'\]"):
        evaluate_moment_retrieval({"short": [[0, 1, 1]]}, {"short": [[0, 1]], "x": [[0, 1]]})


@pytest.mark.parametrize("predictions, truth, message", [
    ({"q": [[0, 5]]}, {"q": [[0, 10]]}, r"window 0: \[0, 5\] has no score"),
    ({"q": [[0, 5, math.nan]]}, {"q": [[0, 10]]}, "holds NaN or Inf"),
    ({"q": [[5, 0, 1.0]]}, {"q": [[0, 10]]}, "ends before it starts"),
    ({"q": [[0, 5, 1.0]], "z": [[0, 1, 1.0]]}, {"q": [[0, 10]]}, r"1 for unknown qids \['z'\]"),
    ({"q": [[0, 5, 1.0]]}, {"q": []}, "ground truth of query 'q' has no window"),
    ({}, {}, "No queries to evaluate"),
])
def test_moment_retrieval_api_refuses_what_the_reference_would_crash_on_or_score_as_garbage(predictions, truth,
                                                                                             message):
    with pytest.raises(ValueError, match=message):
        evaluate_moment_retrieval(predictions, truth)


@pytest.mark.parametrize("saliency, truth, message", [
    ({"q": [math.nan, 1.0]}, {"duration": 10}, "clip 0: nan is not a finite number"),
    ({"q": []}, {"duration": 10}, "an empty list"),
    ({"q": [1.0]}, {"duration": 1.5}, "holds at least one clip of 2.0 s, got 1.5"),
    ({"x": [1.0]}, {"duration": 10}, r"none for 1 ground-truth queries \['q'\]"),
])
def test_highlight_api_refuses_unscorable_input_naming_the_query(saliency, truth, message):
    labels = {"q": {**truth, "relevant_clip_ids": [0], "saliency_scores": [[4, 4, 4]]}}
    with pytest.raises(ValueError, match=message):
        evaluate_highlights(saliency, labels)
    # Queries without labels may have scores: the reference scores the labelled ones only.
    assert evaluate_highlights({"q": [1.0] * 5, "other": [0.0]}, {"q": {**labels["q"], "duration": 10}})[
        "HL-num_queries"] == 1


# ---------------------------------------------------------------- highlight metrics
def test_saliency_average_precision_and_hit1_by_hand():
    positive = np.array([True, False, True, False])
    assert saliency_average_precision(positive, np.array([4.0, 3, 2, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert saliency_average_precision(positive, np.array([1.0, 1, 1, 1])) == pytest.approx(0.5)  # one tie: p = 2/4
    assert saliency_average_precision(np.array([False] * 3), np.array([1.0, 2, 3])) == 0.0
    assert saliency_average_precision(np.array([True] * 3), np.array([1.0, 2, 3])) == 1.0
    truth = {"q": {"duration": 8, "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 0, 2], [1, 1, 1]]}}
    assert saliency_labels(8, [1, 2], [[4, 0, 2], [1, 1, 1]]).tolist() == [[0, 0, 0], [4, 0, 2], [1, 1, 1], [0, 0, 0]]
    metrics = evaluate_highlights({"q": [0.0, 5.0, 1.0, 0.0]}, truth)
    # VeryGood: only annotator 0 has a positive clip (1), ranked first: AP 1; the other two have none: AP 0
    assert metrics["HL-min-VeryGood-mAP"] == pytest.approx(100 / 3) and metrics["HL-min-VeryGood-Hit1"] == 100.0
    assert metrics["HL-min-Fair-mAP"] == pytest.approx(100 * 2 / 3)  # annotators 0 and 2 mark clip 1
    # predictions shorter than the video are padded with 0, longer ones cut; the best clip beyond the video misses
    assert evaluate_highlights({"q": [0.0, 5.0]}, truth)["HL-min-Fair-mAP"] == pytest.approx(100 * 2 / 3)
    assert evaluate_highlights({"q": [0, 0, 0, 0, 9.0]}, truth)["HL-min-Fair-Hit1"] == 0.0
    with pytest.raises(ValueError, match="relevant clip id 4 lies outside a 8 s video of 4 clips"):
        saliency_labels(8, [4], [[1, 1, 1]])


@pytest.mark.skipif(not QVH_VAL.exists(), reason="needs ../shared/vtg-annotations")
def test_the_real_qvhighlights_val_file(tmp_path):
    rows = load_annotations(QVH_VAL)
    assert len(rows) == 1550 and read_report(rows)["dropped_qids"] == []
    first = rows[0]
    assert first["qid"] == "2579" and first["clip_length"] == 2.0
    assert first["relevant_clip_ids"][:3] == [41, 42, 43] and first["saliency_scores"][0] == [1.0, 1.0, 2.0]
    # ground truth as predictions: every window found, and the annotators' mean as saliency tops every level
    truth = {row["qid"]: row["windows"] for row in rows}
    perfect = {qid: [[*w, 1.0] for w in windows] for qid, windows in truth.items()}
    metrics = evaluate_moment_retrieval(perfect, truth)
    # only the first 10 windows count: a query with n > 10 ground-truth windows finds 10 of them (AP 10 / n)
    expected = 100 * np.mean([min(1.0, 10 / len(windows)) for windows in truth.values()])
    assert 99 < expected < 100 and metrics["MR-full-mAP"] == pytest.approx(expected)
    assert metrics["MR-full-R1@0.7"] == pytest.approx(100.0)
    assert metrics["MR-full-num_queries"] == 1550
    assert metrics["MR-short-num_queries"] + metrics["MR-middle-num_queries"] + metrics["MR-long-num_queries"] >= 1550
    labels = {row["qid"]: row for row in rows}
    mean = {qid: saliency_labels(row["duration"], row["relevant_clip_ids"], row["saliency_scores"]).mean(1).tolist()
            for qid, row in labels.items()}
    hl = evaluate_highlights(mean, labels)
    assert hl["HL-min-Fair-Hit1"] == pytest.approx(100.0) and hl["HL-num_queries"] == 1550
    assert 50 < hl["HL-min-VeryGood-mAP"] < 100  # annotators disagree: the mean ranks some of each one's clips low
    # the CLI scores a Moment-DETR submission of the same predictions
    from peft_vtg.cli import main

    submission = write_lines(tmp_path / "sub.jsonl", [
        {"qid": int(qid), "query": "", "vid": "", "pred_relevant_windows": perfect[qid],
         "pred_saliency_scores": mean[qid]} for qid in truth])
    assert main(["score", "--predictions", submission, "--ground-truth", str(QVH_VAL), "--json"]) == 0


# ---------------------------------------------------------------- readers and targets
def test_highlight_labels_are_read_checked_and_clipped(tmp_path):
    def read(*entries):
        return load_annotations(write_lines(tmp_path / "h.jsonl", list(entries)))

    base = {"qid": 1, "query": "a dog runs", "duration": 10, "vid": "v", "relevant_windows": [[2, 6]]}
    rows = read({**base, "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 3, 2], [1, 1, 1]]},
                {**base, "qid": 2})  # a row without labels in a highlight file
    assert rows[0]["relevant_clip_ids"] == [1, 2] and rows[1]["relevant_clip_ids"] == [] and rows[1]["clip_length"] == 2
    with pytest.warns(UserWarning, match="highlight clip beyond the video"):
        rows = read({**base, "relevant_clip_ids": [4, 5], "saliency_scores": [[1, 1, 1], [2, 2, 2]]})
    assert rows[0]["relevant_clip_ids"] == [4] and rows[0]["saliency_scores"] == [[1.0, 1.0, 1.0]]
    for bad, message in (
        ({"relevant_clip_ids": [1]}, "'relevant_clip_ids' is given without 'saliency_scores'"),
        ({"relevant_clip_ids": [1, 1], "saliency_scores": [[1], [1]]}, "lists a clip twice"),
        ({"relevant_clip_ids": [1.5], "saliency_scores": [[1]]}, "whole numbers >= 0"),
        ({"relevant_clip_ids": [1], "saliency_scores": [[1], [2]]}, "one list of scores per relevant clip \\(1\\)"),
        ({"relevant_clip_ids": [1, 2], "saliency_scores": [[1, 2], [1]]}, "different numbers of annotators"),
        ({"relevant_clip_ids": [1], "saliency_scores": [["4"]]}, "item 0 must be a non-empty list of finite numbers"),
        ({"relevant_clip_ids": [1], "saliency_scores": [[1]], "clip_length": 0}, "'clip_length' must be a finite"),
    ):
        with pytest.raises(ValueError, match=f"h.jsonl, line 1: .*{message}"):
            read({**base, **bad})
    # dropped rows are remembered by qid
    with pytest.warns(UserWarning):
        rows = read(base, {**base, "qid": 7, "relevant_windows": [[6, 2]]})
    assert read_report(rows)["dropped_qids"] == ["7"]


def test_clip_scores_on_the_frame_grid():
    # frames finer than clips: each takes its clip's score; coarser: the overlap-weighted mean
    assert clip_scores_to_frames([0, 4], 2, 4, 4) == ([0, 0, 4, 4], [True] * 4)
    assert clip_scores_to_frames([0, 4, 2, 0], 2, 8, 2) == ([2.0, 1.0], [True, True])
    values, known = clip_scores_to_frames([4], 2, 3, 3)  # a 3 s video of one 2 s clip: the last second is unlabelled
    assert values[:2] == [4, 4] and known == [True, True, False]
    assert frame_scores_to_clips([1, 3], 4, 2) == [1, 3]
    assert frame_scores_to_clips([1, 3], 4, 4) == [2]
    assert frame_scores_to_clips([1, 2, 3], 3, 2) == [1.5, 3]  # the last clip is short
    row = {"qid": "q", "duration": 8.0, "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 2, 3], [1, 1, 1]],
           "clip_length": 2.0}
    assert saliency_targets(row, 4) == ([0.0, 3.0, 1.0, 0.0], [True] * 4)
    assert saliency_targets(row, 2) == ([1.5, 0.5], [True, True])
    assert saliency_targets({**row, "relevant_clip_ids": []}, 4) is None


def test_saliency_loss_by_hand():
    targets = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    known = torch.tensor([[1, 1, 1, 0]])  # the last frame is unknown
    # pairs (more, less): (0,1), (0,2), (2,1); logit gaps 1.0, -0.5, 1.5 -> hinges 0, 0.7, 0 (margin 0.2)
    logits = torch.tensor([[1.0, 0.0, 1.5, 9.0]], requires_grad=True)
    loss = saliency_loss(logits, targets, known, margin=0.2)
    assert loss.item() == pytest.approx(0.7 / 3)
    loss.backward()
    assert logits.grad[0, 3] == 0  # the unknown frame takes no part
    flat = saliency_loss(torch.zeros(1, 3, requires_grad=True), torch.ones(1, 3), torch.ones(1, 3))
    assert flat.item() == 0.0 and flat.requires_grad  # no pair of different saliency


# ---------------------------------------------------------------- submission files and `score`
def test_submission_files_of_other_tools_are_read(tmp_path):
    scored = read_submission(write_lines(tmp_path / "a.jsonl", [
        {"qid": 3, "query": "x", "vid": "v", "pred_relevant_windows": [[0, 2, 0.5], [4, 6, 0.9]],
         "pred_saliency_scores": [0.1, 0.2]}]))
    assert scored.windows == {"3": [[0, 2, 0.5], [4, 6, 0.9]]} and scored.saliency == {"3": [0.1, 0.2]}
    unscored = read_submission(write_lines(tmp_path / "b.jsonl",
                                           [{"qid": "a", "pred_relevant_windows": [[4, 6], [0, 2]]}]))
    assert unscored.windows == {"a": [[4, 6, 2.0], [0, 2, 1.0]]} and not unscored.scored
    only_saliency = read_submission(write_lines(tmp_path / "c.jsonl", [{"qid": 1, "pred_saliency_scores": [1, 2]}]))
    assert only_saliency.windows == {} and only_saliency.saliency == {"1": [1.0, 2.0]}
    for entries, message in (
        ([{"qid": 1}], "needs 'pred_relevant_windows'"),
        ([{"qid": 1, "pred_saliency_scores": [1, float("nan")]}], "clip 1: nan is not a finite number"),
        ([{"qid": 1, "pred_relevant_windows": [[0, 1]]}, {"qid": 2, "pred_relevant_windows": [[0, 1, 1]]}],
         "1 lines give windows with scores and 1 without"),
    ):
        with pytest.raises(ValueError, match=message):
            read_submission(write_lines(tmp_path / "bad.jsonl", [json.dumps(e).replace("NaN", "NaN") for e in entries]))
    lines = submission_lines({"12": [(0.0, 2.0, 0.5)], "v_0": [(1.0, 2.0, 0.1)]}, {"12": [0.5]},
                             [{"qid": "12", "query": "q", "vid": "v"}])
    assert json.loads(lines[0]) == {"qid": 12, "query": "q", "vid": "v", "pred_relevant_windows": [[0.0, 2.0, 0.5]],
                                    "pred_saliency_scores": [0.5]}
    assert json.loads(lines[1])["qid"] == "v_0"


def test_score_reads_submissions_ranks_as_listed_and_sets_dropped_rows_aside(tmp_path, capsys):
    from peft_vtg.cli import main

    truth = write_lines(tmp_path / "gt.jsonl", [
        {"qid": 1, "query": "a", "vid": "v1", "duration": 20, "relevant_windows": [[0, 4]],
         "relevant_clip_ids": [0, 1], "saliency_scores": [[4, 4, 4], [2, 2, 2]]},
        {"qid": 2, "query": "b", "vid": "v2", "duration": 20, "relevant_windows": [[10, 14]],
         "relevant_clip_ids": [5, 6], "saliency_scores": [[3, 3, 3], [4, 4, 4]]},
        {"qid": 3, "query": "c", "vid": "v3", "duration": 20, "relevant_windows": [[8, 2]]},  # dropped: end < start
    ])
    submission = write_lines(tmp_path / "sub.jsonl", [
        {"qid": 1, "pred_relevant_windows": [[10, 14, 0.2], [0, 4, 0.9]], "pred_saliency_scores": [9] + [0] * 9},
        {"qid": 2, "pred_relevant_windows": [[10, 14, 0.9]], "pred_saliency_scores": [0] * 6 + [9] + [0] * 3},
        {"qid": 3, "pred_relevant_windows": [[0, 1, 0.5]], "pred_saliency_scores": [1] * 10},
    ])
    assert main(["score", "--predictions", submission, "--ground-truth", truth, "--json"]) == 0
    captured = capsys.readouterr()
    assert "ignoring the predictions of 1 queries whose ground-truth rows were dropped: ['3']" in captured.err
    metrics = json.loads(captured.out)
    assert metrics["num_queries"] == 2 and metrics["R1@0.5"] == 100.0  # ranked by score
    assert metrics["MR-full-R1@0.5"] == 50.0  # Moment-DETR: the first listed window of query 1 misses
    assert metrics["HL-min-VeryGood-Hit1"] == 100.0 and metrics["HL-num_queries"] == 2
    assert main(["score", "--predictions", submission, "--ground-truth", truth, "--json", "--rank-as-listed"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["R1@0.5"] == listed["MR-full-R1@0.5"] == 50.0
    assert main(["score", "--predictions", submission, "--ground-truth", truth]) == 0
    table = capsys.readouterr().out
    assert "MR-full-mAP" in table and "HL-min-VeryGood-Hit1 100.00" in table
    assert main(["score", "--predictions", submission, "--ground-truth", truth, "--rank-as-listed",
                 "--nms-threshold", "0.5"]) == 2
    assert "Give one of the two" in capsys.readouterr().err
    assert main(["score", "--predictions", submission, "--ground-truth", truth, "--json", "--strict-iou"]) == 0
    assert json.loads(capsys.readouterr().out)["R1@0.5"] == 100.0  # IoU 1, above any threshold
    # Saliency scores alone against ground truth without highlight labels: nothing can be scored, said the same way
    # with or without --json (before: "{}" with --json, an internal message without).
    saliency_only = write_lines(tmp_path / "saliency.jsonl", [{"qid": 1, "pred_saliency_scores": [1] * 10}])
    plain_truth = write_lines(tmp_path / "plain.jsonl", [{"qid": 1, "duration": 20, "windows": [[0, 4]]}])
    for extra in ([], ["--json"]):
        assert main(["score", "--predictions", saliency_only, "--ground-truth", plain_truth, *extra]) == 2
        assert "Nothing to score" in capsys.readouterr().err
    queries_only = write_lines(tmp_path / "queries.jsonl", [{"qid": 1, "duration": 20, "query": "a"}])
    assert main(["score", "--predictions", submission, "--ground-truth", queries_only]) == 2
    assert "has no ground-truth windows for 1 queries, e.g. qids ['1']" in capsys.readouterr().err


# ---------------------------------------------------------------- the head inside adapters, the CLI, SynthVTG
@pytest.fixture(scope="module")
def highlight_workspace(tmp_path_factory):
    """The coloured-light workspace with QVHighlights-style labels: the clips of 2 s while the light is on."""
    pytest.importorskip("av")
    from tiny_models import tiny_clip, write_light_workspace

    root = tmp_path_factory.mktemp("highlights")
    torch.manual_seed(0)
    write_light_workspace(root, tiny_clip(), num_videos=6)
    lines = []
    for line in (root / "ann.jsonl").read_text().splitlines():
        row = json.loads(line)
        start, end = row["relevant_windows"][0]
        clips = list(range(int(start // 2), int(math.ceil(end / 2))))
        lines.append({**row, "relevant_clip_ids": clips, "saliency_scores": [[4, 3, 4]] * len(clips)})
    write_lines(root / "ann.jsonl", lines)
    return root


def test_cli_trains_scores_and_predicts_highlights(highlight_workspace, tmp_path, capsys):
    from peft_vtg.cli import main

    root = highlight_workspace
    video = ["--video-dir", str(root / "videos"), "--num-frames", "8", "--image-size", "32"]
    assert main(["train", "--base-model", str(root / "base"), "--train-annotations", str(root / "ann.jsonl"), *video,
                 "--max-steps", "3", "--per-device-train-batch-size", "3", "--head-hidden-size", "16",
                 "--head-num-attention-heads", "2", "--head-num-layers", "1", "--num-video-tokens", "0",
                 "--disable-tqdm", "true", "--output-dir", str(tmp_path / "adapter")]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["predict_saliency"] is True  # auto: the training rows have highlight labels
    capsys.readouterr()
    predictions = tmp_path / "sub.jsonl"
    assert main(["evaluate", "--adapter", str(tmp_path / "adapter"), "--annotations", str(root / "ann.jsonl"), *video,
                 "--predictions-out", str(predictions), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert {"MR-full-mAP", "MR-full-R1@0.5", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"} <= set(evaluated)
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [line["qid"] for line in lines] == [f"q{i}" for i in range(6)]
    assert all(len(line["pred_saliency_scores"]) == 4 and len(line["pred_relevant_windows"]) <= 10 for line in lines)
    assert main(["score", "--predictions", str(predictions), "--ground-truth", str(root / "ann.jsonl"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    for key in ("R1@0.5", "mIoU", "MR-full-mAP", "HL-min-VeryGood-mAP", "HL-min-Fair-Hit1"):
        assert scored[key] == pytest.approx(evaluated[key]), key
    assert main(["predict", "--adapter", str(tmp_path / "adapter"), "--video", str(root / "videos" / "v0.mp4"),
                 "--query", "the red light turns on", "--num-frames", "8", "--image-size", "32", "--saliency",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(c["start"], c["end"]) for c in out["saliency"]] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert 1 <= len(out["moments"]) <= 5


def test_saliency_head_in_adapters_ground_and_a_warning_without_it(highlight_workspace, tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModel

    from peft_vtg import VTGPromptConfig, ground
    from peft_vtg.data import VideoFiles
    from peft_vtg.training import VTGTrainingArguments, train
    from tiny_models import tiny_tokenizer

    root = highlight_workspace
    rows = list(load_annotations(root / "ann.jsonl"))
    collate = GroundingCollator(tiny_tokenizer(), VideoFiles(root / "videos", num_frames=8, image_size=32))
    head = dict(head_hidden_size=16, head_num_attention_heads=2, head_num_layers=1, num_video_tokens=0)
    plain = get_peft_model(AutoModel.from_pretrained(root / "base"), VTGPromptConfig(**head))
    assert plain.peft_config["default"].predict_saliency is False  # None resolves to False in Python
    args = VTGTrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=1, per_device_train_batch_size=3,
                                disable_tqdm=True)
    with pytest.warns(UserWarning, match="highlight labels .* no saliency head"):
        train(plain, rows, collate, args)
    model = get_peft_model(AutoModel.from_pretrained(root / "base"), VTGPromptConfig(predict_saliency=True, **head))
    out = model.forward_grounding(**collate(rows[:3]))
    assert out.saliency_logits.shape == (3, 8) and "saliency_loss" in out.loss_terms
    out.loss.backward()
    assert model.base_model._heads_of("default").grounding.saliency_head.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "saved")
    loaded = PeftModel.from_pretrained(AutoModel.from_pretrained(root / "base"), tmp_path / "saved")
    result = ground(loaded, str(root / "videos" / "v1.mp4"), "the green light turns on", tiny_tokenizer(),
                    num_frames=8, image_size=32, return_saliency=True)
    assert [clip[:2] for clip in result.saliency] == [(0, 2), (2, 4), (4, 6), (6, 8)] and result.moments
    with pytest.raises(ValueError, match="return_saliency=True needs an adapter trained with a saliency head"):
        ground(plain, str(root / "videos" / "v1.mp4"), "the green light", tiny_tokenizer(), num_frames=8,
               image_size=32, return_saliency=True)


def test_synthvtg_rows_carry_highlight_labels_from_their_events():
    from peft_vtg.synth import SynthVTG
    from peft_vtg.synth.dataset import highlight_labels

    assert highlight_labels([3.0, 7.0], 20.0) == ([1, 2, 3], [[2.0, 1.0, 1.0], [4.0, 4.0, 4.0], [2.0, 1.0, 1.0]])
    assert highlight_labels([95.0, 99.5], 99.5)[0] == [47, 48]  # clip 49 would be the 1.5 s tail
    rows, _ = SynthVTG(num_videos={"train": 3, "val": 1, "test": 1}).split("train")
    for row in rows:
        ids, scores = row["relevant_clip_ids"], row["saliency_scores"]
        start, end = row["windows"][0]
        whole_clips = int(row["duration"] / 2)  # a tail shorter than a clip has no label, as in QVHighlights
        assert ids == list(range(int(start // 2), min(int(math.ceil(end / 2)), whole_clips))) and len(scores) == len(ids)
        middle = max(scores, key=lambda s: s[0])
        assert middle[0] == 4 and all(0 <= v <= 4 for s in scores for v in s)


def test_decoding_ten_moments_leaves_r1_and_r5_as_with_five():
    """`evaluate --top-k` now defaults to 10 (what Moment-DETR's mAP reads): greedy NMS makes the first five of ten
    the five, so R@1 and R@5 do not move."""
    from peft_vtg.heads import decode_moments
    from peft_vtg.metrics import evaluate_moments

    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(40, 24, generator=generator), torch.randn(40, 24, generator=generator)
    durations = [30.0] * 40
    truth = {str(i): [[float(i % 20), float(i % 20 + 6)]] for i in range(40)}
    five, ten = (decode_moments(start, end, durations, top_k=k, nms_threshold=0.5) for k in (5, 10))
    assert all(a == b[:5] for a, b in zip(five, ten)) and any(len(b) > 5 for b in ten)
    assert evaluate_moments(dict(zip(truth, five)), truth) == evaluate_moments(dict(zip(truth, ten)), truth)
