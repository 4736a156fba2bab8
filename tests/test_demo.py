"""The shipped backbone, its pre-training script, and `peft-vtg demo` (tiny settings)."""

import json

import pytest
import torch

from peft_vtg.cli import main
from peft_vtg.synth import SynthVTG, pixel_values
from peft_vtg.synth.backbone import BACKBONE_DIR, load_backbone, motion_embedding, pretrain_backbone


def test_shipped_backbone_loads_and_is_small():
    model, tokenizer = load_backbone()
    assert type(model).__name__ == "CLIPModel"
    size = sum(p.stat().st_size for p in BACKBONE_DIR.iterdir())
    assert size < 5 * 2**20  # a few MB inside the package
    info = json.loads((BACKBONE_DIR / "pretraining.json").read_text())
    # far above chance: it was really pre-trained (the motion embedding is the one grounding relies on)
    assert info["held_in_motion_retrieval_top1"] > 10 * info["held_in_retrieval_chance"]


def test_shipped_backbone_tells_matching_captions_from_others():
    model, tokenizer = load_backbone()
    data = SynthVTG(seed=5)
    clips = data.pretraining_clips(64)
    with torch.no_grad():
        frames = torch.stack([pixel_values(f) for f, _, _ in clips])  # (64, 16, 3, 32, 32)
        text = tokenizer([c for _, c, _ in clips], padding=True, return_tensors="pt")
        video = model.visual_projection(model.vision_model(pixel_values=frames.flatten(0, 1)).pooler_output)
        video = motion_embedding(video.view(64, 16, -1))  # what changes in the clip, (64, dim)
        captions = torch.nn.functional.normalize(model.text_projection(model.text_model(**text).pooler_output), dim=-1)
    similarity = captions @ video.t()
    # the matching clip scores above the average other clip for most captions
    diagonal = similarity.diag()
    others = (similarity.sum(1) - diagonal) / 63
    assert (diagonal > others).float().mean() > 0.8


def test_pretraining_script_reproduces_a_loadable_backbone(tmp_path):
    logs = pretrain_backbone(tmp_path, num_clips=300, steps=2, batch_size=8)
    assert {"contrastive_loss", "motion_contrastive_loss", "vtm_loss", "held_in_retrieval_top1",
            "held_in_motion_retrieval_top1", "seconds"} <= set(logs)
    model, tokenizer = load_backbone(tmp_path)
    assert model.config.projection_dim == 64 and len(tokenizer) == model.config.text_config.vocab_size


def test_hard_negative_pretraining_pairs_clips_that_differ_in_one_attribute(tmp_path):
    from peft_vtg.synth.backbone import _hard_partners

    triples = [("red", "circle", "grow"), ("red", "square", "grow"), ("red", "circle", "blink"),
               ("blue", "circle", "grow"), ("green", "triangle", "vanish"), ("red", "circle", "grow")]
    partner = _hard_partners(triples, seed=0)
    for _ in range(50):  # every partner of clip 0 differs from it in exactly one attribute (clip 5 is its twin)
        other = triples[partner(0)]
        assert sum(a != b for a, b in zip(triples[0], other)) == 1
    assert partner(4) in range(len(triples))  # no look-alike: any clip
    with pytest.raises(ValueError, match="hard_negative_fraction"):
        pretrain_backbone(tmp_path, num_clips=300, steps=1, batch_size=8, hard_negative_fraction=1.5)
    logs = pretrain_backbone(tmp_path, num_clips=300, steps=2, batch_size=8, hard_negative_fraction=0.5)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    load_backbone(tmp_path)


