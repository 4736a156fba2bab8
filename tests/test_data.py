"""Annotation readers (on the real benchmark files and on small bad files), the time convention, video sources and
collation."""

import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_vtg.data import (
    FeatureDirectory,
    GroundingCollator,
    H5FeatureFile,
    PUBLISHED_SPLIT_SIZES,
    VideoFiles,
    check_split_size,
    decode_video,
    detect_format,
    durations_from_features,
    iter_video_frames,
    load_annotations,
    load_feature_file,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
    read_moment_jsonl,
    read_report,
    read_tacos,
    resample_features,
    video_duration,
)
from peft_vtg.timeline import frames_to_seconds, seconds_to_frames
from tiny_models import tiny_tokenizer, write_video

# The real annotation files: ../shared/vtg-annotations beside the project, or wherever VTG_ANNOTATIONS_DIR points.
SHARED = Path(os.environ.get("VTG_ANNOTATIONS_DIR", Path(__file__).resolve().parents[2] / "shared" / "vtg-annotations"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no annotation files at {SHARED} (set VTG_ANNOTATIONS_DIR)")


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- real files
@needs_shared
@pytest.mark.parametrize(
    "dataset_name, split, read, clipped",
    [
        ("charades_sta", "test", lambda: read_charades_sta(SHARED / "charades-sta/charades_sta_test.txt",
                                                           SHARED / "charades-sta/Charades_v1_test.csv"), 562),
        ("activitynet_captions", "val_1", lambda: read_activitynet_captions(SHARED / "activitynet-captions/val_1.json"), 5),
        ("activitynet_captions", "val_2", lambda: read_activitynet_captions(SHARED / "activitynet-captions/val_2.json"), 1),
        ("tacos", "train", lambda: read_tacos(SHARED / "tacos/train.json"), 43),
        ("tacos", "val", lambda: read_tacos(SHARED / "tacos/val.json"), 0),
        ("tacos", "test", lambda: read_tacos(SHARED / "tacos/test.json"), 5),
        ("qvhighlights", "val", lambda: read_moment_jsonl(SHARED / "qvhighlights/highlight_val_release.jsonl"), 0),
    ],
)
def test_real_files_parse_completely_with_published_sizes(dataset_name, split, read, clipped):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = read()
    report = read_report(dataset)
    assert report["total"] == PUBLISHED_SPLIT_SIZES[(dataset_name, split)] == len(dataset)
    assert report["dropped"] == {}
    assert sum(report["clipped"].values()) == clipped  # the known dirt of each file (see its README)
    assert bool(caught) == bool(clipped)
    check_split_size(dataset, dataset_name, split)
    assert len(set(dataset["qid"])) == len(dataset)
    for row in dataset.select(range(0, len(dataset), 97)):
        assert row["query"] and row["duration"] > 0 and row["windows"]
        assert all(0 <= s <= e <= row["duration"] for s, e in row["windows"])


@needs_shared
def test_readers_agree_with_the_unified_jsonl_releases():
    tacos = quiet(read_tacos, SHARED / "tacos/test.json")
    unified = load_annotations(SHARED / "unified-jsonl/tacos_test_release.jsonl")
    assert tacos["qid"] == unified["qid"] and tacos["query"] == unified["query"]
    assert np.allclose(tacos["duration"], unified["duration"])
    # including the 5 windows that end after the video: the release clips them to the duration as well. Exactly,
    # not only close: frame / fps as the release computes it (frame * (1 / fps) differs in the last bit for about
    # half the windows, which moves a window of exactly 10 s between Moment-DETR's length buckets).
    assert tacos["windows"] == unified["windows"]
    charades = quiet(read_charades_sta, SHARED / "charades-sta/charades_sta_test.txt",
                     SHARED / "charades-sta/Charades_v1_test.csv")
    release = load_annotations(SHARED / "unified-jsonl/charades_test_release.jsonl")
    assert charades["vid"] == release["vid"] and charades["query"] == release["query"]
    assert np.allclose(charades["duration"], release["duration"])
    assert all(np.allclose(a, b) for a, b in zip(charades["windows"], release["windows"]))


def test_published_size_check_catches_a_truncated_file(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps({"qid": 1, "query": "q", "duration": 10, "vid": "v", "relevant_windows": [[1, 2]]}))
    with pytest.raises(ValueError, match="holds 1 pairs but the published split has 1550"):
        check_split_size(read_moment_jsonl(path), "qvhighlights", "val")


# ---------------------------------------------------------------- bad rows
BAD_CHARADES = """AAAAA 1.0 5.0##person opens the door.
AAAAA 6.0 4.0##end before start.
AAAAA 2.0 3.0##
BBBBB 8.0 12.5##end beyond the 10 s video.
BBBBB 10.5 11.0##starts after the video.
ZZZZZ 1.0 2.0##unknown video.
AAAAA -5.0 -1.0##ends before the video.
"""


def test_bad_rows_are_clipped_or_dropped_with_counts(tmp_path):
    path = tmp_path / "sta.txt"
    path.write_text(BAD_CHARADES)
    with pytest.warns(UserWarning, match=r"2 of 7 pairs kept; clipped 1 \(end beyond duration\); dropped.*"
                                         r"first rows: .*empty query: line 3"):
        dataset = read_charades_sta(path, {"AAAAA": 20.0, "BBBBB": 10.0})
    assert dataset["qid"] == ["AAAAA_0", "BBBBB_0"]
    assert dataset["windows"] == [[[1.0, 5.0]], [[8.0, 10.0]]]
    report = read_report(dataset)
    # A window wholly before the video is dropped like one wholly after it; clipped, it would be [0.0, -1.0].
    assert report["dropped"] == {"end before start": 1, "empty query": 1, "unknown video or duration": 1,
                                 "window starts at or after the video's end": 1,
                                 "window ends at or before the video's start": 1}
    # A window no export can mean (NaN) is an error naming the line, not a drop.
    path.write_text(BAD_CHARADES + "AAAAA nan 4.0##not a time.\n")
    with pytest.raises(ValueError, match=r"sta.txt, line 8: .*non-finite time"):
        read_charades_sta(path, {"AAAAA": 20.0, "BBBBB": 10.0})


@pytest.mark.parametrize("key", ["relevant_window", "Windows", "gt_windows"])
def test_a_misspelt_window_key_is_an_error_naming_line_and_key(tmp_path, key):
    # Read as an unlabelled query, the line would only fail at scoring, naming neither the file nor the line.
    path = tmp_path / "gt.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in ({"qid": 1, "duration": 10, "windows": [[1, 2]]},
                                                             {"qid": 2, "duration": 10, key: [[1, 2]]})))
    with pytest.raises(ValueError, match=rf"gt.jsonl, line 2: unknown key '{key}' \(qid 2\)"):
        read_moment_jsonl(path)


