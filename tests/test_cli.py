"""`peft-vtg score`: formats, errors, and the JSON output's keys."""

import json
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