def test_attribute_term_names_each_attribute_from_both_towers(tmp_path):
    from peft_vtg.synth.backbone import ATTRIBUTE_VALUES, AttributePrototypes, attribute_labels

    labels = attribute_labels([("red", "circle", "grow"), ("blue", "triangle", "vanish")])
    assert [ATTRIBUTE_VALUES["shape"][i] for i in labels["shape"].tolist()] == ["circle", "triangle"]
    assert [ATTRIBUTE_VALUES["action"][i] for i in labels["action"].tolist()] == ["grow", "vanish"]
    prototypes = AttributePrototypes(dim=64)
    torch.manual_seed(0)
    # an embedding that points at its values' prototypes is named right; one pointing elsewhere is not
    right = torch.nn.functional.normalize(sum(prototypes.prototypes[name][labels[name]] for name in ATTRIBUTE_VALUES),
                                          dim=-1)
    wrong = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    assert prototypes.loss(right, labels) < prototypes.loss(wrong, labels)
    # accuracy classifies as the loss does, by cosine: a prototype whose norm drifted in training must not win the
    # argmax for embeddings that point elsewhere
    with torch.no_grad():
        prototypes.prototypes["shape"][0] *= 50.0
    shape_right = torch.nn.functional.normalize(prototypes.prototypes["shape"][labels["shape"]], dim=-1)
    assert prototypes.accuracy(shape_right, {"shape": labels["shape"]}) == {"shape": 1.0}
    assert torch.equal(prototypes.logits(shape_right, "shape").argmax(1), labels["shape"])
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="attribute_weight"):
            pretrain_backbone(tmp_path / "bad", num_clips=300, steps=1, batch_size=8, attribute_weight=bad)
    for bad_warmup, weight in ((-1, 1.0), (1.5, 1.0), (True, 1.0), (5, 0.0)):  # warm-up needs the term
        with pytest.raises(ValueError, match="attribute_warmup_steps"):
            pretrain_backbone(tmp_path / "bad", num_clips=300, steps=1, batch_size=8, attribute_weight=weight,
                              attribute_warmup_steps=bad_warmup)
    assert not (tmp_path / "bad").exists()
    logs = pretrain_backbone(tmp_path, num_clips=300, steps=2, batch_size=8, attribute_weight=1.0,
                             attribute_warmup_steps=2)
    assert torch.isfinite(torch.tensor(logs["attribute_loss"]))
    # the held-in checks name each attribute where the term trains it
    assert {"held_in_text_shape_accuracy", "held_in_object_frame_shape_accuracy",
            "held_in_motion_action_accuracy"} <= set(logs)
    # the prototypes are a training aid, discarded like the matching heads: the saved backbone is a plain CLIP
    model, _ = load_backbone(tmp_path)
    assert not any("prototype" in name for name, _ in model.named_parameters())
    assert "attribute_loss" not in pretrain_backbone(tmp_path / "plain", num_clips=300, steps=1, batch_size=8)


def test_pretraining_continues_from_a_backbone_with_a_vision_shape_term_and_distillation(tmp_path):
    from safetensors.torch import load_file

    for kwargs, match in (({"distill_weight": 1.0}, "init_backbone"),  # distillation needs a starting backbone
                          ({"init_backbone": BACKBONE_DIR, "patch_size": 4}, "patch_size"),
                          ({"vision_attribute_weight": -1.0}, "vision_attribute_weight"),
                          ({"event_attribute_weight": True}, "event_attribute_weight"),
                          ({"distill_weight": float("nan"), "init_backbone": BACKBONE_DIR}, "distill_weight")):
        with pytest.raises(ValueError, match=match):
            pretrain_backbone(tmp_path / "bad", num_clips=300, steps=1, batch_size=8, **kwargs)
    with pytest.raises(ValueError, match="overwrite"):  # the default output_dir is the shipped backbone itself
        pretrain_backbone(init_backbone=BACKBONE_DIR, num_clips=300, steps=1, batch_size=8)
    with pytest.raises(FileNotFoundError, match="No backbone"):
        pretrain_backbone(tmp_path / "bad", num_clips=300, steps=1, batch_size=8, init_backbone=tmp_path / "none")
    assert not (tmp_path / "bad").exists()
    shipped = load_file(BACKBONE_DIR / "model.safetensors")
    # a learning rate of 0 saves the starting weights unchanged, and the student starts where its teacher is
    logs = pretrain_backbone(tmp_path / "same", num_clips=300, steps=1, batch_size=8, learning_rate=0.0,
                             init_backbone=BACKBONE_DIR, vision_attribute_weight=1.0, event_attribute_weight=1.0,
                             distill_weight=1.0)
    saved = load_file(tmp_path / "same" / "model.safetensors")
    assert saved.keys() == shipped.keys() and all(torch.equal(saved[k], shipped[k]) for k in shipped)
    assert logs["distill_loss"] == pytest.approx(0.0, abs=1e-5)
    for key in ("held_in_object_frame_pooled_shape_accuracy", "held_in_event_shape_accuracy",
                "held_in_event_action_accuracy"):
        assert 0.0 <= logs[key] <= 1.0
    assert "attribute_loss" not in logs  # the joint-space term stays out unless asked for
    logs = pretrain_backbone(tmp_path / "moved", num_clips=300, steps=2, batch_size=8, learning_rate=1e-3,
                             init_backbone=BACKBONE_DIR, vision_attribute_weight=1.0, distill_weight=1.0)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    moved = load_file(tmp_path / "moved" / "model.safetensors")
    assert not all(torch.equal(moved[k], shipped[k]) for k in shipped)
    model, _ = load_backbone(tmp_path / "moved")  # a plain CLIP: the vision prototypes are discarded
    assert not any("prototype" in name for name, _ in model.named_parameters())