def test_charades_durations_from_feature_lengths(tmp_path):
    np.save(tmp_path / "AAAAA.npy", np.zeros((40, 2), np.float32))  # 40 features at 2 per second = 20 s
    np.save(tmp_path / "BBBBB.npy", np.zeros((20, 2), np.float32))
    durations = durations_from_features(FeatureDirectory(tmp_path), ["AAAAA", "BBBBB", "AAAAA"], 2.0)
    assert durations == {"AAAAA": 20.0, "BBBBB": 10.0}
    path = tmp_path / "sta.txt"
    path.write_text(BAD_CHARADES)
    assert len(quiet(read_charades_sta, path, durations)) == 2


def test_charades_times_and_lengths_are_plain_decimals(tmp_path):
    # float() would read "1_0" as 10.0, a Python spelling no export means.
    path = tmp_path / "sta.txt"
    path.write_text("AAAAA 1_0 12.0##a person sits.\n")
    with pytest.raises(ValueError, match=r"sta.txt, line 1: start/end are not numbers"):
        read_charades_sta(path, {"AAAAA": 20.0})
    csv_path = tmp_path / "Charades_v1_test.csv"
    csv_path.write_text("id,length\nAAAAA,2_0\n")
    with pytest.raises(ValueError, match=r"video 'AAAAA' has length '2_0'"):
        read_charades_durations(csv_path)


