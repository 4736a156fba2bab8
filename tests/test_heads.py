"""Grounding and matching heads: losses against hand-computed values, decoding, and the heads inside adapters."""

import json
import math

import pytest
import torch
from torch.nn import functional as F
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_vtg import VTGPromptConfig
from peft_vtg.vtg_prompt.config import default_head_hidden_size
from peft_vtg.heads import (
    AllInOneMatchingHead,
    VioletMatchingHead,
    VTGTaskHeads,
    boundary_targets,
    decode_frame_spans,
    decode_moments,
    grounding_loss,
    swap_partners,
)
from tiny_models import BUILDERS, FRAMES, inputs, layer_outputs, tiny_clip, tiny_tvp, tiny_xclip

HEAD = dict(head_hidden_size=8, head_num_attention_heads=2, head_num_layers=1)


# ---------------------------------------------------------------- temporal convolution
def test_temporal_convolution_sees_only_neighbouring_frames_and_ignores_padding():
    torch.manual_seed(0)
    head = VTGTaskHeads(6, 5, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0, temporal_kernel_size=3).grounding
    assert head.temporal_conv.weight.shape == (8, 1, 3)  # depthwise: 3 weights per channel
    video, text = torch.randn(1, 7, 6), torch.randn(1, 4, 5)
    projected = {}
    head.temporal_conv.register_forward_hook(lambda m, i, o: projected.update(out=o.transpose(1, 2)))
    head.fuse(video, torch.ones(1, 7, dtype=torch.long), text, torch.ones(1, 4, dtype=torch.long))
    before = projected["out"].clone()
    changed = video.clone()
    changed[0, 5] = torch.randn(6)  # frame 5 changes: only frames 4..6 of the convolution output may move
    head.fuse(changed, torch.ones(1, 7, dtype=torch.long), text, torch.ones(1, 4, dtype=torch.long))
    moved = (projected["out"] - before).abs().amax(dim=-1)[0] > 1e-6
    assert moved.tolist() == [False, False, False, False, True, True, True]
    # Padding: the 5 real frames of a padded 7-frame video fuse exactly as the same 5 frames alone.
    padded = head.fuse(video, torch.tensor([[1, 1, 1, 1, 1, 0, 0]]), text, torch.ones(1, 4, dtype=torch.long))
    alone = head.fuse(video[:, :5], torch.ones(1, 5, dtype=torch.long), text, torch.ones(1, 4, dtype=torch.long))
    torch.testing.assert_close(padded[:, :6], alone)


def test_hadamard_fusion_lets_the_sentence_reach_frames_before_cross_attention():
    torch.manual_seed(0)
    video, mask = torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.long)
    text_a, text_b, text_mask = torch.randn(2, 4, 5), torch.randn(2, 4, 5), torch.ones(2, 4, dtype=torch.long)
    for hadamard in (False, True):
        head = VTGTaskHeads(6, 5, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0, hadamard_fusion=hadamard)
        head.eval()
        torch.nn.init.zeros_(head.grounding.fusion[0].cross_attn.out_proj.weight)  # cut the cross-attention path
        torch.nn.init.zeros_(head.grounding.fusion[0].cross_attn.out_proj.bias)
        a = head(video, mask, text_a, text_mask).start_logits
        b = head(video, mask, text_b, text_mask).start_logits
        assert (not torch.allclose(a, b)) == hadamard  # only the Hadamard path carries the text now


@pytest.mark.parametrize("kernel, hadamard", [(0, False), (3, False), (0, True), (3, True)])
def test_frozen_head_computes_the_same_bits_as_the_trainable_one(kernel, hadamard):
    # A loaded adapter is frozen; it must reproduce the trained adapter exactly (strided inputs to nn.Linear do not).
    torch.manual_seed(0)
    head = VTGTaskHeads(32, 32, hidden_size=32, num_layers=1, num_heads=4, dropout=0.0, temporal_kernel_size=kernel,
                        hadamard_fusion=hadamard).eval()
    args = (torch.randn(12, 4, 32), torch.ones(12, 4, dtype=torch.long), torch.randn(12, 7, 32),
            torch.ones(12, 7, dtype=torch.long))
    trainable = head(*args).start_logits
    head.requires_grad_(False)
    assert torch.equal(trainable, head(*args).start_logits)