def test_scene_accuracy_asks_which_shape_goes_with_each_colour():
    from peft_vtg.synth.backbone import SCENE_PAIRS, scene_accuracy, scene_targets

    labels = [[("red", "circle"), ("red", "square"), ("blue", "circle")], [("green", "triangle"), ("red", "circle")]]
    targets = scene_targets(labels)
    assert targets.shape == (2, len(SCENE_PAIRS)) and targets.sum().item() == 5
    assert targets[0, SCENE_PAIRS.index(("blue", "circle"))] == 1
    assert targets[0, SCENE_PAIRS.index(("blue", "square"))] == 0
    assert scene_accuracy(targets * 4 - 2, targets) == {"shape": 1.0, "exact_set": 1.0}
    # every present pair outscored by an absent shape of its colour: each colour seen, none of its shapes right
    swapped = targets.clone()
    for row, actors in enumerate(labels):
        for colour in {c for c, _ in actors}:
            absent = next(s for s in ("square", "circle", "triangle") if (colour, s) not in actors)
            swapped[row, SCENE_PAIRS.index((colour, absent))] = 2.0
    accuracy = scene_accuracy(swapped, targets)
    assert accuracy["shape"] == 0.0 and accuracy["exact_set"] == 0.0
    # one frame right: half of the sets exact, and the shape score counts actors, not frames (2 of 5)
    accuracy = scene_accuracy(torch.cat([swapped[:1], targets[1:] * 4 - 2]), targets)
    assert accuracy == {"shape": pytest.approx(0.4), "exact_set": 0.5}


def test_pretraining_scene_stage_moves_the_vision_tower_alone(tmp_path):
    from safetensors.torch import load_file

    for kwargs, match in (({"scene_steps": -1}, "scene_steps"), ({"scene_steps": 1.5}, "scene_steps"),
                          ({"scene_steps": True}, "scene_steps"), ({"scene_steps": 2, "num_scenes": 5}, "num_scenes"),
                          ({"steps": -1}, "steps")):
        with pytest.raises(ValueError, match=match):
            pretrain_backbone(tmp_path / "bad", num_clips=300, batch_size=8, **kwargs)
    assert not (tmp_path / "bad").exists()
    shipped = load_file(BACKBONE_DIR / "model.safetensors")
    logs = pretrain_backbone(tmp_path / "scenes", num_clips=300, steps=0, batch_size=8, learning_rate=1e-3,
                             init_backbone=BACKBONE_DIR, scene_steps=3, num_scenes=40, distill_weight=1.0)
    assert {"scene_loss", "scene_distill_loss"} <= set(logs) and "contrastive_loss" not in logs  # no clip steps
    for key in ("held_in_scene_shape_accuracy", "held_in_scene_exact_set_accuracy", "held_in_motion_retrieval_top1"):
        assert 0.0 <= logs[key] <= 1.0
    saved = load_file(tmp_path / "scenes" / "model.safetensors")
    assert saved.keys() == shipped.keys()  # a plain CLIP: the scene head is discarded
    moved = {k for k in shipped if not torch.equal(saved[k], shipped[k])}
    assert moved and all(k.startswith("vision_model.") for k in moved)  # text tower and projections untouched


