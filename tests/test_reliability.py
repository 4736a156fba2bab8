"""Bad input in, clear error out, nothing written (issue #12).

Each case is one line of a table: a builder that writes the bad file(s) into a fresh directory, the call (Python API)
or the command line, the expected exception type and a regex the message must match. Command-line cases also check
the exit code (non-zero), that the message is on stderr with no traceback, that stdout stays empty, and that no file
in the case's directory was created or modified (so --predictions-out / --output-dir were never written).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModel

from peft_vtg import ground, ground_queries
from peft_vtg.cli import main, read_predictions
from peft_vtg.data import (
    FeatureDirectory,
    GroundingCollator,
    VideoFiles,
    decode_video,
    load_annotations,
    load_feature_file,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
    read_moment_jsonl,
    read_tacos,
    resample_features,
)
from peft import get_peft_model
from peft_vtg import VTGPromptConfig
from peft_vtg.heads import decode_moments
from peft_vtg.metrics import evaluate_moments, format_table
from peft_vtg.training import VTGTrainingArguments
from tiny_models import tiny_clip, tiny_tokenizer, write_video

pytest.importorskip("av")
h5py = pytest.importorskip("h5py")

DIM = 48  # video_feature_size of tiny_clip: what the features of the workspace adapter must have
ROW = {"qid": "q0", "vid": "v0", "query": "the red light turns on", "duration": 5.0, "windows": [[1.0, 2.0]]}


# ---------------------------------------------------------------- workspace: a good base, adapter, video, features
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A saved tiny CLIP + tokenizer (`base`), a VTG adapter without video prompts recording it (`adapter`), a 5 s
    video `videos/v0.mp4`, its features `feats/v0.npy`, and annotations `ann.jsonl` for it."""
    from peft import get_peft_model
    from transformers import CLIPModel

    from peft_vtg import VTGPromptConfig
    from tiny_models import tiny_clip

    root = tmp_path_factory.mktemp("reliability")
    tiny_clip().save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    config = VTGPromptConfig(num_video_tokens=0, num_text_tokens=2, head_hidden_size=16, head_num_attention_heads=2,
                             head_num_layers=1)
    model = get_peft_model(CLIPModel.from_pretrained(str(root / "base")), config)
    model.save_pretrained(root / "adapter")
    assert model.base_model.model.vtg_prompts.bound.video_feature_size == DIM
    (root / "videos").mkdir()
    frames = (np.random.default_rng(0).random((20, 32, 32, 3)) * 255).astype(np.uint8)
    write_video(root / "videos" / "v0.mp4", frames, fps=4)  # 20 frames at 4 fps: 5 s
    (root / "feats").mkdir()
    np.save(root / "feats" / "v0.npy", np.ones((5, DIM), np.float32))
    (root / "ann.jsonl").write_text(json.dumps(ROW) + "\n")
    return root


@pytest.fixture(scope="module")
def model(ws):
    from peft import PeftModel
    from transformers import CLIPModel

    return PeftModel.from_pretrained(CLIPModel.from_pretrained(str(ws / "base")), str(ws / "adapter"))


# ---------------------------------------------------------------- builders (each writes into the case directory)
Builder = Callable[[Path, Path], None]


def nothing(tmp: Path, ws: Path) -> None:
    pass


def text(name: str, content: str) -> Builder:
    def build(tmp, ws):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content, encoding="utf-8")
    return build


def data(name: str, content: bytes) -> Builder:
    def build(tmp, ws):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    return build


def rows(name: str, *entries: Any) -> Builder:
    """JSON lines; a str entry is written as is (for NaN / Infinity literals and broken lines)."""
    return text(name, "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))


def row(**changes: Any) -> dict:
    return {**ROW, **changes}


def npy(name: str, array: np.ndarray) -> Builder:
    def build(tmp, ws):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp / name, array)
    return build


def npy_truncated(name: str) -> Builder:
    def build(tmp, ws):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp / name, np.ones((50, DIM), np.float32))
        (tmp / name).write_bytes((tmp / name).read_bytes()[:300])
    return build


def safetensors_inf(name: str) -> Builder:
    def build(tmp, ws):
        from safetensors.numpy import save_file

        array = np.ones((4, DIM), np.float32)
        array[2, 3] = np.inf
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": array}, str(tmp / name))
    return build