# ---------------------------------------------------------------- losses
def test_uniform_logits_cost_log_of_the_real_frame_count():
    start = torch.zeros(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    start = start.masked_fill(mask == 0, torch.finfo(start.dtype).min)
    terms = grounding_loss(start, start.clone(), None, mask, torch.tensor([0, 2]), torch.tensor([5, 2]))
    # row 0: 6 real frames -> log 6; row 1: 3 real frames -> log 3; mean over rows, for start and for end
    expected = (math.log(6) + math.log(3)) / 2
    assert terms["start_loss"].item() == pytest.approx(expected, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(2 * expected, abs=1e-6)
    assert "inside_loss" not in terms


def test_cross_entropy_hand_computed_and_inside_bce():
    start = torch.tensor([[2.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 1.0]])
    inside = torch.tensor([[0.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.long)
    terms = grounding_loss(start, end, inside, mask, torch.tensor([0]), torch.tensor([2]), inside_weight=0.5)
    assert terms["start_loss"].item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)), abs=1e-6)
    assert terms["end_loss"].item() == pytest.approx(-math.log(math.e / (math.e + 2)), abs=1e-6)
    assert terms["inside_loss"].item() == pytest.approx(math.log(2), abs=1e-6)  # logit 0 vs every target
    total = terms["start_loss"] + terms["end_loss"] + 0.5 * terms["inside_loss"]
    assert terms["loss"].item() == pytest.approx(total.item(), abs=1e-6)


def test_boundary_smoothing_spreads_mass_to_neighbours_only_inside_the_video():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    one_hot = boundary_targets(torch.tensor([1]), mask, 0.0)
    assert one_hot.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]
    smooth = boundary_targets(torch.tensor([3]), mask, 1.0)
    assert smooth.sum().item() == pytest.approx(1.0)
    assert smooth[0, 4] == 0  # padding gets nothing
    assert smooth[0, 3] > smooth[0, 2] > smooth[0, 1] > 0
    assert smooth[0, 2] / smooth[0, 3] == pytest.approx(math.exp(-0.5), rel=1e-5)


def test_labels_outside_the_video_are_an_error():
    mask = torch.tensor([[1, 1, 1, 0]])
    logits = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="outside its video.*seconds_to_frames"):
        grounding_loss(logits, logits, None, mask, torch.tensor([1]), torch.tensor([3]))
    with pytest.raises(ValueError, match="outside its video"):
        grounding_loss(logits, logits, None, mask, torch.tensor([2]), torch.tensor([1]))


# ---------------------------------------------------------------- decoding
def test_decoding_respects_start_before_end():
    # The start peak (frame 3) is after the end peak (frame 1): the best valid span is not (3, 1).
    start = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.7]]))
    end = torch.log(torch.tensor([[0.1, 0.7, 0.1, 0.1]]))
    (spans,) = decode_frame_spans(start, end, top_k=1, nms_threshold=None)
    # candidates: (0,1)=.07, (1,1)=.07, (3,3)=.07, ... ties broken by topk order; the score must be 0.07
    assert spans[0][2] == pytest.approx(0.07, rel=1e-5)
    assert spans[0][0] <= spans[0][1]


def test_decoding_argmax_max_length_and_nms():
    start = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    end = torch.log(torch.tensor([[0.05, 0.05, 0.3, 0.6]]))
    (spans,) = decode_frame_spans(start, end, top_k=3, nms_threshold=None)
    assert spans[0] == (0, 3, pytest.approx(0.36))
    assert spans[1][:2] in [(0, 2), (1, 3)] and spans[1][2] == pytest.approx(0.18)
    (short,) = decode_frame_spans(start, end, top_k=1, max_span_frames=2, nms_threshold=None)
    assert short[0][1] - short[0][0] + 1 <= 2
    assert short[0][:2] == (1, 2) and short[0][2] == pytest.approx(0.09)
    # NMS at 0.5: (0,2) and (1,3) overlap (0,3) with IoU 0.75 and are suppressed.
    (kept,) = decode_frame_spans(start, end, top_k=3, nms_threshold=0.5)
    windows = [(s, e + 1) for s, e, _ in kept]
    for a in range(len(windows)):
        for b in range(a + 1, len(windows)):
            inter = max(0, min(windows[a][1], windows[b][1]) - max(windows[a][0], windows[b][0]))
            union = (windows[a][1] - windows[a][0]) + (windows[b][1] - windows[b][0]) - inter
            assert inter / union <= 0.5
    assert kept[0][:2] == (0, 3) and len(kept) == 3


