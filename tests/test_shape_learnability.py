"""`benchmarks/shape_learnability.py`: its frames show the shape they are labelled with, and its probe measures."""

import json

import numpy as np
import pytest
import torch

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def script():
    return load_benchmark("shape_learnability")


def test_frames_show_the_labelled_shape_in_the_labelled_colour(script):
    from peft_vtg.synth.text import COLOURS, SHAPES

    data = script.shape_frames(300, seed=3)
    assert data["frames"].shape == (300, 32, 32, 3) and data["frames"].dtype == np.uint8
    assert torch.equal(data["labels"], script.shape_frames(300, seed=3)["labels"])
    assert set(data["labels"].tolist()) == {0, 1, 2}
    area_per_size = {shape: [] for shape in SHAPES}
    for frame, label, size, colour in zip(data["frames"], data["labels"].tolist(), data["sizes"], data["colours"]):
        area = int((frame == np.array(COLOURS[colour], np.uint8)).all(-1).sum())  # an opaque actor: exact colour
        assert area > 0
        area_per_size[SHAPES[label]].append(area / size**2)
    mean = {shape: float(np.mean(ratios)) for shape, ratios in area_per_size.items()}
    # a square covers 4 s^2, a circle pi s^2, an apex-up triangle 2 s^2: the labels must follow the pixels
    assert mean["square"] > mean["circle"] > mean["triangle"]
    assert mean["triangle"] == pytest.approx(2.0, rel=0.3) and mean["square"] == pytest.approx(4.0, rel=0.3)


def test_linear_probe_finds_a_signal_and_not_noise(script):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (600,), generator=generator)
    noise = torch.randn(600, 16, generator=generator)
    signal = noise.clone()
    signal[:, :3] += 4 * torch.nn.functional.one_hot(labels, 3)
    assert script.linear_probe_accuracy(signal[:400], labels[:400], signal[400:], labels[400:]) > 95
    assert script.linear_probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:]) < 55


def test_script_writes_its_results(script, tmp_path):
    results = tmp_path / "shape.json"
    script.main(["--patch-sizes", "8", "4", "--steps", "2", "--train-frames", "60", "--test-frames", "30",
                 "--results", str(results)])
    saved = json.loads(results.read_text())
    assert set(saved["supervised_by_patch_size"]) == {"8", "4"}
    assert [point["step"] for point in saved["supervised_by_patch_size"]["4"]] == [1, 2]
    assert set(saved["frozen_linear_probe_percent"]) == {"shipped backbone", "untrained tower, patch 8"}