def audio_only(name: str) -> Builder:
    def build(tmp, ws):
        import av

        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(tmp / name), "w") as container:
            stream = container.add_stream("aac", rate=16000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
    return build


def adapter_copy(edit: Callable[[Path], None]) -> Builder:
    """A copy of the workspace adapter at `adapter`, changed by `edit`."""
    def build(tmp, ws):
        import shutil

        shutil.copytree(ws / "adapter", tmp / "adapter")
        edit(tmp / "adapter")
    return build


def without_peft_type(path: Path) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    del config["peft_type"]
    (path / "adapter_config.json").write_text(json.dumps(config))


def without_weights(path: Path) -> None:
    (path / "adapter_model.safetensors").unlink()


def pickled_weights(path: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(str(path / "adapter_model.safetensors")), path / "adapter_model.bin")
    (path / "adapter_model.safetensors").unlink()


def both(*builders: Builder) -> Builder:
    def build(tmp, ws):
        for builder in builders:
            builder(tmp, ws)
    return build


NAN_FEATURES = np.ones((5, DIM), np.float32)
NAN_FEATURES[3, 0] = np.nan
ANET = {"v_x": {"duration": 10.0, "timestamps": [[1.0, 2.0]], "sentences": ["a person opens the door"]}}


def features_nan(ws):
    return torch.from_numpy(NAN_FEATURES)


# ---------------------------------------------------------------- the API table
# (id, builder, call(tmp, ws, model), exception, message regex)
API_CASES = [
    # sampling settings
    ("videofiles-num-frames-0", nothing, lambda t, w, m: VideoFiles(w / "videos", num_frames=0), ValueError,
     r"num_frames must be a whole number of frames >= 1, got 0"),
    ("videofiles-num-frames-negative", nothing, lambda t, w, m: VideoFiles(w / "videos", num_frames=-4), ValueError,
     r"num_frames .* >= 1, got -4"),
    ("videofiles-fps-0", nothing, lambda t, w, m: VideoFiles(w / "videos", fps=0), ValueError,
     r"fps must be a finite number > 0 \(frames per second\), got 0"),
    ("videofiles-fps-negative", nothing, lambda t, w, m: VideoFiles(w / "videos", fps=-2.0), ValueError, r"fps .* > 0"),
    ("videofiles-fps-nan", nothing, lambda t, w, m: VideoFiles(w / "videos", fps=math.nan), ValueError,
     r"fps must be a finite number > 0.*nan"),
    ("videofiles-fps-inf", nothing, lambda t, w, m: VideoFiles(w / "videos", fps=math.inf), ValueError,
     r"fps must be a finite number > 0.*inf"),
    ("videofiles-image-size-0", nothing, lambda t, w, m: VideoFiles(w / "videos", num_frames=4, image_size=0),
     ValueError, r"image_size must be a whole number of pixels >= 1, got 0"),
    ("ground-top-k-0", nothing, lambda t, w, m: ground(m, features_nan(w).nan_to_num(), "a door", tiny_tokenizer(),
                                                      duration=5.0, top_k=0),
     ValueError, r"top_k must be a whole number of moments >= 1, got 0"),
    ("collator-max-text-length-0", nothing,
     lambda t, w, m: GroundingCollator(tiny_tokenizer(), FeatureDirectory(w / "feats"), max_text_length=0),
     ValueError, r"max_text_length must be a whole number of tokens >= 1, got 0"),
    ("videofiles-missing-dir", nothing, lambda t, w, m: VideoFiles(t / "nowhere", num_frames=4), FileNotFoundError,
     r"Video directory .*nowhere does not exist"),
    ("decode-num-frames-0", nothing, lambda t, w, m: decode_video(w / "videos/v0.mp4", num_frames=0), ValueError,
     r"num_frames .* >= 1, got 0"),
    ("resample-to-0-bins", nothing, lambda t, w, m: resample_features(np.ones((4, 3)), 0), ValueError,
     r"num_frames .* >= 1, got 0"),
    ("ground-num-frames-0", nothing, lambda t, w, m: ground(m, w / "videos/v0.mp4", "a door", tiny_tokenizer(),
                                                             num_frames=0), ValueError, r"num_frames .* >= 1, got 0"),
    ("ground-fps-nan", nothing, lambda t, w, m: ground(m, w / "videos/v0.mp4", "a door", tiny_tokenizer(),
                                                        fps=math.nan), ValueError, r"fps must be a finite number"),
    ("ground-image-size-0", nothing, lambda t, w, m: ground(m, w / "videos/v0.mp4", "a door", tiny_tokenizer(),
                                                             image_size=0), ValueError, r"image_size .* >= 1"),
    ("ground-duration-nan", nothing, lambda t, w, m: ground(m, torch.ones(5, DIM), "a door", tiny_tokenizer(),
                                                             duration=math.nan), ValueError,
     r"duration of video 0 must be a finite number > 0"),
    # NaN / Inf input to ground() raises instead of returning []
    ("ground-features-nan", nothing, lambda t, w, m: ground(m, features_nan(w), "a door", tiny_tokenizer(),
                                                             duration=5.0), ValueError,
     r"video 0 \(features\): 1 frame\(s\) hold NaN or Inf values \(first at frames \[3\]\)"),
    ("ground-features-inf", nothing, lambda t, w, m: ground(m, torch.full((5, DIM), math.inf), "a door",
                                                             tiny_tokenizer(), duration=5.0), ValueError,
     r"NaN or Inf"),
    ("ground-frames-nan", nothing, lambda t, w, m: ground(m, torch.full((4, 3, 32, 32), math.nan), "a door",
                                                           tiny_tokenizer(), duration=5.0), ValueError,
     r"Video 0: its frames hold NaN or Inf"),
    # feature files
    ("features-0-byte-npy", data("f/v0.npy", b""), lambda t, w, m: load_feature_file(t / "f/v0.npy"), ValueError,
     r"v0.npy is empty \(0 bytes\); re-extract"),
    ("features-truncated-npy", npy_truncated("f/v0.npy"), lambda t, w, m: load_feature_file(t / "f/v0.npy"),
     ValueError, r"v0.npy cannot be read as a .npy feature file .*truncated"),
    ("features-nan-npy", npy("f/v0.npy", NAN_FEATURES), lambda t, w, m: FeatureDirectory(t / "f")("v0"), ValueError,
     r"f/v0.npy: 1 frame\(s\) hold NaN or Inf values"),
    ("features-inf-safetensors", safetensors_inf("f/v0.safetensors"), lambda t, w, m: FeatureDirectory(t / "f")("v0"),
     ValueError, r"v0.safetensors: 1 frame\(s\) hold NaN or Inf values \(first at frames \[2\]\)"),
    ("features-zero-frames", npy("f/v0.npy", np.ones((0, DIM), np.float32)),
     lambda t, w, m: load_feature_file(t / "f/v0.npy"), ValueError, r"v0.npy: features are empty, shape \(0, 48\)"),
    ("features-text-dtype", npy("f/v0.npy", np.array([["a", "b"]])), lambda t, w, m: load_feature_file(t / "f/v0.npy"),
     ValueError, r"v0.npy: features must be real numbers, got dtype <U1"),
    ("features-wrong-size", npy("f/v0.npy", np.ones((5, 7), np.float32)),
     lambda t, w, m: FeatureDirectory(t / "f", dim=DIM)("v0"), ValueError,
     r"v0.npy: features have 7 values per frame but the model expects 48"),
    ("features-garbage-npz", data("f/v0.npz", b"not a zip" * 20), lambda t, w, m: load_feature_file(t / "f/v0.npz"),
     ValueError, r"v0.npz cannot be read as a .npz feature file"),
    ("features-garbage-h5", data("f/v0.h5", b"not hdf5" * 20), lambda t, w, m: load_feature_file(t / "f/v0.h5"),
     ValueError, r"v0.h5 cannot be read as a .h5 feature file"),
    ("features-garbage-safetensors", data("f/v0.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"),
     lambda t, w, m: load_feature_file(t / "f/v0.safetensors"), ValueError,
     r"v0.safetensors cannot be read as a .safetensors feature file"),
    ("features-pt-only", data("f/v0.pt", b"\x80\x04K\x01."), lambda t, w, m: FeatureDirectory(t / "f")("v0"),
     FileNotFoundError, r"There is v0.pt, but pickled files are never loaded; convert it to .safetensors"),
    ("features-pt-file", data("f/v0.pt", b"\x80\x04K\x01."), lambda t, w, m: load_feature_file(t / "f/v0.pt"),
     ValueError, r"v0.pt: .pt files are read by unpickling .* never loads them"),
    # ids must not leave the directory
    ("features-id-dotdot", npy("secret.npy", np.ones((2, DIM), np.float32)),
     lambda t, w, m: FeatureDirectory(w / "feats")(os.path.relpath(t / "secret", w / "feats")), ValueError,
     r"Video id '\.\./.*secret' is not a plain file name"),
    ("features-id-absolute", npy("secret.npy", np.ones((2, DIM), np.float32)),
     lambda t, w, m: FeatureDirectory(w / "feats")(str(t / "secret")), ValueError, r"Video id '/.*' is not a plain"),
    ("videos-id-dotdot", nothing, lambda t, w, m: VideoFiles(w / "feats", num_frames=2)("../videos/v0"), ValueError,
     r"Video id '\.\./videos/v0' is not a plain file name"),
    # video files
    ("video-0-byte", data("v.mp4", b""), lambda t, w, m: decode_video(t / "v.mp4", num_frames=2), ValueError,
     r"Video file .*v.mp4 is empty \(0 bytes\)"),
    ("video-garbage", data("v.mp4", b"garbage!" * 100), lambda t, w, m: decode_video(t / "v.mp4", num_frames=2),
     ValueError, r"Video file .*v.mp4 cannot be decoded .*damaged"),
    ("video-audio-only", audio_only("a.m4a"), lambda t, w, m: decode_video(t / "a.m4a", num_frames=2), ValueError,
     r"a.m4a has no video stream \(its streams: audio\)"),
    ("ground-audio-only", audio_only("a.m4a"), lambda t, w, m: ground(m, t / "a.m4a", "a door", tiny_tokenizer()),
     ValueError, r"a.m4a has no video stream"),
    # annotation files
    ("charades-without-durations", text("sta.txt", "AAAAA 1.0 5.0##a person sits.\n"),
     lambda t, w, m: read_charades_sta(t / "sta.txt"), ValueError, r"carry no video durations; pass durations= "
     r"\(command line: --durations\) .*Charades_v1_test.csv"),
    ("load-charades-without-durations", text("sta.txt", "AAAAA 1.0 5.0##a person sits.\n"),
     lambda t, w, m: load_annotations(t / "sta.txt"), ValueError, r"--durations.*Charades_v1_test.csv"),
    ("durations-for-jsonl", rows("a.jsonl", ROW), lambda t, w, m: load_annotations(t / "a.jsonl", durations={}),
     ValueError, r"durations= \(--durations\) does not apply to .*a.jsonl, read as 'jsonl'"),
    ("windows-a-number", rows("a.jsonl", row(windows=5)), lambda t, w, m: read_moment_jsonl(t / "a.jsonl"),
     ValueError, r"a.jsonl, line 1: 'windows' must be a list of \[start, end\] windows, got 5"),
    ("windows-flat-pair", rows("a.jsonl", row(relevant_windows=[1, 2], windows=None)),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError,
     r"line 1: 'relevant_windows' item 0 must be \[start, end\] \(seconds\), got 1; for a single window write "
     r"\[\[start, end\]\]"),
    # end < start is dropped and a start before 0 clipped (known benchmark dirt, with a warning); strict=True refuses
    ("window-start-after-end-strict", rows("a.jsonl", row(windows=[[3.0, 1.0]])),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl", strict=True), ValueError,
     r"a.jsonl, line 1: end before start. \(strict=True; strict=False would drop it"),
    ("window-start-after-end-only-row", rows("a.jsonl", row(windows=[[3.0, 1.0]])),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError,
     r"None of the pairs in .*a.jsonl is usable: .*dropped 1 \(end before start\)"),
    ("window-negative-strict", rows("a.jsonl", row(windows=[[-2.0, 1.0]])),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl", strict=True), ValueError,
     r"line 1: start before 0. \(strict=True; strict=False would clip it"),
    ("window-nan", rows("a.jsonl", '{"qid": "q0", "query": "q", "duration": 5, "windows": [[NaN, 1.0]]}'),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError, r"line 1: 'windows' \[nan, 1.0\] has a non-finite"),
    ("window-inf", rows("a.jsonl", '{"qid": "q0", "query": "q", "duration": 5, "windows": [[0, Infinity]]}'),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError, r"line 1: 'windows' \[0, inf\] has a non-finite"),
    ("window-text-times", rows("a.jsonl", row(windows=[["1", "2"]])),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError, r"start and end must be numbers \(seconds\)"),
    ("query-a-list", rows("a.jsonl", row(query=["a door", "opens"])), lambda t, w, m: read_moment_jsonl(t / "a.jsonl"),
     ValueError, r"line 1: 'query' must be a string, got list"),
    ("qid-a-list", rows("a.jsonl", row(qid=[1])), lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError,
     r"line 1: 'qid' must be a non-empty string or an integer, got \[1\]"),
    ("duration-text", rows("a.jsonl", row(duration="ten")), lambda t, w, m: read_moment_jsonl(t / "a.jsonl"),
     ValueError, r"line 1: 'duration' must be a finite number of seconds > 0, got 'ten'"),
    ("duration-missing", rows("a.jsonl", {k: v for k, v in ROW.items() if k != "duration"}),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError, r"line 1: no 'duration'"),
    ("jsonl-empty", text("a.jsonl", ""), lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError,
     r"a.jsonl holds no annotation rows"),
    ("jsonl-blank-lines", text("a.jsonl", "\n  \n\n"), lambda t, w, m: load_annotations(t / "a.jsonl"), ValueError,
     r"a.jsonl holds no annotation rows \(the file is empty or has only blank lines\)"),
    ("charades-empty", text("sta.txt", "\n"), lambda t, w, m: read_charades_sta(t / "sta.txt", {"A": 3.0}),
     ValueError, r"sta.txt holds no annotation rows"),
    ("json-empty-file", text("val.json", ""), lambda t, w, m: read_activitynet_captions(t / "val.json"), ValueError,
     r"val.json holds no annotation rows \(the file is empty\)"),
    ("json-top-level-list", text("val.json", json.dumps([ROW])), lambda t, w, m: load_annotations(t / "val.json"),
     ValueError, r"val.json: the top-level JSON value is a list.*JSON lines \(.jsonl"),
    ("anet-top-level-list", text("val.json", json.dumps([ROW])),
     lambda t, w, m: read_activitynet_captions(t / "val.json"), ValueError, r"top-level JSON value is a list"),
    ("anet-entry-not-object", text("val.json", json.dumps({"v_x": [1, 2]})),
     lambda t, w, m: read_activitynet_captions(t / "val.json"), ValueError,
     r"video 'v_x': expected an object with 'timestamps' and 'sentences', got list"),
    ("anet-duplicate-video", text("val.json", '{"v_x": {}, "v_x": {}}'),
     lambda t, w, m: read_activitynet_captions(t / "val.json"), ValueError, r"the key 'v_x' appears twice"),
    ("anet-duration-missing", text("val.json", json.dumps({"v_x": {"timestamps": [[1, 2]], "sentences": ["a"]}})),
     lambda t, w, m: read_activitynet_captions(t / "val.json"), ValueError, r"video 'v_x': missing \['duration'\]"),
    ("tacos-fps-0", text("t.json", json.dumps({"s1-d1.avi": {"fps": 0, "num_frames": 100, "timestamps": [[1, 2]],
                                                              "sentences": ["a"]}})),
     lambda t, w, m: read_tacos(t / "t.json"), ValueError, r"video 's1-d1.avi': 'fps' and 'num_frames' must be finite"),
    ("csv-length-text", text("c.csv", "id,length\nAAAAA,long\n"), lambda t, w, m: read_charades_durations(t / "c.csv"),
     ValueError, r"c.csv, line 2: video 'AAAAA' has length 'long'"),
    ("csv-duplicate-id", text("c.csv", "id,length\nAAAAA,10\nAAAAA,12\n"),
     lambda t, w, m: read_charades_durations(t / "c.csv"), ValueError, r"line 3: video 'AAAAA' is listed twice"),
    ("annotations-not-utf8", data("a.jsonl", b"\xff\xfe{\x00"), lambda t, w, m: read_moment_jsonl(t / "a.jsonl"),
     ValueError, r"a.jsonl is not UTF-8 text"),
    ("all-rows-dropped", text("sta.txt", "ZZZZZ 1.0 2.0##a person sits.\n"),
     lambda t, w, m: read_charades_sta(t / "sta.txt", {"AAAAA": 10.0}), ValueError,
     r"None of the pairs in .*sta.txt is usable: .*unknown video or duration: line 1"),
    # predictions
    ("predictions-nan-score", rows("p.jsonl", '{"qid": "a", "pred_windows": [[0, 1, NaN]]}'),
     lambda t, w, m: read_predictions(str(t / "p.jsonl")), ValueError,
     r"p.jsonl, line 1 \(qid 'a'\): 'pred_windows', window 0: \[0, 1, nan\] holds NaN or Inf"),
    ("predictions-qid-a-list", rows("p.jsonl", {"qid": ["a"], "pred_windows": [[0, 1, 1]]}),
     lambda t, w, m: read_predictions(str(t / "p.jsonl")), ValueError,
     r"p.jsonl, line 1: 'qid' must be a string or an integer, got \['a'\]"),
    # adapters through PEFT's own API
    ("peft-from-pretrained-without-weights", adapter_copy(without_weights),
     lambda t, w, m: PeftModel.from_pretrained(AutoModel.from_pretrained(w / "base"), t / "adapter"),
     FileNotFoundError, r"adapter/? holds an adapter's config \(clip\) but no adapter_model.safetensors: the "
                        r"adapter directory is incomplete"),
    ("evaluate-moments-inf", nothing, lambda t, w, m: evaluate_moments({"a": [[0, math.inf, 1.0]]}, {"a": [[0, 1]]}),
     ValueError, r"predictions for query 'a', window 0: \[0, inf, 1.0\] holds NaN or Inf"),
    # adversarial sweep: wrong types and values at every entry point
    ("config-float-field-text", nothing, lambda t, w, m: VTGPromptConfig(head_dropout="high"), ValueError,
     r"head_dropout must be a finite number within float32's range \(\|x\| <= 3.4e38\), got str 'high'"),
    ("config-bool-field-text", nothing, lambda t, w, m: VTGPromptConfig(predict_inside="no"), ValueError,
     r"predict_inside must be True or False, got str 'no'"),
    ("config-list-field-number", nothing, lambda t, w, m: VTGPromptConfig(vtm_heads=5), ValueError,
     r"vtm_heads must be a list of names \(strings\) or None, got int 5"),
    ("config-text-tokens-fill-positions", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(num_text_tokens=22)), ValueError,
     r"num_text_tokens=22 leaves no room for the query: .*max_position_embeddings=24.*num_text_tokens <= 21"),
    ("config-text-insert-past-text", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(text_insert_position=1000)), ValueError,
     r"text_insert_position=1000 lies past any query .* use a position <= 15"),
    ("config-adapter-too-large", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(num_text_tokens=0, num_video_tokens=2**31)),
     ValueError, r"Adapter 'default' does not fit in memory: its prompts and heads need at least .* GiB, and the "
                 r"machine's RAM has .*num_video_tokens=2147483648"),
    # a million tiny fusion layers: refused before a layer is built (their Python objects alone would fill the RAM)
    ("config-head-too-deep", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(head_num_layers=10**7, head_hidden_size=8,
                                                                 head_num_attention_heads=1)),
     ValueError, r"Adapter 'default' does not fit in memory: .*head_num_layers=10000000"),
    ("config-video-insert-position-past-a-frame", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=2, video_insert_position=10**5)),
     ValueError, r"video_insert_position=100000 lies past the 17 tokens of the video stream here \(each frame\)"),
    ("config-text-init-tokenizer-missing", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(prompt_tuning_init="TEXT", prompt_tuning_init_text="a",
                                                                 tokenizer_name_or_path=str(t / "missing"))),
     FileNotFoundError, r"tokenizer_name_or_path='.*missing': no such directory"),
    ("config-text-init-tokenizer-not-an-id", nothing,
     lambda t, w, m: get_peft_model(tiny_clip(), VTGPromptConfig(prompt_tuning_init="TEXT", prompt_tuning_init_text="a",
                                                                 tokenizer_name_or_path="missing/")),
     OSError, r"tokenizer_name_or_path='missing/' could not be loaded for prompt_tuning_init='TEXT'"),
    ("training-args-resume-empty", nothing, lambda t, w, m: VTGTrainingArguments(resume_from_checkpoint=" "),
     ValueError, r"resume_from_checkpoint is empty; give a checkpoint directory, 'latest'"),
    ("config-size-past-2-32", nothing, lambda t, w, m: VTGPromptConfig(head_hidden_size=10**22), ValueError,
     r"head_hidden_size must be a whole number below 2\*\*32 or None, got int 10000000000000000000000"),
    ("training-args-lr-text", nothing, lambda t, w, m: VTGTrainingArguments(learning_rate="fast"), ValueError,
     r"learning_rate must be a finite number within float32's range \(\|x\| <= 3.4e38\), got str 'fast'"),
    ("training-args-seed-text", nothing, lambda t, w, m: VTGTrainingArguments(seed="abc"), ValueError,
     r"seed must be a whole number below 2\*\*32, got str 'abc'"),
    ("training-args-max-span-negative", nothing, lambda t, w, m: VTGTrainingArguments(max_span_seconds=-1.0),
     ValueError, r"max_span_seconds must be > 0 \(seconds\) or None"),
    ("training-args-unknown-metric", nothing, lambda t, w, m: VTGTrainingArguments(metric_for_best_model="acc"),
     ValueError, r"metric_for_best_model='acc' is not a metric the evaluation returns; choose one of \['R1@0.1'"),
    ("jsonl-duration-huge-integer", rows("a.jsonl", '{"qid": "q0", "query": "q", "duration": 1' + "0" * 400 + "}"),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError,
     r"line 1: 'duration' must be a finite number of seconds > 0"),
    ("jsonl-nested-too-deep", rows("a.jsonl", "[" * 100000 + "]" * 100000), lambda t, w, m: load_annotations(t / "a.jsonl"),
     ValueError, r"a.jsonl, line 1: the JSON is nested too deeply to read"),
    ("jsonl-lone-surrogate-query", rows("a.jsonl", '{"qid": "q0", "query": "\\ud800", "duration": 5, "windows": [[1, 2]]}'),
     lambda t, w, m: read_moment_jsonl(t / "a.jsonl"), ValueError,
     r"line 1: 'query' holds a character that is not valid Unicode text"),
    ("annotations-path-a-directory", nothing, lambda t, w, m: load_annotations(t), IsADirectoryError,
     r"is a directory; give the annotation file itself"),
    ("annotations-path-an-int", nothing, lambda t, w, m: read_moment_jsonl(0), TypeError,
     r"The annotation file must be a path \(str or os.PathLike\), got int 0"),
    ("charades-durations-an-int", text("sta.txt", "AAAAA 1.0 5.0##a person sits.\n"),
     lambda t, w, m: read_charades_sta(t / "sta.txt", 3), TypeError, r"durations csv .* must be a path.*got int 3"),
    ("load-format-a-list", rows("a.jsonl", ROW), lambda t, w, m: load_annotations(t / "a.jsonl", format=["jsonl"]),
     ValueError, r"format=\['jsonl'\] is not known"),
    ("reader-strict-text", rows("a.jsonl", ROW), lambda t, w, m: read_moment_jsonl(t / "a.jsonl", strict="no"),
     ValueError, r"strict must be True or False, got 'no'"),
    ("collate-row-missing-key", nothing, lambda t, w, m: GroundingCollator(tiny_tokenizer(), FeatureDirectory(w / "feats"))(
        [{k: v for k, v in ROW.items() if k != "duration"}]), ValueError, r"Row 0 \(qid 'q0'\) has no \['duration'\]"),
    ("collate-row-not-mapping", nothing, lambda t, w, m: GroundingCollator(tiny_tokenizer(), FeatureDirectory(w / "feats"))(
        ["q0"]), ValueError, r"Row 0 of the batch is a str; rows are mappings"),
    ("collate-empty-query", nothing, lambda t, w, m: GroundingCollator(tiny_tokenizer(), FeatureDirectory(w / "feats"))(
        [row(query="")]), ValueError, r"Row 0 \(qid 'q0'\): 'query' must be a non-empty string"),
    ("collate-window-reversed", nothing, lambda t, w, m: GroundingCollator(tiny_tokenizer(), FeatureDirectory(w / "feats"))(
        [row(windows=[[3.0, 1.0]])]), ValueError, r"'windows' item \[3.0, 1.0\] must be \[start, end\]"),
    ("collate-duration-text", nothing, lambda t, w, m: GroundingCollator(tiny_tokenizer(), FeatureDirectory(w / "feats"))(
        [row(duration="five")]), ValueError, r"'duration' must be a finite number of seconds > 0, got 'five'"),
    ("collate-feature-sizes-differ", nothing, lambda t, w, m: GroundingCollator(
        tiny_tokenizer(), lambda vid: torch.ones(5, DIM if vid == "v0" else 7))([ROW, row(qid="q1", vid="v1")]),
     ValueError, r"must share their per-frame shape .*\[\(7,\), \(48,\)\]"),
    ("collate-tokenizer-none", nothing, lambda t, w, m: GroundingCollator(None, FeatureDirectory(w / "feats")),
     ValueError, r"tokenizer must be the base model's tokenizer"),
    ("ground-tokenizer-none", nothing, lambda t, w, m: ground(m, torch.ones(5, DIM), "a door", None, duration=5.0),
     ValueError, r"tokenizer must be the base model's tokenizer"),
    ("ground-duration-numpy-scalar", nothing, lambda t, w, m: ground(m, torch.ones(0, DIM), "a door", tiny_tokenizer(),
                                                                      duration=np.float32(5.0)), ValueError,
     r"video 0 \(features\): features are empty"),
    ("ground-frames-one-channel", nothing, lambda t, w, m: ground(m, torch.ones(4, 1, 32, 32), "a door", tiny_tokenizer(),
                                                                  duration=5.0), ValueError,
     r"Video 0: frames must be \(frames, 3, H, W\) RGB, got shape \(4, 1, 32, 32\)"),
    ("ground-frames-raw-uint8", nothing, lambda t, w, m: ground(m, torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
                                                               "a door", tiny_tokenizer(), duration=5.0), ValueError,
     r"Video 0: frames are torch.uint8 values, raw pixels; .*preprocess_frames"),
    ("ground-object-array", nothing, lambda t, w, m: ground(m, np.array([[None] * DIM] * 5), "a door", tiny_tokenizer(),
                                                            duration=5.0), ValueError, r"Video 0: an array of object values"),
    ("ground-query-no-word", nothing, lambda t, w, m: ground(m, torch.ones(5, DIM), "a door opens", tiny_tokenizer(),
                                                             duration=5.0, max_text_length=2), ValueError,
     r"max_text_length=2 leaves no room for a word: the tokenizer adds 2 special token\(s\) to every query"),
    ("ground-query-bytes", nothing, lambda t, w, m: ground(m, torch.ones(5, DIM), b"a door", tiny_tokenizer(),
                                                           duration=5.0), TypeError,
     r"query must be a string \(or a list of strings\), got bytes b'a door'; decode it first"),
    ("ground-queries-one-string", nothing, lambda t, w, m: ground_queries(m, "v.mp4", "a door", tiny_tokenizer()),
     TypeError, r"queries must be a list of sentences, got one str: 'a door'; wrap it in a list"),
    ("ground-max-text-length-1", nothing, lambda t, w, m: ground(m, torch.ones(5, DIM), "a door", tiny_tokenizer(),
                                                                 duration=5.0, max_text_length=1), ValueError,
     r"max_text_length=1 leaves no room for a word: the tokenizer adds 2 special token\(s\)"),
    ("evaluate-moments-not-a-dict", nothing, lambda t, w, m: evaluate_moments(None, {"a": [[0, 1]]}), ValueError,
     r"predictions must be a mapping qid -> windows"),
    ("evaluate-moments-recall-0", nothing, lambda t, w, m: evaluate_moments({"a": [[0, 1, 1]]}, {"a": [[0, 1]]},
                                                                           recall_at=[0]), ValueError,
     r"recall_at must hold whole numbers >= 1"),
    ("evaluate-moments-nms-out-of-range", nothing, lambda t, w, m: evaluate_moments({"a": [[0, 1, 1]]}, {"a": [[0, 1]]},
                                                                                   nms_threshold=2.0), ValueError,
     r"nms_threshold must be an IoU in \[0, 1\] or None, got 2.0"),
    ("evaluate-moments-scores-mixed", nothing, lambda t, w, m: evaluate_moments({"a": [[0, 1], [0, 2, 0.9]]},
                                                                               {"a": [[0, 1]]}), ValueError,
     r"predictions for query 'a': some windows have a score and some do not"),
    ("format-table-missing-metrics", nothing, lambda t, w, m: format_table({"mIoU": 1.0}), ValueError,
     r"format_table needs the metrics of evaluate_moments .*missing \['R1@0.1'"),
    ("decode-moments-nan-logits", nothing, lambda t, w, m: decode_moments(torch.full((1, 5), math.nan),
                                                                         torch.zeros(1, 5), [5.0]), ValueError,
     r"start_logits hold NaN or Inf at real frames of clip\(s\) \[0\]"),
    ("decode-moments-duration-0", nothing, lambda t, w, m: decode_moments(torch.zeros(1, 5), torch.zeros(1, 5), [0.0],
                                                                         max_span_seconds=1.0), ValueError,
     r"durations\[0\] must be a finite number of seconds > 0, got 0.0"),
    ("decode-moments-mask-shape", nothing, lambda t, w, m: decode_moments(torch.zeros(1, 5), torch.zeros(1, 5), [5.0],
                                                                         frame_mask=torch.ones(1, 9)), ValueError,
     r"frame_mask must be a tensor of the logits' shape \(1, 5\), got \(1, 9\)"),
    ("predictions-huge-integer", rows("p.jsonl", '{"qid": "a", "pred_windows": [[0, 1' + "0" * 400 + ', 1]]}'),
     lambda t, w, m: read_predictions(str(t / "p.jsonl")), ValueError, r"line 1 \(qid 'a'\): 'pred_windows', window 0: .*NaN or Inf"),
]