def test_pretraining_script_passes_each_term_weight_and_records_it(tmp_path, monkeypatch):
    from benchmark_scripts import load_benchmark

    script = load_benchmark("pretrain_backbone")
    monkeypatch.setattr("sys.argv", ["pretrain_backbone.py", "--output-dir", str(tmp_path), "--num-clips", "300",
                                     "--steps", "1", "--init-backbone", str(BACKBONE_DIR), "--learning-rate", "1e-4",
                                     "--vision-attribute-weight", "2", "--event-attribute-weight", "0.5",
                                     "--distill-weight", "3", "--scene-steps", "2", "--num-scenes", "40"])
    script.main()
    logs = json.loads((tmp_path / "pretraining.json").read_text())
    assert (logs["vision_attribute_weight"], logs["event_attribute_weight"], logs["distill_weight"]) == (2, 0.5, 3)
    assert logs["learning_rate"] == 1e-4 and logs["init_backbone"] == str(BACKBONE_DIR)
    assert {"vision_attribute_loss", "event_attribute_loss", "distill_loss", "scene_loss"} <= set(logs)  # each ran
    assert (logs["scene_steps"], logs["num_scenes"]) == (2, 40)
    assert "attribute_weight" not in logs and "attribute_loss" not in logs  # a weight left at 0 is left out


def test_pretraining_takes_a_finer_patch_and_the_demo_adapter_fits_it(tmp_path):
    from peft import get_peft_model

    from peft_vtg.demo import demo_config
    from peft_vtg.synth.backbone import backbone_config

    for bad in (0, 3, 5, 64, 4.0, True):  # must be a positive integer dividing the 32-pixel frame
        with pytest.raises(ValueError, match="patch_size"):
            pretrain_backbone(tmp_path / "bad", num_clips=300, steps=1, batch_size=8, patch_size=bad)
    assert not (tmp_path / "bad").exists()
    assert backbone_config(load_backbone()[1]).vision_config.patch_size == 8  # the shipped recipe is unchanged
    pretrain_backbone(tmp_path, num_clips=300, steps=2, batch_size=8, patch_size=4)
    model, _ = load_backbone(tmp_path)
    assert model.config.vision_config.patch_size == 4
    frames = pixel_values(SynthVTG(seed=5).pretraining_clips(1)[0][0][:2])  # (2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=frames).last_hidden_state
    assert tokens.shape[:2] == (2, 1 + (32 // 4) ** 2)  # CLS + an 8x8 grid
    peft_model = get_peft_model(model, demo_config())
    prompts = peft_model.base_model.model.vtg_prompts.vtg_prompt_tokens["default"].video_prompts  # (3, 8, 64)
    # VPT's uniform init: bound sqrt(6 / (3 * patch**2 + 64)), 0.23 for 4-pixel patches, 0.15 for 8-pixel ones
    assert 0.16 < prompts.abs().max().item() <= (6 / (3 * 16 + 64)) ** 0.5


def test_demo_command_runs_end_to_end(tmp_path, capsys):
    code = main(["demo", "--output-dir", str(tmp_path / "demo"), "--train-videos", "8", "--val-videos", "3",
                 "--test-videos", "4", "--max-steps", "2", "--batch-size", "4", "--domain", "cluttered", "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)  # stdout holds the one JSON object and nothing else
    assert metrics["num_queries"] == 8 and 0.0 <= metrics["mIoU"] <= 100.0
    assert (tmp_path / "demo" / "adapter_model.safetensors").exists()
    assert (tmp_path / "demo" / "metrics.json").exists()
    assert "HL-min-VeryGood-mAP" not in metrics


def test_demo_with_highlights_reports_highlight_detection(tmp_path, capsys):
    code = main(["demo", "--output-dir", str(tmp_path / "demo"), "--train-videos", "8", "--val-videos", "3",
                 "--test-videos", "4", "--max-steps", "2", "--batch-size", "4", "--highlights"])
    out = capsys.readouterr().out
    assert code == 0 and "HL-min-VeryGood-mAP" in out and "MR-full-mAP" in out
    assert json.loads((tmp_path / "demo" / "adapter_config.json").read_text())["predict_saliency"] is True


def test_cli_demo_defaults_are_run_demos():
    import inspect

    from peft_vtg.cli import build_parser
    from peft_vtg.demo import run_demo

    args = build_parser().parse_args(["demo"])
    defaults = {k: p.default for k, p in inspect.signature(run_demo).parameters.items() if k in vars(args)}
    assert defaults and all(getattr(args, k) == v for k, v in defaults.items()), (defaults, vars(args))
    from peft_vtg.synth import DOMAINS

    domain = next(action for action in build_parser()._subparsers._group_actions[0].choices["demo"]._actions
                  if action.dest == "domain")
    assert sorted(domain.choices) == sorted(DOMAINS)  # spelled out in the CLI so that --help stays fast