def test_decoding_ignores_padding_and_converts_to_seconds():
    start = torch.tensor([[0.0, 5.0, 0.0, 9.0, 9.0]])
    end = torch.tensor([[0.0, 0.0, 5.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])  # the large logits sit on padding
    (spans,) = decode_frame_spans(start, end, mask, top_k=1)
    assert spans[0][:2] == (1, 2)
    (moments,) = decode_moments(start, end, [30.0], mask, top_k=1)
    assert moments[0][:2] == (pytest.approx(10.0), pytest.approx(30.0))  # 3 real frames of 10 s each
    (capped,) = decode_moments(start, end, [30.0], mask, top_k=1, max_span_seconds=10.0)
    assert capped[0][1] - capped[0][0] <= 10.0 + 1e-6


# ---------------------------------------------------------------- matching heads
def test_matching_head_layouts_and_init():
    violet = VioletMatchingHead(16).classifier
    assert [type(m).__name__ for m in violet] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert violet[0].p == 0.1 and (violet[1].in_features, violet[1].out_features) == (16, 32) and violet[3].out_features == 1
    torch.manual_seed(0)
    aio = AllInOneMatchingHead(512).classifier
    assert (aio.in_features, aio.out_features) == (512, 2)
    assert torch.all(aio.bias == 0) and aio.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_swap_partners_never_pairs_two_queries_of_one_video():
    torch.manual_seed(0)
    for _ in range(20):
        partners = swap_partners(4, ["a", "a", "b", "c"])
        for row, other in enumerate(partners.tolist()):
            assert other != row and ["a", "a", "b", "c"][other] != ["a", "a", "b", "c"][row]
    assert swap_partners(2, ["a", "a"]).tolist() == [-1, -1]


def test_matching_losses_need_a_partner_and_train_the_heads():
    heads = VTGTaskHeads(6, 5, hidden_size=8, num_layers=1, num_heads=2, vtm_heads=["violet", "all_in_one"]).train()
    video, text = torch.randn(3, 4, 6), torch.randn(3, 2, 5)
    masks = dict(frame_mask=torch.ones(3, 4), text_mask=torch.ones(3, 2))
    labels = dict(start_frames=torch.tensor([0, 1, 2]), end_frames=torch.tensor([1, 2, 3]))
    out = heads(video, text_features=text, **masks, **labels, video_ids=["a", "b", "c"])
    assert {"violet_vtm_loss", "all_in_one_vtm_loss"} <= set(out.loss_terms)
    span = out.loss_terms["start_loss"] + out.loss_terms["end_loss"] + out.loss_terms["inside_loss"]
    vtm = out.loss_terms["violet_vtm_loss"] + out.loss_terms["all_in_one_vtm_loss"]
    assert out.loss.item() == pytest.approx((span + 0.5 * vtm).item(), rel=1e-5)
    out.loss.backward()
    assert heads.violet_vtm.classifier[3].weight.grad.abs().sum() > 0
    assert heads.all_in_one_vtm.classifier.weight.grad.abs().sum() > 0
    # all rows show the same video: no negatives, no matching loss (and no error)
    same = heads(video, text_features=text, **masks, **labels, video_ids=["a", "a", "a"])
    assert "violet_vtm_loss" not in same.loss_terms and "all_in_one_vtm_loss" not in same.loss_terms
    assert out.violet_vtm_logits.shape == (3,) and out.all_in_one_vtm_logits.shape == (3, 2)


def test_a_clip_without_its_moment_is_a_mismatch_for_the_matching_heads():
    from peft_vtg.heads.matching import all_in_one_matching_loss, violet_matching_loss

    torch.manual_seed(0)
    heads = VTGTaskHeads(6, 5, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0,
                         vtm_heads=["violet", "all_in_one"]).eval()
    video, text = torch.randn(3, 4, 6), torch.randn(3, 2, 5)
    frame_mask, text_mask = torch.ones(3, 4), torch.ones(3, 2)
    cls = heads._fused_cls(video, frame_mask, text, text_mask)
    present = torch.tensor([True, False, True])
    generator = torch.Generator().manual_seed(3)
    got = violet_matching_loss(heads.violet_vtm, heads._fused_cls, cls, video, frame_mask, text, text_mask,
                               video_ids=["a", "b", "c"], generator=generator, moment_present=present)
    partners = swap_partners(3, ["a", "b", "c"], torch.Generator().manual_seed(3))
    negatives = heads._fused_cls(video, frame_mask, text[partners], text_mask[partners])
    logits = torch.cat([heads.violet_vtm(cls), heads.violet_vtm(negatives)])
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    # All-in-One with nothing swapped: each row's own pair, labelled by whether its clip holds the moment.
    got = all_in_one_matching_loss(heads.all_in_one_vtm, heads._fused_cls, cls, video, frame_mask, text, text_mask,
                                   video_ids=["a", "b", "c"], swap_probability=0.0, moment_present=present)
    expected = F.cross_entropy(heads.all_in_one_vtm(cls), torch.tensor([1, 0, 1]))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------- heads inside adapters
def grounding_model(arch, **overrides):
    config = dict(num_video_tokens=2, num_text_tokens=2, **HEAD)
    config.update(overrides)
    return get_peft_model(BUILDERS[arch](), VTGPromptConfig(**config))


LABELS = dict(start_frames=torch.tensor([0, 1]), end_frames=torch.tensor([2, 3]))


@pytest.mark.parametrize("arch", ["clip", "siglip", "x_clip"])
def test_grounding_loss_reaches_prompts_and_heads(arch):
    model = grounding_model(arch).train()
    out = model.forward_grounding(**inputs(arch), **LABELS)
    assert out.start_logits.shape == (2, FRAMES) and out.inside_logits.shape == (2, FRAMES)
    out.loss.backward()
    layer = model.base_model.model.vtg_prompts
    encoder, heads = layer.vtg_prompt_tokens["default"], layer.vtg_prompt_heads["default"]
    assert encoder.video_prompts.grad.abs().sum() > 0 and encoder.text_prompts.grad.abs().sum() > 0
    assert heads.grounding.span_head[-1].weight.grad.abs().sum() > 0
    assert not any(p.grad is not None for n, p in model.named_parameters() if "vtg_prompt" not in n)


@pytest.mark.parametrize("arch", ["clip", "x_clip"])
def test_per_frame_features_follow_the_spec(arch):
    model = grounding_model(arch)
    x = inputs(arch)
    base = model.get_base_model()
    with torch.no_grad():
        features = model.encode_video(x["pixel_values"])
        out = base(**x)
    if arch == "clip":  # framewise: the per-frame pooled output, as the image tower computes it
        with torch.no_grad():
            pooled = base.vision_model(pixel_values=x["pixel_values"].flatten(0, 1)).pooler_output
        assert torch.allclose(features, pooled.view(2, FRAMES, -1))
    else:  # X-CLIP: the multi-frame integration transformer's per-frame states
        assert torch.allclose(features, out.mit_output.last_hidden_state, atol=1e-6)
    assert features.shape[-1] == model.peft_config["default"].video_feature_size


def test_feature_input_equals_frame_input_without_video_prompts():
    model = grounding_model("clip", num_video_tokens=0).eval()
    x = inputs("clip")
    with torch.no_grad():
        from_frames = model.forward_grounding(**x)
        features = model.encode_video(x["pixel_values"])
        from_features = model.forward_grounding(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                                video_features=features)
    assert torch.allclose(from_frames.start_logits, from_features.start_logits)


def test_grounding_input_errors():
    model = grounding_model("clip")
    x = inputs("clip")
    features = torch.randn(2, FRAMES, 48)
    with pytest.raises(ValueError, match="video prompts.*num_video_tokens=0"):
        model.forward_grounding(input_ids=x["input_ids"], video_features=features)
    with pytest.raises(ValueError, match="exactly one of pixel_values"):
        model.forward_grounding(**x, video_features=features)
    with model.disable_adapter(), pytest.raises(ValueError, match="disabled"):
        model.forward_grounding(**x)
    xclip = grounding_model("x_clip")
    with pytest.raises(ValueError, match="exactly 4 frames"):
        xclip.forward_grounding(**{**inputs("x_clip"), "pixel_values": torch.randn(2, 3, 3, 32, 32)})


def test_tvp_has_no_grounding_head_and_says_so():
    model = get_peft_model(tiny_tvp(), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2))
    assert model.peft_config["default"].grounding_head is False
    with pytest.raises(ValueError, match="no grounding head|declares no per-frame features"):
        model.forward_grounding(**inputs("tvp"))
    with pytest.raises(ValueError, match="grounding_head=True needs per-frame video features"):
        get_peft_model(tiny_tvp(), VTGPromptConfig(num_video_tokens=2, grounding_head=True))