@pytest.mark.parametrize("build, call, error, pattern", [pytest.param(*c[1:], id=c[0]) for c in API_CASES])
def test_api_bad_input(build, call, error, pattern, ws, model, tmp_path):
    build(tmp_path, ws)
    with pytest.raises(error, match=pattern):
        call(tmp_path, ws, model)


def test_paths_are_taken_where_strings_are(tmp_path):
    args = VTGTrainingArguments(output_dir=tmp_path / "out", resume_from_checkpoint=Path("latest"))
    assert args.output_dir == str(tmp_path / "out") and args.resume_from_checkpoint == "latest"


def test_numpy_scalars_are_taken_as_the_numbers_they_are(model):
    features = torch.linspace(0, 1, 5 * DIM).reshape(5, DIM)
    plain = ground(model, features, "a door", tiny_tokenizer(), duration=5.0, nms_threshold=0.5, top_k=3)
    assert ground(model, features, "a door", tiny_tokenizer(), duration=np.float32(5.0),
                  nms_threshold=np.float32(0.5), top_k=np.int64(3)) == plain


# ---------------------------------------------------------------- the command-line table
def evaluate(*flags: str, adapter: str = "{w}/adapter", data_flags=("--features-dir", "{w}/feats")) -> list[str]:
    return ["evaluate", "--adapter", adapter, *data_flags, "--predictions-out", "{t}/predictions.jsonl", *flags]