def test_strict_mode_names_file_row_and_reason(tmp_path):
    path = tmp_path / "sta.txt"
    path.write_text(BAD_CHARADES)
    with pytest.raises(ValueError, match=r"sta.txt, line 2: end before start. \(strict=True"):
        read_charades_sta(path, {"AAAAA": 20.0, "BBBBB": 10.0}, strict=True)


def test_bad_json_files(tmp_path):
    anet = tmp_path / "val.json"
    anet.write_text(json.dumps({"v_x": {"duration": 10.0, "timestamps": [[1, 2], [0.5, 3]], "sentences": ["a", "b"]},
                                "v_y": {"duration": 10.0, "timestamps": [[1, 2]], "sentences": ["a", "b"]}}))
    with pytest.raises(ValueError, match="'v_y'.*equal length"):
        read_activitynet_captions(anet)
    anet.write_text(json.dumps({"v_x": {"duration": 10.0, "timestamps": [[1, 2], [1, 12]], "sentences": ["a", "b"]}}))
    with pytest.warns(UserWarning, match="end beyond duration"):
        assert read_activitynet_captions(anet)["windows"][1] == [[1.0, 10.0]]
    anet.write_text(json.dumps({"v_x": {"duration": 10.0, "timestamps": [[1, 2], [-0.5, 3]], "sentences": ["a", "b"]}}))
    with pytest.warns(UserWarning, match="start before 0"):
        assert read_activitynet_captions(anet)["windows"][1] == [[0.0, 3.0]]
    jsonl = tmp_path / "gt.jsonl"
    jsonl.write_text('{"qid": 1, "duration": 5, "windows": [[1, 2]]}\n{"qid": 1, "duration": 5, "windows": [[1, 2]]}\n')
    with pytest.raises(ValueError, match="line 2: duplicate qid '1'"):
        read_moment_jsonl(jsonl)
    jsonl.write_text('{"qid": 1, "query": "q", "duration": 5, "vid": "v"}\n{"qid": 2, "query": "q", "duration": 5, '
                     '"vid": "v", "relevant_windows": []}\n')
    with pytest.warns(UserWarning, match="no ground-truth window"):
        unlabelled = read_moment_jsonl(jsonl)
    assert unlabelled["qid"] == ["1"] and unlabelled["windows"] == [[]]  # no window key: an unlabelled query


def test_tacos_seconds_form_and_format_detection(tmp_path):
    seconds = tmp_path / "tacos_seconds.json"
    seconds.write_text(json.dumps({"s13-d21.avi": {"duration": 100.0, "timestamps": [[3.0, 9.5]], "sentences": ["x"]}}))
    frames = tmp_path / "tacos_frames.json"
    frames.write_text(json.dumps({"s13-d21.avi": {"fps": 25.0, "num_frames": 2500, "timestamps": [[75, 237]],
                                                  "sentences": ["x"]}}))
    a, b = read_tacos(seconds), read_tacos(frames)
    assert a["qid"] == b["qid"] == ["s13-d21_0"] and a["duration"] == b["duration"] == [100.0]
    assert a["windows"] == [[[3.0, 9.5]]] and b["windows"] == [[[3.0, 9.48]]]
    assert detect_format(frames) == "tacos" and detect_format(seconds) == "activitynet_captions"
    with pytest.raises(ValueError, match="pass format="):
        detect_format(tmp_path / "x.csv")