def test_head_only_adapter_trains_just_the_head():
    model = grounding_model("clip", num_video_tokens=0, num_text_tokens=0, grounding_head=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".vtg_prompt_heads.default." in n for n in trainable)
    with pytest.raises(ValueError, match="grounding_head=True to train the grounding head alone"):
        VTGPromptConfig(num_video_tokens=0, num_text_tokens=0)


def test_heads_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = grounding_model("x_clip", vtm_heads=["violet", "all_in_one"])
    base_state = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "vtg_prompt" not in k}
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    x = inputs("x_clip")
    model.eval()
    with torch.no_grad():
        expected = model.forward_grounding(**x)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any(".vtg_prompt_heads.grounding." in k for k in saved)
    assert any(".vtg_prompt_heads.violet_vtm." in k for k in saved)
    fresh = tiny_xclip()
    fresh.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    with torch.no_grad():
        got = loaded.forward_grounding(**x)
    for key in ("start_logits", "end_logits", "inside_logits", "violet_vtm_logits", "all_in_one_vtm_logits"):
        assert torch.equal(got[key], expected[key]), key


def test_loading_heads_onto_a_base_with_other_feature_widths_fails(tmp_path):
    grounding_model("clip", num_video_tokens=0).save_pretrained(tmp_path)
    from transformers import CLIPConfig, CLIPModel

    wide = tiny_clip().config.to_dict()
    wide["vision_config"]["hidden_size"] = 64
    other = CLIPModel(CLIPConfig(text_config=wide["text_config"], vision_config=wide["vision_config"]))
    with pytest.raises(ValueError, match="video_feature_size=48"):
        PeftModel.from_pretrained(other, tmp_path)