ANN = ("--annotations", "{w}/ann.jsonl")
TRAIN = ("train", "--base-model", "{w}/base", "--train-annotations", "{w}/ann.jsonl", "--features-dir", "{w}/feats",
         "--num-video-tokens", "0", "--max-steps", "1", "--output-dir", "{t}/run")
VIDEO = ("--video-dir", "{w}/videos", "--image-size", "32")

# (id, builder, argv with {t} = the case directory and {w} = the workspace, stderr regex)
CLI_CASES = [
    ("evaluate-window-overlap-1", nothing, evaluate(*ANN, "--window-overlap", "1"),
     r"argument --window-overlap: must be a fraction in \[0, 1\), got '1' \(windows sharing all"),
    ("evaluate-window-overlap-2", nothing, evaluate(*ANN, "--window-overlap", "2"),
     r"argument --window-overlap: must be a fraction in \[0, 1\), got '2'"),
    ("predict-window-overlap-text", nothing, ["predict", "--adapter", "{w}/adapter", "--video", "{w}/videos/v0.mp4",
                                              "--query", "a door", "--window-overlap", "half"],
     r"argument --window-overlap: expected a fraction in \[0, 1\), got 'half'"),
    ("evaluate-num-frames-0", nothing, evaluate(*ANN, "--num-frames", "0"), r"argument --num-frames: must be >= 1"),
    ("evaluate-num-frames-negative", nothing, evaluate(*ANN, "--num-frames", "-2"), r"--num-frames: must be >= 1"),
    ("evaluate-image-size-0", nothing, evaluate(*ANN, "--image-size", "0", data_flags=VIDEO[:2]),
     r"argument --image-size: must be >= 1, got 0"),
    ("evaluate-fps-0", nothing, evaluate(*ANN, "--fps", "0", data_flags=VIDEO),
     r"argument --fps: must be a finite number > 0, got '0'"),
    ("evaluate-fps-negative", nothing, evaluate(*ANN, "--fps", "-1", data_flags=VIDEO), r"--fps: must be a finite"),
    ("evaluate-fps-nan", nothing, evaluate(*ANN, "--fps", "nan", data_flags=VIDEO), r"--fps: must be a finite .*nan"),
    ("evaluate-fps-inf", nothing, evaluate(*ANN, "--fps", "inf", data_flags=VIDEO), r"--fps: must be a finite .*inf"),
    ("predict-num-frames-0", nothing, ["predict", "--adapter", "{w}/adapter", "--video", "{w}/videos/v0.mp4",
                                       "--query", "a door", "--num-frames", "0"], r"--num-frames: must be >= 1"),
    ("predict-fps-nan", nothing, ["predict", "--adapter", "{w}/adapter", "--video", "{w}/videos/v0.mp4",
                                  "--query", "a door", "--fps", "nan"], r"--fps: must be a finite number > 0"),
    ("train-num-frames-0", nothing, ["train", "--base-model", "{w}/base", "--train-annotations", "{w}/ann.jsonl",
                                     "--features-dir", "{w}/feats", "--output-dir", "{t}/run", "--num-frames", "0"],
     r"--num-frames: must be >= 1"),
    ("score-charades-without-durations", both(text("sta.txt", "AAAAA 1.0 5.0##a person sits.\n"),
                                              rows("p.jsonl", {"qid": "AAAAA_0", "pred_windows": [[1, 5, 1]]})),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/sta.txt", "--json"],
     r"carry no video durations; pass durations= \(command line: --durations\) .*Charades_v1_test.csv"),
    ("score-nan-prediction", both(rows("gt.jsonl", {"qid": "a", "duration": 5, "windows": [[0, 1]]}),
                                  rows("p.jsonl", '{"qid": "a", "pred_windows": [[0, 1, NaN]]}')),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl", "--json"],
     r"p.jsonl, line 1 \(qid 'a'\): 'pred_windows', window 0: \[0, 1, nan\] holds NaN or Inf"),
    ("score-inf-window", both(rows("gt.jsonl", {"qid": "a", "duration": 5, "windows": [[0, 1]]}),
                              rows("p.jsonl", '{"qid": "a", "pred_windows": [[-Infinity, 1, 0.5]]}')),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl"], r"line 1 \(qid 'a'\).*NaN or Inf"),
    ("score-empty-ground-truth", both(text("gt.jsonl", "\n\n"), rows("p.jsonl", {"qid": "a", "pred_windows": []})),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl"], r"gt.jsonl holds no annotation rows"),
    ("score-gt-start-after-end", both(rows("gt.jsonl", {"qid": "a", "duration": 5, "windows": [[4, 1]]}),
                                      rows("p.jsonl", {"qid": "a", "pred_windows": [[0, 1, 1]]})),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl"],
     r"None of the pairs in .*gt.jsonl is usable: .*end before start"),
    ("score-durations-for-jsonl", both(rows("gt.jsonl", {"qid": "a", "duration": 5, "windows": [[0, 1]]}),
                                       rows("p.jsonl", {"qid": "a", "pred_windows": [[0, 1, 1]]}),
                                       text("c.csv", "id,length\nA,1\n")),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl", "--durations", "{t}/c.csv"],
     r"durations= \(--durations\) does not apply"),
    ("evaluate-windows-a-number", rows("a.jsonl", row(windows=5)), evaluate("--annotations", "{t}/a.jsonl"),
     r"a.jsonl, line 1: 'windows' must be a list"),
    ("evaluate-adapter-without-peft-type", adapter_copy(without_peft_type), evaluate(*ANN, adapter="{t}/adapter"),
     r"adapter_config.json has no 'peft_type'.*VTG_PROMPT"),
    ("evaluate-adapter-without-weights", adapter_copy(without_weights), evaluate(*ANN, adapter="{t}/adapter"),
     r"--adapter .*adapter has no adapter weights \(adapter_model.safetensors\)"),
    ("evaluate-adapter-hub-id-offline", nothing, evaluate(*ANN, adapter="someone/not-cached-vtg-adapter"),
     r"--adapter someone/not-cached-vtg-adapter .*HF_HUB_OFFLINE is set \(no network\).*local directory"),
    ("evaluate-base-model-missing-path", nothing, evaluate(*ANN, "--base-model", "{t}/no-such-base"),
     r"--base-model .*no-such-base: no such directory"),
    ("evaluate-base-model-dir-without-config", text("models/README.md", "x"),
     evaluate(*ANN, "--base-model", "{t}/models"),
     r"--base-model .*models has no config.json; give the directory save_pretrained wrote"),
    ("evaluate-adapter-dir-without-config", text("adapter/README.md", "x"), evaluate(*ANN, adapter="{t}/adapter"),
     r"--adapter .*adapter has no adapter_config.json; give an adapter directory"),
    ("evaluate-tokenizer-dir-without-tokenizer", text("tok/README.md", "x"), evaluate(*ANN, "--tokenizer", "{t}/tok"),
     r"--tokenizer .*tok has no tokenizer_config.json"),
    ("evaluate-base-model-hub-id-offline", nothing, evaluate(*ANN, "--base-model", "someone/not-cached-base"),
     r"--base-model someone/not-cached-base is not a local directory.*HF_HUB_OFFLINE is set"),
    ("evaluate-id-escapes-features-dir", both(npy("secret.npy", np.ones((5, DIM), np.float32)),
                                             npy("feats/v0.npy", np.ones((5, DIM), np.float32)),
                                             rows("a.jsonl", row(vid="../secret"))),
     evaluate("--annotations", "{t}/a.jsonl", data_flags=("--features-dir", "{t}/feats")),
     r"Video id '\.\./secret' is not a plain file name"),
    ("evaluate-nan-features", both(npy("feats/v0.npy", NAN_FEATURES)),
     evaluate(*ANN, data_flags=("--features-dir", "{t}/feats")), r"feats/v0.npy: 1 frame\(s\) hold NaN or Inf"),
    ("evaluate-features-wrong-size", npy("feats/v0.npy", np.ones((5, 7), np.float32)),
     evaluate(*ANN, data_flags=("--features-dir", "{t}/feats")),
     r"feats/v0.npy: features have 7 values per frame but the model expects 48"),
    ("evaluate-features-missing", both(npy("feats/v0.npy", np.ones((5, DIM), np.float32)),
                                       rows("a.jsonl", ROW, row(qid="q1", vid="v9"))),
     evaluate("--annotations", "{t}/a.jsonl", data_flags=("--features-dir", "{t}/feats")),
     r"1 annotated video\(s\) have no file in .*feats: \['v9'\]"),
    ("evaluate-0-byte-video", data("videos/v0.mp4", b""),
     evaluate(*ANN, "--num-frames", "4", data_flags=("--video-dir", "{t}/videos", "--image-size", "32")),
     r"Video file .*videos/v0.mp4 is empty \(0 bytes\)"),
    ("evaluate-fps-with-features", nothing, evaluate(*ANN, "--fps", "2"), r"--fps apply to --video-dir only"),
    ("train-video-missing", rows("a.jsonl", row(vid="v9")),
     ["train", "--base-model", "{w}/base", "--train-annotations", "{t}/a.jsonl", "--features-dir", "{w}/feats",
      "--output-dir", "{t}/run", "--num-video-tokens", "0", "--max-steps", "1"],
     r"1 annotated video\(s\) have no file in .*feats: \['v9'\]"),
    ("train-query-a-list", rows("a.jsonl", row(query=["a", "b"])),
     ["train", "--base-model", "{w}/base", "--train-annotations", "{t}/a.jsonl", "--features-dir", "{w}/feats",
      "--output-dir", "{t}/run", "--num-video-tokens", "0", "--max-steps", "1"], r"'query' must be a string, got list"),
    # adversarial sweep
    ("train-config-wrong-type", text("c.json", json.dumps({"learning_rate": "fast"})),
     [*TRAIN, "--config", "{t}/c.json"], r"learning_rate must be a finite number within float32's range "
     r"\(\|x\| <= 3.4e38\), got str 'fast'"),
    ("train-learning-rate-past-float32", nothing, [*TRAIN, "--learning-rate", "1e39"],
     r"learning_rate must be a finite number within float32's range"),
    ("train-size-past-2-32", nothing, [*TRAIN, "--head-hidden-size", "10000000000000000000000"],
     r"head_hidden_size must be a whole number below 2\*\*32"),
    ("train-output-is-the-features", nothing, [*TRAIN[:-2], "--output-dir", "{w}/feats"],
     r"--output-dir .*feats is the --features-dir directory"),
    ("train-output-is-the-adapter", nothing, [*TRAIN[:-2], "--adapter", "{w}/adapter", "--output-dir", "{w}/adapter"],
     r"--output-dir .*adapter is the --adapter directory"),
    ("train-tokenizer-kwargs-not-json", nothing, [*TRAIN, "--tokenizer-kwargs", "{"],
     r"argument --tokenizer_kwargs/--tokenizer-kwargs: expected a JSON object"),
    ("train-int-flag-given-a-fraction", nothing, [*TRAIN, "--num-text-tokens", "2.5"],
     r"argument --num_text_tokens/--num-text-tokens: invalid int value: '2.5'"),
    ("train-config-none-for-float", text("c.json", json.dumps({"head_dropout": None})),
     [*TRAIN, "--config", "{t}/c.json"], r"head_dropout must not be None"),
    ("train-config-broken-json", text("c.json", "{broken"), [*TRAIN, "--config", "{t}/c.json"],
     r"--config .*c.json is not a JSON file of settings \(Expecting property name"),
    ("train-config-huge-integer", text("c.json", '{"seed": ' + "1" * 5000 + "}"), [*TRAIN, "--config", "{t}/c.json"],
     r"--config .*c.json is not a JSON file of settings \(Exceeds the limit \(4300 digits\)"),
    ("train-config-unknown-metric", text("c.json", json.dumps({"metric_for_best_model": "accuracy"})),
     [*TRAIN, "--eval-annotations", "{w}/ann.jsonl", "--config", "{t}/c.json"],
     r"metric_for_best_model='accuracy' is not a metric the evaluation returns"),
    ("train-output-dir-a-file", text("out.txt", "x"), [*TRAIN[:-2], "--output-dir", "{t}/out.txt"],
     r"--output-dir .*out.txt is a file; give a directory"),
    ("train-resume-missing-checkpoint", nothing, [*TRAIN, "--resume-from-checkpoint", "{t}/no-checkpoint"],
     r"--resume-from-checkpoint .*no-checkpoint: no such checkpoint directory"),
    ("train-text-insert-past-text", nothing, [*TRAIN, "--text-insert-position", "1000"],
     r"text_insert_position=1000 lies past any query"),
    ("score-huge-integer-duration", both(rows("gt.jsonl", '{"qid": "a", "duration": 1' + "0" * 400 + ', "windows": [[0, 1]]}'),
                                         rows("p.jsonl", {"qid": "a", "pred_windows": [[0, 1, 1]]})),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl"],
     r"gt.jsonl, line 1: 'duration' must be a finite number"),
    ("score-predictions-nested-too-deep", both(rows("gt.jsonl", {"qid": "a", "duration": 5, "windows": [[0, 1]]}),
                                               rows("p.jsonl", "[" * 100000 + "]" * 100000)),
     ["score", "--predictions", "{t}/p.jsonl", "--ground-truth", "{t}/gt.jsonl"], r"p.jsonl, line 1: the JSON is nested"),
    ("demo-train-videos-negative", nothing, ["demo", "--train-videos", "-5", "--output-dir", "{t}/demo"],
     r"argument --train-videos: must be >= 1, got -5"),
    ("demo-seed-negative", nothing, ["demo", "--seed", "-1", "--output-dir", "{t}/demo"],
     r"argument --seed: must be a whole number in \[0, 2\*\*32 - 1\], got -1"),
    ("train-config-setting-twice", text("c.json", '{"learning_rate": 0.1, "learning_rate": 0.2}'),
     [*TRAIN, "--config", "{t}/c.json"], r"--config .*c.json: the setting 'learning_rate' is given twice"),
    ("train-absent-fraction-without-windows", nothing, [*TRAIN, "--long-video-absent-fraction", "0.3"],
     r"--long-video-absent-fraction applies to the windows of --long-video-windows"),
    ("cache-num-workers-negative", nothing, ["cache", "--base-model", "{w}/base", "--annotations", "{w}/ann.jsonl",
                                             "--video-dir", "{w}/videos", "--output-dir", "{t}/cache",
                                             "--num-workers", "-1"],
     r"argument --num-workers: must be >= 0, got -1"),
    ("extract-empty-video-suffix", nothing, ["extract", "--base-model", "{w}/base", "--video-dir", "{w}/videos",
                                             "--output-dir", "{t}/feats", "--video-suffix", ""],
     r"--video-suffix '' is not a file suffix"),
    ("push-invalid-repo-id", adapter_copy(lambda path: None), ["push", "--adapter", "{t}/adapter", "--repo-id", "a b!!"],
     r"--repo-id 'a b!!' is not a Hub repository id"),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("build, argv, pattern", [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES])
def test_cli_bad_input(build, argv, pattern, ws, tmp_path, capsys):
    build(tmp_path, ws)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    args = [a.replace("{t}", str(tmp_path)).replace("{w}", str(ws)) for a in argv]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse rejects a flag's value
        code = exit_.code
    captured = capsys.readouterr()
    assert code not in (0, None)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.out == ""
    assert len(re.findall(r"error:", captured.err)) == 1, captured.err  # one message
    assert re.search(pattern, captured.err), captured.err
    assert _snapshot(tmp_path) == before  # nothing created or modified (--predictions-out, --output-dir)


def test_pickled_adapter_weights_are_refused(ws, tmp_path, capsys):
    """Refused before issue #12 already (the only such case here); kept so the refusal cannot regress."""
    adapter_copy(pickled_weights)(tmp_path, ws)
    argv = [a.replace("{t}", str(tmp_path)).replace("{w}", str(ws)) for a in evaluate(*ANN, adapter="{t}/adapter")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert re.search(r"adapter_model.bin, a pickled .*safetensors", captured.err) and captured.out == ""
    assert not (tmp_path / "predictions.jsonl").exists()


# ---------------------------------------------------------------- accepted: a UTF-8 byte-order mark on any input
BOM = "\ufeff"


def test_byte_order_marks_are_accepted(tmp_path, capsys):
    (tmp_path / "sta.txt").write_text(BOM + "AAAAA 1.0 5.0##a person sits.\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text(BOM + "id,length\nAAAAA,10\n", encoding="utf-8")
    assert read_charades_sta(tmp_path / "sta.txt", tmp_path / "c.csv")["windows"] == [[[1.0, 5.0]]]
    (tmp_path / "val.json").write_text(BOM + json.dumps(ANET), encoding="utf-8")
    assert load_annotations(tmp_path / "val.json")["vid"] == ["v_x"]
    (tmp_path / "gt.jsonl").write_text(BOM + json.dumps({"qid": "a", "duration": 5, "windows": [[0, 1]]}) + "\n",
                                       encoding="utf-8")
    (tmp_path / "p.jsonl").write_text(BOM + json.dumps({"qid": "a", "pred_windows": [[0, 1, 1]]}) + "\n",
                                      encoding="utf-8")
    assert main(["score", "--predictions", str(tmp_path / "p.jsonl"), "--ground-truth", str(tmp_path / "gt.jsonl"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == 100.0


# ---------------------------------------------------------------- warned: a video much longer/shorter than annotated
def test_duration_mismatch_warns_naming_the_video(ws, model):
    source = VideoFiles(ws / "videos", num_frames=4, image_size=32)
    collate = GroundingCollator(tiny_tokenizer(), source)
    with pytest.warns(UserWarning, match=r"1 video\(s\) are much longer or shorter .*'v0' \(annotated 60.00 s, file "
                                         r"5.00 s\)"):
        collate([row(duration=60.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the tolerance (max(1 s, 10 %)): no warning
        GroundingCollator(tiny_tokenizer(), source)([row(duration=5.4)])
    with pytest.warns(UserWarning, match=r"v0.mp4' \(annotated 1.00 s, file 5.00 s\)"):
        ground(model, ws / "videos/v0.mp4", "a door", tiny_tokenizer(), duration=1.0, num_frames=4)