# ---------------------------------------------------------------- time convention
def test_seconds_frames_round_trip_within_one_frame():
    rng = random.Random(0)
    for _ in range(2000):
        duration = rng.uniform(1.0, 300.0)
        frames = rng.randint(1, 256)
        start = rng.uniform(0, duration)
        end = rng.uniform(start, duration)
        first, last = seconds_to_frames(start, end, duration, frames)
        assert 0 <= first <= last < frames
        back_start, back_end = frames_to_seconds(first, last, duration, frames)
        step = duration / frames
        assert back_start <= start + 1e-9 and start - back_start < step + 1e-9
        assert back_end >= end - 1e-9 and back_end - end < step + 1e-9


def test_frame_convention_edges():
    assert seconds_to_frames(0.0, 10.0, 10.0, 5) == (0, 4)
    assert seconds_to_frames(2.0, 4.0, 10.0, 5) == (1, 1)  # ends on a bin edge: does not reach into bin 2
    assert seconds_to_frames(3.0, 3.0, 10.0, 5) == (1, 1)  # zero length: one frame
    assert frames_to_seconds(1, 2, 10.0, 5) == (2.0, 6.0)
    with pytest.raises(ValueError, match="duration"):
        seconds_to_frames(0, 1, 0.0, 5)


# ---------------------------------------------------------------- video sources
def test_feature_formats(tmp_path):
    h5py = pytest.importorskip("h5py")
    from safetensors.numpy import save_file

    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "a.npy", features)
    np.savez(tmp_path / "b.npz", feats=features)
    save_file({"feats": features}, tmp_path / "c.safetensors")
    with h5py.File(tmp_path / "d.h5", "w") as handle:
        handle["feats"] = features
    source = FeatureDirectory(tmp_path)
    for vid in "abcd":
        assert np.array_equal(source(vid), features)
    assert isinstance(load_feature_file(tmp_path / "a.npy"), np.memmap)  # not read into memory up front
    with h5py.File(tmp_path / "all.h5", "w") as handle:
        handle["a"], handle["b"] = features, features * 2
    assert np.array_equal(H5FeatureFile(tmp_path / "all.h5")("b"), features * 2)
    with pytest.raises(FileNotFoundError, match="No features for video 'zz'"):
        source("zz")
    np.savez(tmp_path / "two.npz", x=features, y=features)
    with pytest.raises(ValueError, match="several arrays.*key="):
        source("two")


def test_pickled_feature_files_are_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    for name in ("evil.npy", "evil.npz"):
        with pytest.raises(ValueError, match="never unpickles"):
            load_feature_file(tmp_path / name)


def test_resample_features_averages_time_bins():
    features = torch.arange(6, dtype=torch.float32).unsqueeze(1)  # values 0..5 over 6 bins
    assert resample_features(features, 3).squeeze(1).tolist() == [0.5, 2.5, 4.5]
    assert resample_features(features, 6).squeeze(1).tolist() == list(range(6))
    assert resample_features(features[:2], 4).squeeze(1).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_decoding_samples_frames_at_bin_centres(tmp_path):
    pytest.importorskip("av")
    brightness = np.arange(20) * 12  # 20 frames at 4 fps = 5 s; frame k has brightness 12 k
    write_video(tmp_path / "v.mp4", np.repeat(brightness, 32 * 32 * 3).reshape(20, 32, 32, 3).astype(np.uint8), fps=4)
    frames, duration = decode_video(tmp_path / "v.mp4", num_frames=5)
    assert frames.shape == (5, 3, 32, 32) and frames.dtype == torch.uint8
    assert duration == pytest.approx(5.0)
    # bin centres 0.5, 1.5, ... s show source frames 2, 6, 10, 14, 18
    assert np.allclose(frames.float().mean(dim=(1, 2, 3)).numpy(), brightness[[2, 6, 10, 14, 18]], atol=4)
    processed = VideoFiles(tmp_path, fps=2.0, image_size=16)("v")
    assert processed.shape == (10, 3, 16, 16) and processed.dtype == torch.float32
    with pytest.raises(FileNotFoundError):
        decode_video(tmp_path / "missing.mp4", num_frames=2)