def test_per_sample_adapters_ground_like_separate_calls():
    model = grounding_model("clip")
    model.add_adapter("other", VTGPromptConfig(num_video_tokens=2, num_text_tokens=2, **HEAD))
    model.eval()
    x = inputs("clip")
    with torch.no_grad():
        mixed = model.forward_grounding(**x, adapter_names=["default", "other"])
        single = []
        for row, name in enumerate(["default", "other"]):
            model.set_adapter(name)
            part = {k: v[row : row + 1] for k, v in x.items()}
            single.append(model.forward_grounding(**part).start_logits)
    assert torch.allclose(mixed.start_logits, torch.cat(single), atol=1e-5)


def test_adapter_saved_without_head_fields_loads_without_a_head(tmp_path):
    """An adapter_config.json from before the heads (no grounding_head) must not get a random, unsaved head."""
    import json

    grounding_model("clip", grounding_head=False).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    assert saved["grounding_head"] is False
    del saved["grounding_head"]
    config_path.write_text(json.dumps(saved))
    loaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    assert len(loaded.base_model.model.vtg_prompts.vtg_prompt_heads) == 0


def test_adapter_saved_before_the_temporal_and_hadamard_settings_loads_without_them(tmp_path):
    """A config without head_temporal_kernel_size / head_hadamard_fusion predates them: its weights have neither
    module, so loading must not add a random, unsaved one (new adapters get and save 3 / True)."""
    import json

    model = grounding_model("clip")
    saved_path = tmp_path / "new"
    model.save_pretrained(saved_path)
    saved = json.loads((saved_path / "adapter_config.json").read_text())
    assert saved["head_temporal_kernel_size"] == 3 and saved["head_hadamard_fusion"] is True  # resolved and saved

    old_path = tmp_path / "old"
    grounding_model("clip", head_temporal_kernel_size=0, head_hadamard_fusion=False).save_pretrained(old_path)
    config_path = old_path / "adapter_config.json"
    old = json.loads(config_path.read_text())
    del old["head_temporal_kernel_size"], old["head_hadamard_fusion"]
    config_path.write_text(json.dumps(old))
    loaded = PeftModel.from_pretrained(tiny_clip(), old_path)
    head = loaded.base_model.model.vtg_prompts.vtg_prompt_heads["default"].grounding
    assert not hasattr(head, "temporal_conv") and not hasattr(head, "sentence_pool")


@pytest.mark.parametrize("encoder, width", [(32, 64), (64, 64), (512, 64), (768, 128), (1024, 160), (1152, 192),
                                            (1536, 256), (4096, 256)])
def test_default_head_width_scales_with_the_encoder(encoder, width):
    assert default_head_hidden_size(encoder) == width


def test_default_head_width_is_resolved_from_the_encoder_width_and_saved(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    # A video tower 768 wide (ViT-B's), one layer deep so the test stays light.
    config = CLIPConfig(projection_dim=32,
                        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=99, max_position_embeddings=32),
                        vision_config=dict(hidden_size=768, intermediate_size=37, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=32, patch_size=16))
    model = get_peft_model(CLIPModel(config), VTGPromptConfig(num_video_tokens=0, num_text_tokens=0,
                                                              grounding_head=True))
    assert model.peft_config["default"].head_hidden_size == 128
    head = model.base_model._heads_of("default").grounding
    assert head.video_proj[1].out_features == 128
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["head_hidden_size"] == 128
    explicit = get_peft_model(CLIPModel(config), VTGPromptConfig(num_video_tokens=0, num_text_tokens=0,
                                                                 grounding_head=True, head_hidden_size=96))
    assert explicit.peft_config["default"].head_hidden_size == 96


def test_default_head_width_needs_heads_that_divide_it():
    # tiny CLIP: features below 256 wide -> width 64, which 3 heads do not divide.
    with pytest.raises(ValueError, match="head_num_attention_heads \\(3\\) must divide head_hidden_size \\(64\\)"):
        get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=0, num_text_tokens=0, grounding_head=True,
                                                    head_num_attention_heads=3))
    assert VTGPromptConfig(head_num_attention_heads=3).head_hidden_size is None  # decided with the model


