"""`peft-vtg score`: formats, errors, and the JSON output's keys."""

import json
import re
import subprocess
import sys

import pytest

from peft_vtg.cli import main

KEYS = ["R1@0.1", "R1@0.3", "R1@0.5", "R1@0.7", "R5@0.1", "R5@0.3", "R5@0.5", "R5@0.7", "mIoU", "num_queries"]


def write_lines(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    gt = write_lines(tmp_path / "gt.jsonl", [
        {"qid": "a", "duration": 20.0, "windows": [[0.0, 10.0]]},
        {"qid": "b", "duration": 20.0, "windows": [[10.0, 20.0], [0.0, 2.0]]},
    ])
    # a: top-1 [5, 15] vs [0, 10]: intersection 5, union 15 -> IoU 1/3; a's second prediction is exact (R@5).
    # b: top-1 [0, 2] matches b's second window exactly (best IoU over several windows).
    pred = write_lines(tmp_path / "pred.jsonl", [
        {"qid": "a", "pred_windows": [[5.0, 15.0, 0.9], [0.0, 10.0, 0.8]]},
        {"qid": "b", "pred_windows": [[0.0, 2.0, 0.7]]},
    ])
    return gt, pred


def test_score_json_hand_computed(files, capsys):
    gt, pred = files
    assert main(["score", "--predictions", pred, "--ground-truth", gt, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics)[: len(KEYS)] == KEYS
    assert {"MR-full-mAP", "MR-full-R1@0.5"} <= set(metrics) and all(k.startswith("MR-") for k in list(metrics)[len(KEYS):])
    assert metrics["num_queries"] == 2
    assert metrics["R1@0.3"] == 100.0 and metrics["R1@0.5"] == 50.0  # a's top-1 IoU is 1/3
    assert metrics["R5@0.7"] == 100.0
    assert metrics["mIoU"] == pytest.approx(100 * (1 / 3 + 1) / 2)


def test_score_table(files, capsys):
    gt, pred = files
    assert main(["score", "--predictions", pred, "--ground-truth", gt]) == 0
    out = capsys.readouterr().out
    assert "R@1" in out and "R@5" in out and "mIoU  66.67" in out


def test_a_missing_input_file_is_named_by_its_flag(files, tmp_path, capsys):
    gt, pred = files
    missing = str(tmp_path / "nowhere.jsonl")
    cases = [(["score", "--predictions", pred, "--ground-truth", missing], "--ground-truth"),
             (["score", "--predictions", missing, "--ground-truth", gt], "--predictions"),
             (["train", "--base-model", "b", "--train-annotations", gt, "--config", missing], "--config"),
             (["predict", "--adapter", "a", "--videos", str(tmp_path), "--queries", missing, "--output",
               str(tmp_path / "p.jsonl")], "--queries")]
    for argv, flag in cases:
        assert main(argv) == 2, flag
        # the flag that gave the path, not Python's "[Errno 2] ...: '...'" (nor a guess at the file's format)
        assert capsys.readouterr().err.strip().endswith(f"error: {flag} {missing}: No such file or directory."), flag


def test_missing_and_duplicate_qids_are_named(files, tmp_path, capsys):
    gt, _ = files
    only_a = write_lines(tmp_path / "p1.jsonl", [{"qid": "a", "pred_windows": [[0, 1, 1]]}])
    assert main(["score", "--predictions", only_a, "--ground-truth", gt]) == 2
    assert "missing predictions for ['b']" in capsys.readouterr().err
    twice = write_lines(tmp_path / "p2.jsonl", [{"qid": "a", "pred_windows": [[0, 1, 1]]}] * 2)
    assert main(["score", "--predictions", twice, "--ground-truth", gt]) == 2
    assert "duplicate qids ['a']" in capsys.readouterr().err
    gt_twice = write_lines(tmp_path / "g.jsonl", [{"qid": "a", "duration": 5, "windows": [[0, 1]]}] * 2)
    assert main(["score", "--predictions", only_a, "--ground-truth", gt_twice]) == 2
    assert "duplicate qid 'a'" in capsys.readouterr().err


def test_native_charades_ground_truth(tmp_path, capsys):
    (tmp_path / "sta.txt").write_text("AAAAA 1.0 5.0##person opens the door.\nAAAAA 2.0 30.0##person sits.\n")
    (tmp_path / "meta.csv").write_text("id,length\nAAAAA,20.0\n")
    pred = write_lines(tmp_path / "p.jsonl", [{"qid": "AAAAA_0", "pred_windows": [[1.0, 5.0, 1.0]]},
                                             {"qid": "AAAAA_1", "pred_windows": [[2.0, 20.0, 1.0]]}])
    code = main(["score", "--predictions", pred, "--ground-truth", str(tmp_path / "sta.txt"),
                 "--durations", str(tmp_path / "meta.csv"), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["mIoU"] == 100.0  # the second window is clipped to 20 s
    assert "clipped 1 (end beyond duration)" in captured.err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "peft_vtg", "score", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--ground-truth" in result.stdout and "--json" in result.stdout


def _score(tmp_path, capsys, truth_rows, prediction_rows, *flags):
    """Exit code and (stdout, stderr) of `score` on these rows written as JSON lines."""
    truth = write_lines(tmp_path / "gt.jsonl", truth_rows)
    predictions = write_lines(tmp_path / "pred.jsonl", prediction_rows)
    code = main(["score", "--predictions", predictions, "--ground-truth", truth, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_highlight_rows_of_different_clip_lengths_are_refused_not_scored_with_the_first(tmp_path, capsys):
    labels = {"relevant_clip_ids": [0, 1, 2, 3], "saliency_scores": [[4, 4, 4]] * 4}
    truth = [{"qid": 1, "duration": 20, "windows": [[0, 4]]},  # no labels: its clip length is the default 2 s
             {"qid": 2, "duration": 20, "windows": [[0, 4]], **labels, "clip_length": 1}]
    saliency = [0] * 10 + [1] * 10  # one score per 1-s clip: the labelled clips 0-3 score lowest
    predictions = [{"qid": 1, "pred_relevant_windows": [[0, 4, 1]]},
                   {"qid": 2, "pred_relevant_windows": [[0, 4, 1]], "pred_saliency_scores": saliency}]
    code, out, _ = _score(tmp_path, capsys, truth, predictions, "--json")
    # Scored with qid 2's own 1-s clips (the first row's 2 s made it 40.0): hand-computed, the four positives rank
    # below the 10 highest clips; AP over the 20 clips by the reference's get_ap is 20.0 for each annotator.
    assert code == 0 and json.loads(out)["HL-min-Fair-mAP"] == pytest.approx(20.0)
    other = {**labels, "relevant_clip_ids": [0, 1], "saliency_scores": [[4, 4, 4]] * 2}
    truth.append({"qid": 3, "duration": 20, "windows": [[0, 4]], **other, "clip_length": 2})
    predictions.append({"qid": 3, "pred_relevant_windows": [[0, 4, 1]], "pred_saliency_scores": [1] * 10})
    code, _, err = _score(tmp_path, capsys, truth, predictions)
    assert code == 2 and "different clip lengths (1 s (qid '2'), 2 s (qid '3'))" in err


@pytest.mark.parametrize("truth, prediction, message", [
    # an integer beyond float range (JSON allows any size): named, not an OverflowError traceback
    ({"qid": 1, "duration": 100, "windows": [[10, 20]]},
     '{"qid": 1, "pred_relevant_windows": [[10, 20, 1]], "pred_saliency_scores": [1' + "0" * 400 + "]}",
     r"pred.jsonl, line 1 \(qid '1'\): 'pred_saliency_scores', clip 0: 1000+ is not a finite number"),
    # an integer literal too long for Python to read at all
    ({"qid": 1, "duration": 100, "windows": [[10, 20]]},
     '{"qid": 1, "pred_relevant_windows": [[10, 20, 1' + "0" * 5000 + "]]}",
     r"pred.jsonl, line 1: a value cannot be read"),
    # a null duration is an error, not a row dropped with a note (which scored the other rows alone)
    ({"qid": 2, "duration": None, "windows": [[10, 20]]}, '{"qid": 2, "pred_relevant_windows": [[70, 80, 1]]}',
     r"gt.jsonl, line 2: 'duration' must be a finite number of seconds > 0, got None"),
    # a clip length in the wrong unit would allocate terabytes of labels
    ({"qid": 2, "duration": 100, "windows": [[10, 20]], "relevant_clip_ids": [0], "saliency_scores": [[1]],
      "clip_length": 1e-9}, '{"qid": 2, "pred_relevant_windows": [[10, 20, 1]]}',
     r"gt.jsonl, line 2: 'clip_length': a clip_length of 1e-09 s cuts the 100.0 s video into more than 1,000,000"),
    # two keys for the windows that disagree: neither is silently preferred
    ({"qid": 2, "duration": 100, "windows": [[10, 20]]},
     '{"qid": 2, "pred_relevant_windows": [[10, 20, 1]], "pred_windows": [[50, 60, 1]]}',
     r"pred.jsonl, line 2 \(qid '2'\): both 'pred_relevant_windows' and 'pred_windows' hold windows"),
    ({"qid": 2, "duration": 100, "windows": [[10, 20]], "relevant_windows": [[30, 40]]},
     '{"qid": 2, "pred_relevant_windows": [[10, 20, 1]]}',
     r"gt.jsonl, line 2: both 'relevant_windows' and 'windows' hold windows \(qid 2\)"),
    # an empty list of predictions is named by its line
    ({"qid": 2, "duration": 100, "windows": [[10, 20]]}, '{"qid": 2, "pred_relevant_windows": []}',
     r"pred.jsonl, line 2 \(qid '2'\): 'pred_relevant_windows' is empty"),
])
def test_score_names_bad_values_by_file_line_and_field(tmp_path, capsys, truth, prediction, message):
    first = {"qid": 1, "duration": 100, "windows": [[10, 20]]}
    rows = [truth] if truth["qid"] == 1 else [first, truth]
    (tmp_path / "gt.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    lines = [prediction] if truth["qid"] == 1 else ['{"qid": 1, "pred_relevant_windows": [[10, 20, 1]]}', prediction]
    (tmp_path / "pred.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["score", "--predictions", str(tmp_path / "pred.jsonl"), "--ground-truth", str(tmp_path / "gt.jsonl")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and captured.out == ""
    assert re.search(message, captured.err), captured.err


def test_score_messages_stay_short_and_point_at_the_real_problem(tmp_path, capsys):
    # A whole ActivityNet-style file given as predictions: thousands of keys on one line, shown as the first few.
    videos = {f"v_{k:05d}": {"duration": 10.0, "timestamps": [[0, 1]], "sentences": ["x"]} for k in range(3000)}
    (tmp_path / "wrong.json").write_text(json.dumps(videos))
    truth = write_lines(tmp_path / "gt.jsonl", [{"qid": 1, "duration": 100, "windows": [[10, 20]]}])
    assert main(["score", "--predictions", str(tmp_path / "wrong.json"), "--ground-truth", truth]) == 2
    err = capsys.readouterr().err
    assert "no 'qid'" in err and "(3000 in all)" in err and len(err) < 1000
    # Every prediction belongs to a row the reader dropped: the kept queries lack predictions (not "saliency only").
    truth = write_lines(tmp_path / "gt2.jsonl", [{"qid": 1, "duration": 100, "windows": [[10, 20]]},
                                                 {"qid": 2, "duration": 100, "windows": [[30, 20]]}])
    only_dropped = write_lines(tmp_path / "p2.jsonl", [{"qid": 2, "pred_relevant_windows": [[0, 1, 1]]}])
    assert main(["score", "--predictions", only_dropped, "--ground-truth", truth]) == 2
    err = capsys.readouterr().err
    assert "missing predictions for ['1']" in err and "saliency" not in err.split("error:")[1]
    # JSON lines under a .json name: the hint says which format to give
    (tmp_path / "lines.json").write_text('{"qid": 1, "duration": 100, "windows": [[10, 20]]}\n' * 2)
    assert main(["score", "--predictions", only_dropped, "--ground-truth", str(tmp_path / "lines.json")]) == 2
    assert "give format='jsonl' (--format jsonl)" in capsys.readouterr().err
    # a directory is named by its flag
    assert main(["score", "--predictions", str(tmp_path), "--ground-truth", truth]) == 2
    assert f"error: --predictions {tmp_path}: is a directory" in capsys.readouterr().err


def test_a_pipe_is_not_read_twice_to_guess_its_format(tmp_path):
    import os

    from peft_vtg.data import detect_format

    os.mkfifo(tmp_path / "gt.json")
    with pytest.raises(ValueError, match=r"not a regular file \(a pipe\?\).*pass format="):
        detect_format(tmp_path / "gt.json")