def _grey_ramp_video(path, seconds=8, start=0, audio_seconds=0, options=None):
    """`seconds` frames at 1 fps, frame i a grey of 20 + (200 // seconds) i, the first stamped at `start` s; optional
    silent audio."""
    import av

    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000) if audio_seconds else None
        for i in range(seconds):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 + 200 // seconds * i, np.uint8), format="rgb24")
            frame.pts = start + i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        for k in range(audio_seconds * 16000 // 1024):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, k * 1024
            container.mux(audio.encode(chunk))
        if audio is not None:
            container.mux(audio.encode())


def _greys(frames, seconds=8):
    """Which frame of `_grey_ramp_video` each of `frames` is."""
    return [round((float(level) - 20) / (200 // seconds)) for level in frames.float().mean(dim=(1, 2, 3))]


@pytest.mark.parametrize("name, kwargs", [
    ("plain.mp4", {}),
    ("offset.mp4", dict(start=10)),  # a clip whose first frame is stamped at 10 s (cut from a longer recording)
    ("offset.mkv", dict(start=10)),  # ... where the container's duration also counts the offset
    ("audio.mkv", dict(audio_seconds=30)),  # mkv/webm: the container's duration is the longest stream, audio
])
def test_a_video_is_timed_from_its_own_first_frame_over_its_own_stream(tmp_path, name, kwargs):
    pytest.importorskip("av")
    _grey_ramp_video(tmp_path / name, **kwargs)
    frames, duration = decode_video(tmp_path / name, num_frames=8)
    assert duration == pytest.approx(8.0) and video_duration(tmp_path / name) == pytest.approx(8.0)
    assert _greys(frames) == list(range(8))  # bin centres 0.5, 1.5, ... s show frames 0, 1, ...


def test_a_video_that_ends_before_its_header_says_is_an_error_naming_it(tmp_path):
    pytest.importorskip("av")
    _grey_ramp_video(tmp_path / "whole.mp4", seconds=40, options={"movflags": "faststart"})
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 7 // 10])  # the header (at the front) still says 40 s
    with pytest.raises(ValueError, match=r"cut.mp4: its frames end at .* s, but frames up to 37.50 s were asked for "
                                         r"from its duration \(40.00 s in its header\); the file is truncated"):
        decode_video(tmp_path / "cut.mp4", num_frames=8)
    whole = _greys(decode_video(tmp_path / "whole.mp4", num_frames=8)[0], seconds=40)
    assert all(abs(got - (2 + 5 * k)) <= 1 for k, got in enumerate(whole)), whole  # grey steps of 5: codec noise


def _marked_corner_video(path, degrees=None, hflip=False):
    """Four 16x32 (H x W) frames, white in the stored top-left 8x8 corner, with a display matrix when `degrees`."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        if degrees is not None:
            if not hasattr(stream, "set_display_rotation"):
                pytest.skip("this PyAV cannot write a display matrix")
            stream.set_display_rotation(degrees, hflip=hflip)
        image = np.zeros((16, 32, 3), np.uint8)
        image[:8, :8] = 255
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _white_corner(frame):
    """Which corner of a (3, H, W) frame is white."""
    grey = frame.float().mean(dim=0)
    corners = {"top-left": grey[:4, :4], "top-right": grey[:4, -4:], "bottom-left": grey[-4:, :4],
               "bottom-right": grey[-4:, -4:]}
    return max(corners, key=lambda name: corners[name].mean())


@pytest.mark.parametrize("degrees, hflip, shape, corner", [
    (None, False, (16, 32), "top-left"),  # no display matrix: as stored
    (90, False, (32, 16), "bottom-left"),  # counter-clockwise, as FFmpeg's transpose=cclock
    (-90, False, (32, 16), "top-right"),  # a phone's portrait video (mov rotate=90): clockwise
    (180, False, (16, 32), "bottom-right"),
    (90, True, (32, 16), "bottom-right"),  # turned, then mirrored (a front camera)
])
def test_frames_are_turned_upright_by_the_display_matrix_as_players_show_them(tmp_path, degrees, hflip, shape,
                                                                              corner):
    pytest.importorskip("av")
    _marked_corner_video(tmp_path / "v.mp4", degrees, hflip)
    frames, duration = decode_video(tmp_path / "v.mp4", num_frames=2)
    assert frames.shape == (2, 3) + shape and duration == pytest.approx(1.0)
    assert [_white_corner(frame) for frame in frames] == [corner, corner]


def test_a_display_matrix_at_another_angle_is_not_applied_and_is_named_once(tmp_path):
    pytest.importorskip("av")
    _marked_corner_video(tmp_path / "tilted.mp4", 45)
    with pytest.warns(UserWarning, match=r"tilted.mp4: its display matrix rotates it by 45 degrees") as caught:
        frames, _ = decode_video(tmp_path / "tilted.mp4", num_frames=3)
    assert len([w for w in caught if "display matrix" in str(w.message)]) == 1
    assert frames.shape == (3, 3, 16, 32) and _white_corner(frames[0]) == "top-left"
    # an all-zero matrix (broken files) orients nothing, as FFmpeg reads it: frames as stored, no warning
    import warnings

    import av

    with av.open(str(tmp_path / "zero.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        if not hasattr(stream, "set_display_matrix"):
            return
        stream.set_display_matrix([0] * 9)
        image = np.zeros((16, 32, 3), np.uint8)
        image[:8, :8] = 255
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames, _ = decode_video(tmp_path / "zero.mp4", num_frames=2)
    assert frames.shape == (2, 3, 16, 32) and _white_corner(frames[0]) == "top-left"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_frame_times_must_be_finite(tmp_path, bad):
    pytest.importorskip("av")
    _marked_corner_video(tmp_path / "v.mp4")
    with pytest.raises(ValueError, match=r"times must be finite seconds; got (nan|inf|-inf) \(for .*v.mp4\)"):
        list(iter_video_frames(tmp_path / "v.mp4", [0.1, bad]))


def test_features_beyond_float32_range_are_named(tmp_path):
    np.save(tmp_path / "v.npy", np.full((4, 3), 1e300))
    with pytest.raises(ValueError, match=r"v.npy: features reach 1e\+300, beyond float32's range"):
        FeatureDirectory(tmp_path)("v")


def test_collator_pads_masks_and_labels(tmp_path):
    np.save(tmp_path / "short.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "long.npy", np.ones((6, 3), np.float32))
    rows = [
        {"qid": "q0", "vid": "short", "query": "the red square moves left", "duration": 8.0, "windows": [[2.0, 5.0]]},
        {"qid": "q1", "vid": "long", "query": "a door opens", "duration": 12.0, "windows": [[0.0, 12.0], [1, 2]]},
    ]
    collate = GroundingCollator(tiny_tokenizer(), FeatureDirectory(tmp_path))
    batch = collate(rows)
    assert batch["video_features"].shape == (2, 6, 3)
    assert batch["frame_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["video_features"][0, 4:].abs().sum() == 0
    # short: 4 bins of 2 s, [2, 5] s -> frames 1..2; long: 6 bins of 2 s, first window [0, 12] -> 0..5
    assert batch["start_frames"].tolist() == [1, 0] and batch["end_frames"].tolist() == [2, 5]
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1].tolist()[-1] == 0
    fixed = GroundingCollator(tiny_tokenizer(), FeatureDirectory(tmp_path), num_frames=3)(rows)
    assert fixed["video_features"].shape == (2, 3, 3) and fixed["frame_mask"].all()
    unlabelled = collate([{**rows[0], "windows": []}])
    assert "start_frames" not in unlabelled


def test_collator_refuses_labels_outside_the_video_and_raw_pixels(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((5, 3), np.float32))
    collate = GroundingCollator(tiny_tokenizer(), FeatureDirectory(tmp_path))
    row = {"qid": "q", "vid": "v", "query": "a door opens", "duration": 10.0, "windows": [[2.0, 5.0]]}
    assert collate([row])["end_frames"].tolist() == [2]
    assert collate([{**row, "windows": [[8.0, 12.0]]}])["end_frames"].tolist() == [4]  # overlapping: clipped
    for windows in ([[20.0, 25.0]], [[-9.0, -5.0]], [[10.0, 10.0]]):  # trained as the edge frame before
        with pytest.raises(ValueError, match=r"Row 0 \(qid 'q'\): 'windows' item .* lies outside the video's 10.0 s"):
            collate([{**row, "windows": windows}])
    labels = {"clip_length": 2.0, "saliency_scores": [[1, 2, 3]]}
    assert collate([{**row, "relevant_clip_ids": [4], **labels}])["saliency_targets"][0, -1] == 2.0
    with pytest.raises(ValueError, match=r"'relevant_clip_ids' \[4\] lie beyond the video's 4 clips"):
        collate([{**row, "duration": 9.0, "relevant_clip_ids": [4], **labels}])  # whole clips, as the metrics count
    for ids, message in (([5], r"'relevant_clip_ids' \[5\] lie beyond the video's 5 clips of 2.0 s"),
                         ([10**9], r"'relevant_clip_ids' \[1000000000\] lie beyond"),  # an 8 GB array before
                         ([1, 1], r"'relevant_clip_ids' lists a clip twice"),
                         (np.array([1]), r"'relevant_clip_ids' must be a list of clip indices")):
        scores = [[1, 2, 3]] * len(ids)
        with pytest.raises(ValueError, match=message):
            collate([{**row, "relevant_clip_ids": ids, "clip_length": 2.0, "saliency_scores": scores}])
    with pytest.raises(ValueError, match=r"clip_length of 1e-09 s cuts the 10.0 s video into more than"):
        collate([{**row, "relevant_clip_ids": [1], "clip_length": 1e-9, "saliency_scores": [[1]]}])
    pixels = GroundingCollator(tiny_tokenizer(), lambda vid: torch.zeros(5, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"returned torch.uint8 frames, raw pixels; return them preprocessed"):
        pixels([row])


def test_feature_sources_and_the_collator_name_wrong_arguments(tmp_path):
    h5py = pytest.importorskip("h5py")
    from peft_vtg.timeline import check_clip_count

    with h5py.File(tmp_path / "f.h5", "w") as handle:
        handle["v"] = np.ones((4, 3), np.float32)
        handle["group/v"] = np.ones((4, 3), np.float32)  # an id with "/" is a group
    source = H5FeatureFile(tmp_path / "f.h5", dim=3)
    assert source("v").shape == (4, 3)
    with pytest.raises(ValueError, match=r"f.h5\['group'\] is an HDF5 group, not a dataset of features"):
        source("group")
    with pytest.raises(TypeError, match="A video id must be a string, got int 7"):
        source(7)
    for make in (lambda: H5FeatureFile(tmp_path / "f.h5", dim="3"), lambda: load_feature_file(tmp_path / "f.h5", dim=0)):
        with pytest.raises(ValueError, match="dim must be"):
            make()
    with pytest.raises(TypeError, match="video_source must be callable"):
        GroundingCollator(tiny_tokenizer(), None)
    with pytest.raises(ValueError, match="clip_length must be a finite number of seconds > 0"):
        check_clip_count(10.0, 0.0, "clip_length")  # ZeroDivisionError before


def test_rows_of_a_tensor_formatted_dataset_get_a_hint(tmp_path):
    datasets = pytest.importorskip("datasets")
    np.save(tmp_path / "v.npy", np.ones((5, 3), np.float32))
    collate = GroundingCollator(tiny_tokenizer(), FeatureDirectory(tmp_path))
    rows = datasets.Dataset.from_list([{"qid": "q", "vid": "v", "query": "a door opens", "duration": 10.0,
                                        "windows": [[2.0, 5.0]]}])
    assert collate([rows[0]])["end_frames"].tolist() == [2]
    with pytest.raises(ValueError, match=r"'duration' must be a finite number .*gives tensors; give the rows as "
                                         r"Python values \(dataset.with_format\(None\)\)"):
        collate([rows.with_format("torch")[0]])


def _write_frames(path, images, codec="mpeg4", rate=4, container_format=None, container_options=None, setup=None):
    """Encode RGB `images` (n, H, W, 3) with PyAV; `setup(stream, container)` before the first frame."""
    import av

    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = images.shape[1], images.shape[2]
        stream.pix_fmt = "yuv420p"
        if setup:
            setup(stream, container)
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _ramp(count, size=32):
    """`count` grey frames, frame i a grey of 20 + 25 i (which `_greys(frames, seconds=8)` reads back as i)."""
    return np.stack([np.full((size, size, 3), 20 + 25 * i, np.uint8) for i in range(count)])


@pytest.mark.parametrize("attached", [True, False], ids=["cover-picture-first", "still-track-first"])
def test_the_video_stream_is_the_one_players_show_not_a_still_before_it(tmp_path, attached):
    av = pytest.importorskip("av")
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    with av.open(str(tmp_path / "v.mkv"), "w") as container:
        still = container.add_stream("mjpeg", rate=1)
        still.width = still.height = 32
        still.pix_fmt = "yuvj420p"
        if attached:
            still.disposition = av.stream.Disposition.attached_pic
        video = container.add_stream("mpeg4", rate=4)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        container.mux(still.encode(av.VideoFrame.from_ndarray(red, format="rgb24")))
        container.mux(still.encode())
        for image in _ramp(8):
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
    frames, duration = decode_video(tmp_path / "v.mkv", num_frames=8)  # 8 red stills over 1 s before
    assert duration == pytest.approx(2.0) and _greys(frames) == list(range(8))


def test_mpeg_program_streams_are_timed_from_their_packets_not_the_estimate(tmp_path):
    pytest.importorskip("av")
    _write_frames(tmp_path / "v.mpg", _ramp(8), codec="mpeg2video", container_format="mpeg")
    frames, duration = decode_video(tmp_path / "v.mpg", num_frames=8)  # 0.25 s, every sample frame 0, before
    assert duration == pytest.approx(2.0) and _greys(frames) == list(range(8))


def test_non_square_pixels_are_shown_as_players_scale_them(tmp_path):
    pytest.importorskip("av")
    from fractions import Fraction

    stored = np.zeros((4, 32, 48, 3), np.uint8)  # red | green | blue: a quarter, a half, a quarter of the width
    stored[:, :, :12, 0], stored[:, :, 12:36, 1], stored[:, :, 36:, 2] = 255, 255, 255

    def wide_pixels(stream, container):
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)

    _write_frames(tmp_path / "v.mp4", stored, setup=wide_pixels)
    frames, _ = decode_video(tmp_path / "v.mp4", num_frames=1)
    assert frames.shape == (1, 3, 32, 64)  # displayed 64 wide, as players show it (48 before)
    crop = VideoFiles(tmp_path, num_frames=1, image_size=16, mean=(0, 0, 0), std=(1, 1, 1))("v")
    assert crop[0].argmax(dim=0)[8].tolist() == [1] * 16  # the centre players show is the green half


def test_packets_without_durations_still_count_the_last_frame(tmp_path):
    av = pytest.importorskip("av")
    if "libvpx" not in av.codecs_available:
        pytest.skip("this PyAV has no VP8 encoder")
    _write_frames(tmp_path / "cfr.webm", _ramp(8), codec="libvpx", rate=1)
    # a live webm (what a browser's MediaRecorder writes) has no duration in its header: timed from its packets
    with av.open(str(tmp_path / "cfr.webm")) as source, \
            av.open(str(tmp_path / "v.webm"), "w", options={"live": "1"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.duration, packet.stream = 0, stream  # as a browser's MediaRecorder writes them
            target.mux(packet)
    frames, duration = decode_video(tmp_path / "v.webm", num_frames=8)  # 7 s, frame 7 never shown, before
    assert duration == pytest.approx(8.0) and _greys(frames) == list(range(8))