# ---------------------------------------------------------------- heads over several video layers
@pytest.mark.parametrize("arch", ["clip", "siglip", "x_clip"])
def test_several_layers_features_are_each_layer_pooled_as_the_tower_pools(arch):
    """encode_video(num_layers=3): layer i's entry is what the model would compute if its tower ended after layer
    i. Video prompts enter at layer 2 here, so layers 0 and 1 equal the base model's; the last is encode_video's."""
    model = grounding_model(arch, prompt_start_layer=2, head_video_layers=3).eval()
    x = inputs(arch)
    base = model.get_base_model()
    tower = base.vision_model
    with torch.no_grad():
        layered = model.encode_video(x["pixel_values"], num_layers=3)
        final = model.encode_video(x["pixel_values"])
        with model.disable_adapter():
            hidden = layer_outputs(tower.encoder.layers, lambda: tower(pixel_values=x["pixel_values"].flatten(0, 1)))
        for index in (0, 1):
            state = hidden[index]  # (rows, tokens, dim) after layer `index`
            if arch == "siglip":
                pooled = tower.head(tower.post_layernorm(state)).view(2, FRAMES, -1)
            else:
                pooled = tower.post_layernorm(state[:, 0]).view(2, FRAMES, -1)
                if arch == "x_clip":
                    pooled = base.mit(base.visual_projection(pooled))[0]
            torch.testing.assert_close(layered[:, :, index], pooled, atol=1e-5, rtol=1e-5)
    assert layered.shape == (2, FRAMES, 3, final.shape[-1])
    assert torch.equal(layered[:, :, 2], final)
    assert not torch.allclose(layered[:, :, 1], layered[:, :, 2])


def test_a_head_over_several_layers_mixes_them_per_query_and_starts_even():
    torch.manual_seed(0)
    head = VTGTaskHeads(6, 5, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0, video_layers=3).grounding
    video, text = torch.randn(2, 4, 3, 6), torch.randn(2, 5, 5)
    mask = torch.ones(2, 5, dtype=torch.long)
    projected = head.text_proj(text)
    # A new head weighs the layers evenly whatever the query: the mean of the per-layer normalised features.
    even = torch.stack([norm(video[:, :, i]) for i, norm in enumerate(head.layer_norms)], dim=2).mean(dim=2)
    torch.testing.assert_close(head.mix_layers(video, projected, mask), even)
    with torch.no_grad():
        head.layer_query.weight.normal_()
    mixed = head.mix_layers(video, projected, mask)
    assert not torch.allclose(mixed, even)
    # the weights come from each row's own query (and ignore its padding)
    other = text.clone()
    other[1] = torch.randn(5, 5)
    moved = head.mix_layers(video, head.text_proj(other), mask)
    assert torch.equal(moved[0], mixed[0]) and not torch.allclose(moved[1], mixed[1])
    padded_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed_padding = text.clone()
    changed_padding[0, 3:] = 100.0
    torch.testing.assert_close(head.mix_layers(video, head.text_proj(text), padded_mask),
                               head.mix_layers(video, head.text_proj(changed_padding), padded_mask))
    # a 4-D input to a one-layer head: the last layer
    single = VTGTaskHeads(6, 5, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0).grounding
    assert torch.equal(single.read_layers(video), video[:, :, -1])
    assert torch.equal(head.read_layers(torch.cat([torch.randn(2, 4, 2, 6), video], dim=2)), video)  # the last 3


