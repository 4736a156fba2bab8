"""`peft-vtg train -> evaluate -> predict -> push` end to end on a tiny saved base model and generated videos, and
every setting documented in `--help`."""

import dataclasses
import json

import pytest

from peft_vtg.cli import build_parser, main
from tiny_models import tiny_clip, write_light_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny CLIP + tokenizer, 8 videos (8 s, 1 fps) where the queried colour fills the moment, annotations."""
    root = tmp_path_factory.mktemp("cli")
    write_light_workspace(root, tiny_clip(), num_videos=8)
    return root


DATA = ["--video-dir", None, "--num-frames", "8", "--image-size", "32"]


def data_flags(root):
    return [str(root / "videos") if flag is None else flag for flag in DATA]


def test_train_evaluate_predict_push(workspace, tmp_path, capsys, monkeypatch):
    root = workspace
    out = tmp_path / "adapter"
    (tmp_path / "settings.json").write_text(json.dumps({"seed": 1, "vtm_heads": ["violet"], "max_steps": 2}))
    code = main([
        "train", "--config", str(tmp_path / "settings.json"), "--base-model", str(root / "base"),
        "--train-annotations", str(root / "ann.jsonl"), "--eval-annotations", str(root / "ann.jsonl"),
        *data_flags(root), "--output-dir", str(out), "--max-steps", "6", "--per-device-train-batch-size", "4",
        "--learning-rate", "0.005", "--num-video-tokens", "2", "--num-text-tokens", "2", "--head-hidden-size", "16",
        "--head-num-attention-heads", "2", "--head-num-layers", "1", "--disable-tqdm", "true", "--eval-steps", "3",
    ])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "trainable parameters:" in printed.err and "R@1" in printed.out and "adapter saved to" in printed.out
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json", "run.json"} <= {
        p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["vtm_heads"] == ["violet"]  # from the config file
    assert config["num_video_tokens"] == 2 and config["base_model_name_or_path"] == str(root / "base")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_queries"] == 8 and metrics["step"] in (3, 6)  # --max-steps 6 beat the file's 2
    run = json.loads((out / "run.json").read_text())
    assert run["training_arguments"]["seed"] == 1 and run["base_model"] == str(root / "base")

    # evaluate, without --base-model: the adapter records it
    predictions = tmp_path / "predictions.jsonl"
    code = main(["evaluate", "--adapter", str(out), "--annotations", str(root / "ann.jsonl"), *data_flags(root),
                 "--json", "--predictions-out", str(predictions)])
    evaluated = json.loads(capsys.readouterr().out)
    assert code == 0 and evaluated["num_queries"] == 8
    # the written predictions score to the same numbers
    assert main(["score", "--predictions", str(predictions), "--ground-truth", str(root / "ann.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(evaluated)

    code = main(["predict", "--adapter", str(out), "--video", str(root / "videos" / "v0.mp4"),
                 "--query", "the red light turns on", "--num-frames", "8", "--image-size", "32", "--json"])
    moments = json.loads(capsys.readouterr().out)
    assert code == 0 and 1 <= len(moments) <= 5
    assert all(0.0 <= m["start"] < m["end"] <= 8.0 + 1e-6 for m in moments)

    # continue training the saved adapter (its config comes from the adapter, not from flags)
    code = main(["train", "--adapter", str(out), "--train-annotations", str(root / "ann.jsonl"), *data_flags(root),
                 "--output-dir", str(tmp_path / "continued"), "--max-steps", "1", "--disable-tqdm", "true"])
    assert code == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    assert json.loads((tmp_path / "continued" / "adapter_config.json").read_text())["vtm_heads"] == ["violet"]
    code = main(["train", "--adapter", str(out), "--train-annotations", str(root / "ann.jsonl"), *data_flags(root),
                 "--output-dir", str(tmp_path / "x"), "--num-video-tokens", "4"])
    assert code == 2 and "cannot change the existing adapter" in capsys.readouterr().err

    from huggingface_hub import HfApi

    uploads = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: uploads.setdefault("repo", repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.update(kw) or "https://hub.local/commit/1")
    assert main(["push", "--adapter", str(out), "--repo-id", "someone/tiny-vtg"]) == 0
    assert uploads["repo"] == uploads["repo_id"] == "someone/tiny-vtg"
    assert "adapter_model.safetensors" in uploads["allow_patterns"] and "README.md" in uploads["allow_patterns"]
    card = (out / "README.md").read_text()
    # local paths appear as their last component only (no directory layout or user name on the Hub)
    assert "base_model: base\n" in card and "| R@1 |" in card and "`ann.jsonl`" in card and str(root) not in card
    assert 'PeftModel.from_pretrained(base, "someone/tiny-vtg")' in card and "num_video_tokens" in card


def test_every_setting_has_a_documented_flag(capsys):
    from peft_vtg.cli.common import config_field_names
    from peft_vtg.training import VTGTrainingArguments

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in config_field_names() + [f.name for f in dataclasses.fields(VTGTrainingArguments)]:
        assert "--" + name.replace("_", "-") in text, name
    assert "base_architecture" not in text and "--num-virtual-tokens" not in text  # filled in automatically
    for command in ("evaluate", "predict", "push", "score"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "usage: peft-vtg " + command in capsys.readouterr().out


def test_bad_settings_are_named(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"num_video_token": 4}))
    code = main(["train", "--config", str(tmp_path / "bad.json"), "--train-annotations", "x.jsonl",
                 "--base-model", "x"])
    assert code == 2 and "unknown settings ['num_video_token']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--train-annotations", "x", "--couple-video-to-text", "maybe"])
    assert "expected true or false" in capsys.readouterr().err


def test_dataclass_flags_keep_their_names_and_leave_the_config_file_alone():
    """The flags HfArgumentParser builds from the dataclasses: dashed names as before (and underscored ones),
    only the flags given reach the settings (the rest come from --config or the dataclass), and the value forms
    users have: true/false, none/auto, several values or none for lists, JSON for dicts."""
    parse = build_parser().parse_args
    base = ["train", "--train-annotations", "a.jsonl"]
    args = parse([*base, "--num-video-tokens", "4", "--num_text_tokens", "2", "--predict-saliency", "auto",
                  "--head-hadamard-fusion", "false", "--disable-tqdm", "--vtm-heads", "violet", "all_in_one",
                  "--tokenizer-kwargs", '{"use_fast": true}', "--max-steps", "none"])
    given = {k: v for k, v in vars(args).items() if k in ("num_video_tokens", "num_text_tokens", "predict_saliency",
                                                          "head_hadamard_fusion", "disable_tqdm", "vtm_heads",
                                                          "tokenizer_kwargs", "max_steps")}
    assert given == {"num_video_tokens": 4, "num_text_tokens": 2, "predict_saliency": None,
                     "head_hadamard_fusion": False, "disable_tqdm": True, "vtm_heads": ["violet", "all_in_one"],
                     "tokenizer_kwargs": {"use_fast": True}, "max_steps": None}
    assert parse([*base, "--vtm-heads"]).vtm_heads == []
    untouched = vars(parse(base))
    assert not set(untouched) & set(config_field_names_and_training())  # nothing given: nothing overrides a file
    with pytest.raises(SystemExit):
        parse([*base, "--num-video-tokens", "four"])


def config_field_names_and_training():
    from peft_vtg.cli.common import config_field_names, training_field_names

    return config_field_names() + training_field_names()


def test_train_on_long_video_windows(workspace, tmp_path, capsys, monkeypatch):
    from peft_vtg.data import windows

    root, out = workspace, tmp_path / "adapter"
    drawn = []
    original = windows.LongVideoWindowCollator._window
    monkeypatch.setattr(windows.LongVideoWindowCollator, "_window",
                        lambda self, row: drawn.append(original(self, row)) or drawn[-1])
    code = main(["train", "--base-model", str(root / "base"), "--train-annotations", str(root / "ann.jsonl"),
                 "--eval-annotations", str(root / "ann.jsonl"), *data_flags(root), "--output-dir", str(out),
                 "--max-steps", "2", "--per-device-train-batch-size", "4", "--num-video-tokens", "2",
                 "--head-hidden-size", "16", "--head-num-attention-heads", "2", "--head-num-layers", "1",
                 "--disable-tqdm", "--long-video-windows", "1", "--long-video-absent-fraction", "0.5",
                 "--presence-contrast-loss-weight", "1"])
    assert code == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    assert len(drawn) == 8 and all(window is not None for window in drawn)  # every training row got a window
    assert {holds for _, _, holds in drawn} <= {True, False}
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["trained_window_frames"], config["trained_window_seconds"]) == (8, 8.0)
    assert config["presence_contrast_loss_weight"] == 1.0
    assert json.loads((out / "metrics.json").read_text())["num_queries"] == 8  # evaluated on the whole videos
    for flags, message in ((["--long-video-windows", "2"], "must be a fraction in \\[0, 1\\]"),
                           (["--long-video-absent-fraction", "x"], "expected a fraction")):
        with pytest.raises(SystemExit):
            main(["train", "--base-model", str(root / "base"), "--train-annotations", str(root / "ann.jsonl"),
                  *data_flags(root), "--output-dir", str(tmp_path / "bad"), *flags])
        assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