def test_heads_over_several_layers_train_save_load_and_mix_with_other_adapters(tmp_path):
    torch.manual_seed(0)
    model = grounding_model("clip", head_video_layers=3)
    model.add_adapter("other", VTGPromptConfig(num_video_tokens=2, num_text_tokens=2, **HEAD))  # reads one layer
    x = inputs("clip")
    out = model.forward_grounding(**x, **LABELS)
    out.loss.backward()
    head = model.base_model._heads_of("default").grounding
    assert head.layer_query.weight.grad.abs().sum() > 0 and head.layer_norms[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    model.eval()
    with torch.no_grad():
        expected = model.forward_grounding(**x)
        mixed = model.forward_grounding(**x, adapter_names=["default", "other"])
        model.set_adapter("other")
        other = model.forward_grounding(**x)
        model.set_adapter("default")
    torch.testing.assert_close(mixed.start_logits[0], expected.start_logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.start_logits[1], other.start_logits[1], atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["head_video_layers"] == 3
    fresh = tiny_clip()
    fresh.load_state_dict({k: v for k, v in model.get_base_model().state_dict().items() if "vtg_prompt" not in k})
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        got = loaded.forward_grounding(**x)
    assert torch.equal(got.start_logits, expected.start_logits)


def test_heads_over_several_layers_name_what_they_need():
    with pytest.raises(ValueError, match="head_video_layers=4, but the video encoder of CLIPModel has 3 layers"):
        grounding_model("clip", head_video_layers=4)
    with pytest.raises(ValueError, match="head_video_layers=2 .* but grounding_head=False"):
        VTGPromptConfig(head_video_layers=2, grounding_head=False)
    with pytest.raises(ValueError, match="head_video_layers must be an integer >= 1"):
        VTGPromptConfig(head_video_layers=0)
    with pytest.raises(ValueError, match="head_video_layers must be a whole number"):
        VTGPromptConfig(head_video_layers=2.0)
    with pytest.raises(ValueError, match="grounding_head=True needs per-frame video features"):
        get_peft_model(tiny_tvp(), VTGPromptConfig(num_video_tokens=2, grounding_head=True, head_video_layers=2))
    model = grounding_model("clip", num_video_tokens=0, head_video_layers=2).eval()
    x = inputs("clip")
    with torch.no_grad():
        features = model.encode_video(x["pixel_values"])  # one layer's
        layered = model.encode_video(x["pixel_values"], num_layers=2)
        with pytest.raises(ValueError, match=r"reads the features of the last 2 video layers .* pre-extracted "
                           "features hold only the last layer's"):
            model.forward_grounding(input_ids=x["input_ids"], video_features=features)
        from_layers = model.forward_grounding(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                              video_features=layered)
        from_frames = model.forward_grounding(**x)
        with pytest.raises(ValueError, match="reads the features of the last 2 video layers, but the input holds 1"):
            model.forward_grounding(input_ids=x["input_ids"], video_features=layered[:, :, -1:])
        with pytest.raises(ValueError, match=r"num_layers must be a whole number in 1\.\.3"):
            model.encode_video(x["pixel_values"], num_layers=4)
    torch.testing.assert_close(from_layers.start_logits, from_frames.start_logits)


def test_not_here_loss_trains_the_inside_head_towards_zero_on_other_videos():
    import torch.nn.functional as F

    from peft_vtg import VTGPromptConfig
    from peft_vtg.heads import VTGTaskHeads, swap_partners

    torch.manual_seed(0)
    heads = VTGTaskHeads(8, 8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0,
                         inside_negative_loss_weight=0.5).train()
    video, text = torch.randn(4, 6, 8), torch.randn(4, 5, 8)
    frame_mask = torch.tensor([[1] * 6, [1] * 6, [1] * 4 + [0] * 2, [1] * 6])
    text_mask = torch.ones(4, 5, dtype=torch.long)
    labels = dict(start_frames=torch.tensor([0, 1, 2, 1]), end_frames=torch.tensor([2, 3, 3, 5]))
    ids = ["a", "a", "b", "b"]
    out = heads(video, frame_mask, text, text_mask, **labels, video_ids=ids, generator=torch.Generator().manual_seed(1))
    # by hand: each query with its partner's video (another id), inside target 0 on the partner's real frames
    partners = swap_partners(4, ids, torch.Generator().manual_seed(1))
    assert all(ids[p] != ids[row] for row, p in enumerate(partners.tolist()))
    with torch.no_grad():
        fused = heads.grounding.fuse(video[partners], frame_mask[partners], text, text_mask)
        logits = heads.grounding.span_logits(fused, frame_mask[partners])["inside_logits"]
    real = frame_mask[partners].bool()
    expected = F.binary_cross_entropy_with_logits(logits[real], torch.zeros(int(real.sum())))
    assert out.loss_terms["inside_negative_loss"] == pytest.approx(float(expected), rel=1e-5)
    heads.inside_negative_loss_weight = 0.0
    without = heads(video, frame_mask, text, text_mask, **labels, video_ids=ids)
    assert "inside_negative_loss" not in without.loss_terms
    assert float(out.loss - without.loss) == pytest.approx(0.5 * float(expected), rel=1e-4)
    heads.inside_negative_loss_weight = 0.5
    alone = heads(video, frame_mask, text, text_mask, **labels, video_ids=["a"] * 4)  # one video: no partner
    assert "inside_negative_loss" not in alone.loss_terms
    assert "inside_negative_loss" not in heads.eval()(video, frame_mask, text, text_mask, **labels).loss_terms
    with pytest.raises(ValueError, match="inside_negative_loss_weight must be a number >= 0"):
        VTGPromptConfig(inside_negative_loss_weight=-1.0)


def test_presence_contrast_ranks_each_clip_with_its_moment_above_other_videos_clips_by_hand():
    import torch.nn.functional as F

    from peft_vtg import VTGPromptConfig
    from peft_vtg.heads import VTGTaskHeads

    torch.manual_seed(0)
    heads = VTGTaskHeads(8, 8, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0,
                         presence_contrast_loss_weight=0.5, presence_contrast_negatives=2).train()
    video, text = torch.randn(4, 6, 8), torch.randn(4, 5, 8)
    frame_mask = torch.tensor([[1] * 6, [1] * 6, [1] * 4 + [0] * 2, [1] * 6])
    text_mask = torch.ones(4, 5, dtype=torch.long)
    labels = dict(start_frames=torch.tensor([0, 1, 2, 1]), end_frames=torch.tensor([2, 3, 3, 5]))
    ids, present = ["a", "a", "b", "c"], torch.tensor([True, True, True, False])
    out = heads(video, frame_mask, text, text_mask, **labels, video_ids=ids, moment_present=present)

    def log_presence(row, clip):  # the query of `row` on the clip of row `clip`
        with torch.no_grad():
            fused = heads.grounding.fuse(video[clip:clip + 1], frame_mask[clip:clip + 1], text[row:row + 1],
                                         text_mask[row:row + 1])
            inside = heads.grounding.span_logits(fused, frame_mask[clip:clip + 1])["inside_logits"][0]
        return torch.log(torch.sigmoid(inside)[frame_mask[clip].bool()].mean())

    # negatives: the next 2 rows (cyclically), except clips of the row's own video; row 3's clip lacks its moment
    negatives = {0: [2], 1: [2, 3], 2: [3, 0]}
    expected = torch.stack([F.cross_entropy(torch.stack([log_presence(r, r)] + [log_presence(r, o) for o in n])[None],
                                            torch.tensor([0])) for r, n in negatives.items()]).mean()
    assert out.loss_terms["presence_contrast_loss"] == pytest.approx(float(expected), rel=1e-4)
    heads.presence_contrast_loss_weight = 0.0
    without = heads(video, frame_mask, text, text_mask, **labels, video_ids=ids, moment_present=present)
    assert "presence_contrast_loss" not in without.loss_terms
    assert float(out.loss - without.loss) == pytest.approx(0.5 * float(expected), rel=1e-4)
    heads.presence_contrast_loss_weight = 0.5
    one_video = heads(video, frame_mask, text, text_mask, **labels, video_ids=["a"] * 4)  # no other video: no term
    assert "presence_contrast_loss" not in one_video.loss_terms
    assert "presence_contrast_loss" not in heads.eval()(video, frame_mask, text, text_mask, **labels,
                                                        video_ids=ids).loss_terms
    for bad, match in ((-1.0, "presence_contrast_loss_weight must be a number >= 0"),
                       (float("nan"), "presence_contrast_loss_weight must be a finite number")):
        with pytest.raises(ValueError, match=match):
            VTGPromptConfig(presence_contrast_loss_weight=bad)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="presence_contrast_negatives must be a whole number"):
            VTGPromptConfig(presence_contrast_negatives=bad)
    with pytest.raises(ValueError, match="set predict_inside=True"):
        VTGPromptConfig(presence_contrast_loss_weight=1.0, predict_inside=False)


def test_decoding_refuses_masks_that_would_read_padding_as_frames():
    from peft_vtg.heads import decode_frame_spans

    logits = torch.randn(1, 6)
    for mask, why in (([[0, 0, 1, 1, 1, 1]], "padding first"), ([[1, 1, 0.5, 1, 0, 0]], "a fraction"),
                      ([[2, 2, 2, 0, 0, 0]], "counts")):
        with pytest.raises(ValueError, match=r"frame_mask must be 1 for each clip's real frames and 0 for the padding "
                                             r"after them .*clip\(s\) \[0\]"):
            decode_frame_spans(logits, logits, torch.tensor(mask), top_k=2)
    assert decode_frame_spans(logits, logits, torch.tensor([[1, 1, 1, 0, 0, 0]]), top_k=1)[0][0][1] <= 2


def test_a_span_limit_beyond_the_clip_is_no_limit_and_bad_limits_are_named():
    from peft_vtg.heads import decode_frame_spans, decode_moments

    start, end = torch.randn(2, 8), torch.randn(2, 8)
    unlimited = decode_moments(start, end, [8.0, 8.0], top_k=3)
    assert decode_moments(start, end, [8.0, 8.0], top_k=3, max_span_seconds=1e300) == unlimited  # OverflowError before
    assert decode_frame_spans(start, end, top_k=3, max_span_frames=10**30) == decode_frame_spans(start, end, top_k=3)
    for bad in (0, -3, 2.5, float("nan"), "2", True):
        with pytest.raises(ValueError, match="max_span_frames must be a whole number of frames >= 1 or None"):
            decode_frame_spans(start, end, top_k=3, max_span_frames=bad)


def test_long_video_window_scores_refuse_broken_model_output():
    from peft_vtg.heads.decoding import calibrated_spans

    good, broken = torch.randn(8), torch.tensor([0.0, float("nan")] * 4)
    assert len(calibrated_spans(good, good, good, top_k=2)) == 2
    for kwargs, message in ((dict(start_logits=broken), "start_logits hold NaN"),
                            (dict(inside_logits=broken), "inside_logits hold NaN"),
                            (dict(match_probability=float("nan")), "match_probability must be a probability"),
                            (dict(top_k=-1), "top_k must be a whole number >= 1")):
        arguments = {**dict(start_logits=good, end_logits=good, inside_logits=good, top_k=2), **kwargs}
        with pytest.raises(ValueError, match=message):
            calibrated_spans(**arguments)
