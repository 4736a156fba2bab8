"""Prompts land where the spec says, and every position-dependent pooling still reads the right token.

Each test captures the tensors entering/leaving encoder layers with hooks registered *after* peft_vtg's, so they see
what the encoder really computes on.
"""

from contextlib import contextmanager

import pytest
import torch
from peft import get_peft_model
from torch import nn
from tiny_models import BUILDERS, EOS, FRAMES, inputs, text_batch, tiny_clip, tiny_siglip, tiny_tvp, tiny_xclip

from peft_vtg import VTGPromptConfig


def encoder_of(model):
    return model.base_model.model.vtg_prompts.vtg_prompt_tokens["default"]


@contextmanager
def capture(module: nn.Module, what: str = "input"):
    """Record the first positional input (hidden states) or the output of `module` for each call."""
    seen = []
    if what == "input":
        def hook(mod, args, kwargs):
            seen.append(args[0] if args else kwargs["hidden_states"])
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        def hook(mod, args, output):
            seen.append(output[0] if isinstance(output, tuple) else output)
        handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def randomize_prompts(model, scale=1.0):
    with torch.no_grad():
        for p in encoder_of(model).parameters():
            p.copy_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_disable_adapter_is_identical_to_the_untouched_base(arch):
    base = BUILDERS[arch]()
    x = inputs(arch)
    if arch in ("clip", "siglip"):
        x = dict(x, pixel_values=x["pixel_values"][:, 0])  # the untouched image model takes images, not videos
    key = "logits" if arch == "tvp" else "logits_per_text"
    # Freezing alone changes which kernel torch's nn.MultiheadAttention picks (SigLIP's pooling head), so the reference
    # is the untouched base frozen as get_peft_model freezes it.
    base.requires_grad_(False)

    def features(run):
        out = run(**x)
        # TVP's random sigmoid head is flat around 0.5; its pooled features show the prompts' effect.
        return torch.cat([out[key].flatten(), base.model(**x).pooler_output.flatten()]) if arch == "tvp" else out[key]

    with torch.no_grad():
        reference = features(base)
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=3, num_text_tokens=2, video_prompt_depth=2))
    randomize_prompts(model)
    with torch.no_grad():
        prompted = features(model)
        with model.disable_adapter():
            disabled = features(model)
        enabled_again = features(model)
    assert torch.equal(disabled, reference)
    assert torch.equal(enabled_again, prompted)
    assert not torch.allclose(prompted, reference, atol=1e-4)


@pytest.mark.parametrize("arch", ["clip", "x_clip"])
def test_video_prompts_follow_cls_and_cls_is_pooled(arch):
    base = BUILDERS[arch]()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=3, num_text_tokens=0, video_prompt_depth=2))
    randomize_prompts(model)
    vision = base.vision_model
    x = inputs(arch)
    with capture(vision.encoder.layers[0]) as l0, capture(vision.encoder.layers[1]) as l1, capture(
        vision.encoder.layers[-1], "output"
    ) as last, torch.no_grad():
        with capture(vision.post_layernorm, "output") as pooled:
            out = model(**x)
    prompts = encoder_of(model).video_prompts  # (depth, 3, hidden)
    rows, patches = x["pixel_values"].shape[0] * FRAMES, (32 // 8) ** 2
    assert l0[0].shape == (rows, 1 + 3 + patches, 48)
    assert torch.equal(l0[0][:, 1:4], prompts[0].expand(rows, -1, -1))  # after CLS
    assert torch.equal(l1[0][:, 1:4], prompts[1].expand(rows, -1, -1))  # deep: fresh tokens at layer 1
    # CLIP pools post_layernorm(hidden[:, 0]): the CLS token, not a prompt.
    expected = vision.post_layernorm(last[0][:, 0])
    assert torch.allclose(pooled[0], expected)
    assert not torch.allclose(pooled[0], vision.post_layernorm(last[0][:, 1]))
    # Prompts are gone from the vision output: its shape is the base model's.
    assert out.vision_model_output.last_hidden_state.shape == (rows, 1 + patches, 48)


def test_xclip_prompt_generator_sees_only_patch_tokens():
    base = tiny_xclip()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=3, num_text_tokens=2))
    randomize_prompts(model)
    with capture(base.prompts_visual_layernorm) as seen, torch.no_grad():
        model(**inputs("x_clip"))
    # X-CLIP reads vision_hidden[:, 1:] and reshapes it per frame: with prompts left in, it would get 16 + 3 tokens.
    assert seen[0].shape[1] == (32 // 8) ** 2


@pytest.mark.parametrize("arch", ["clip", "x_clip"])
def test_clip_text_prompts_follow_bos_and_eos_is_pooled(arch):
    base = BUILDERS[arch]()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=2))
    randomize_prompts(model)
    text = base.text_model
    batch = text_batch(3)
    with capture(text.encoder.layers[0]) as l0, capture(text.encoder.layers[-1], "output") as last, torch.no_grad():
        out = text(**batch)
    prompts = encoder_of(model).text_prompts[0]
    assert torch.equal(l0[0][:, 1:3], prompts.expand(3, -1, -1))
    ids = batch["input_ids"]
    eos = (ids == EOS).int().argmax(-1)
    rows = torch.arange(3)
    final = text.final_layer_norm(last[0])  # (3, 2 + length, hidden)
    # Pooling follows the EOS to its shifted place ...
    assert torch.allclose(out.pooler_output, final[rows, eos + 2])
    assert not torch.allclose(out.pooler_output, final[rows, eos])
    # ... and the returned token states line up with the caller's ids and mask again.
    assert out.last_hidden_state.shape[1] == ids.shape[1]
    assert torch.equal(out.last_hidden_state[rows, eos], out.pooler_output)


@pytest.mark.parametrize("arch,at", [("clip", 1), ("x_clip", 1), ("siglip", 0)])
@pytest.mark.parametrize("keep", [True, False])
def test_text_words_keep_their_positions(arch, at, keep):
    """keep_text_positions: the words enter layer 0 exactly as without prompts (token + own position embedding);
    without it every word after the prompts moves num_text_tokens positions on."""
    base = BUILDERS[arch]()
    text = base.text_model
    batch = text_batch(3)
    with capture(text.encoder.layers[0]) as plain, torch.no_grad():
        text(**batch)
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=2, keep_text_positions=keep))
    randomize_prompts(model)
    with capture(text.encoder.layers[0]) as prompted, torch.no_grad():
        text(**batch)
    words = torch.cat([prompted[0][:, :at], prompted[0][:, at + 2 :]], dim=1)  # (3, length, hidden)
    assert torch.equal(prompted[0][:, at : at + 2], encoder_of(model).text_prompts[0].expand(3, -1, -1))
    assert torch.equal(words, plain[0]) == keep


def test_custom_position_ids_need_kept_positions_and_reach_the_words():
    base = tiny_clip()
    text = base.text_model
    batch = text_batch(2)
    position_ids = torch.arange(7).flip(0)[None]  # (1, length): any order the caller wants
    with capture(text.encoder.layers[0]) as plain, torch.no_grad():
        text(**batch, position_ids=position_ids)
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=2))
    assert model.peft_config["default"].keep_text_positions is True  # the default for a new adapter
    with capture(text.encoder.layers[0]) as prompted, torch.no_grad():
        text(**batch, position_ids=position_ids)
    assert torch.equal(torch.cat([prompted[0][:, :1], prompted[0][:, 3:]], dim=1), plain[0])
    shifting = get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=0, num_text_tokens=2,
                                                           keep_text_positions=False))
    with pytest.raises(ValueError, match="keep_text_positions=True"):
        shifting.base_model.model.text_model(**batch, position_ids=position_ids)


def test_adapter_saved_before_keep_text_positions_loads_with_shifted_positions(tmp_path):
    """A config without keep_text_positions was trained with shifted word positions; loading it must reproduce that
    model, not silently switch to kept positions (a new adapter records True)."""
    import copy
    import json

    from peft import PeftModel

    x = dict(text_batch(2), pixel_values=inputs("clip")["pixel_values"])
    base = tiny_clip()
    fresh_base = copy.deepcopy(base)
    trained = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=2,
                                                          keep_text_positions=False, grounding_head=False))
    randomize_prompts(trained)
    trained.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert config["keep_text_positions"] is False
    del config["keep_text_positions"]
    config_path.write_text(json.dumps(config))
    loaded = PeftModel.from_pretrained(fresh_base, tmp_path)
    assert loaded.peft_config["default"].keep_text_positions is False
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits_per_text, trained(**x).logits_per_text)


def test_siglip_prompts_go_first_and_pooling_reads_the_last_token():
    base = tiny_siglip()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=2, num_text_tokens=3))
    randomize_prompts(model)
    batch = text_batch(2)
    with capture(base.text_model.encoder.layers[0]) as t0, capture(
        base.text_model.encoder.layers[-1], "output"
    ) as tlast, capture(base.vision_model.encoder.layers[0]) as v0, capture(base.vision_model.head) as head_in:
        with torch.no_grad():
            out = model(**batch, pixel_values=inputs("siglip")["pixel_values"])
    enc = encoder_of(model)
    assert torch.equal(t0[0][:, :3], enc.text_prompts[0].expand(2, -1, -1))
    assert torch.equal(v0[0][:, :2], enc.video_prompts[0].expand(v0[0].shape[0], -1, -1))  # no CLS in SigLIP
    pooled = base.text_model.head(base.text_model.final_layer_norm(tlast[0])[:, -1])
    assert torch.allclose(out.text_model_output.pooler_output, pooled)
    # The attention-pooling head sees the patch tokens only.
    assert head_in[0].shape[1] == (32 // 8) ** 2


def test_tvp_layout_and_pooler_reads_tvp_own_prompt():
    base = tiny_tvp()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=3, num_text_tokens=2, text_prompt_depth=2,
                                                 video_prompt_depth=2))
    randomize_prompts(model)
    tvp = base.model
    x = inputs("tvp")
    length = x["input_ids"].shape[1]
    with capture(tvp.encoder.layer[0]) as l0, capture(tvp.encoder.layer[1]) as l1, capture(
        tvp.encoder.layer[-1], "output"
    ) as last, torch.no_grad():
        out = tvp(**x)
    enc = encoder_of(model)
    h0 = l0[0]
    assert torch.equal(h0[:, :10], tvp.text_prompt)  # TVP's own 10 prompts first
    assert torch.equal(h0[:, 10:12], enc.text_prompts[0][None])
    visual_start = 10 + 2 + length
    assert torch.equal(h0[:, visual_start : visual_start + 3], enc.video_prompts[0][None])
    assert torch.equal(l1[0][:, 10:12], enc.text_prompts[1][None])
    assert torch.equal(l1[0][:, visual_start : visual_start + 3], enc.video_prompts[1][None])
    assert torch.allclose(out.pooler_output, tvp.pooler(last[0]))
    assert out.last_hidden_state.shape[1] == last[0].shape[1] - 5  # both prompt spans stripped


def test_tvp_attention_mask_is_extended_for_text_prompts():
    """A padded query must give the same result as the unpadded one: the pads stay masked with prompts inserted."""
    base = tiny_tvp()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=2, num_text_tokens=3))
    randomize_prompts(model)
    x = inputs("tvp")
    ids = x["input_ids"][:, :5]
    padded_ids = torch.cat([ids, torch.ones(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        plain = base.model(input_ids=ids, pixel_values=x["pixel_values"], attention_mask=torch.ones(1, 5, dtype=torch.long))
        padded = base.model(padded_ids, x["pixel_values"], padded_mask)  # positional, as TvpForVideoGrounding calls it
    assert torch.allclose(plain.pooler_output, padded.pooler_output, atol=1e-5)


def test_text_longer_than_positions_gets_a_clear_error():
    base = tiny_clip()  # max_position_embeddings = 24
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=5))
    batch = text_batch(2, length=22)
    with pytest.raises(ValueError, match=r"max_position_embeddings=24.*max_length=19"):
        model(**batch, pixel_values=inputs("clip")["pixel_values"])


@pytest.mark.parametrize("stream", ["video", "text"])
def test_an_insert_position_past_the_streams_tokens_is_an_error_naming_it(stream):
    # Else the prompts would be appended after the last patch (never stripped: the tower's output grows) or after
    # EOS (where the text pooling never sees them).
    x = inputs("clip")
    frame_tokens = 17  # tiny CLIP: 16 patches and [CLS]
    length = {"video": frame_tokens, "text": x["input_ids"].shape[1]}[stream]
    fits = get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2,
                                                         **{f"{stream}_insert_position": length}))
    with torch.no_grad():
        fits(**x)
    message = rf"{stream}_insert_position={length + 1} lies past the {length} tokens"
    if stream == "video":  # a frame's tokens are known when the adapter is made: refused there, before any run
        with pytest.raises(ValueError, match=message):
            get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2,
                                                        video_insert_position=length + 1))
        return
    past = get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2,
                                                         **{f"{stream}_insert_position": length + 1}))
    with pytest.raises(ValueError, match=message):
        past(**x)


def test_prompt_start_layer_keeps_lower_layers_untouched_and_out_of_the_graph():
    base = tiny_clip()
    x = inputs("clip")
    vision = base.vision_model
    with capture(vision.encoder.layers[0], "output") as reference, torch.no_grad():
        base.vision_model(pixel_values=x["pixel_values"].flatten(0, 1))
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=3, num_text_tokens=2, prompt_start_layer=1,
                                                 video_prompt_depth=2, text_prompt_depth=2))
    randomize_prompts(model)
    with capture(vision.encoder.layers[0], "output") as v0, capture(
        base.text_model.encoder.layers[0], "output"
    ) as t0, capture(vision.encoder.layers[1]) as v1:
        out = model(**x)
    assert torch.equal(v0[0], reference[0])  # layer 0 runs exactly as in the base model
    assert not v0[0].requires_grad and not t0[0].requires_grad  # no backward through the bottom
    assert torch.equal(v1[0][:, 1:4].detach(), encoder_of(model).video_prompts[0].expand(v1[0].shape[0], -1, -1))
    out.logits_per_text.sum().backward()
    assert encoder_of(model).video_prompts.grad.abs().sum() > 0
    assert encoder_of(model).text_prompts.grad.abs().sum() > 0


def test_depth_beyond_the_encoder_names_the_fields():
    with pytest.raises(ValueError, match=r"prompt_start_layer=2.*video_prompt_depth=2.*3 layers"):
        get_peft_model(tiny_clip(), VTGPromptConfig(prompt_start_layer=2, video_prompt_depth=2))


def test_coupled_video_prompts_are_a_function_of_text_prompts():
    base = tiny_clip()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=4, num_text_tokens=4, couple_video_to_text=True,
                                                 text_prompt_depth=2, video_prompt_depth=2))
    enc = encoder_of(model)
    assert not hasattr(enc, "video_prompts") and len(enc.coupling) == 2
    with capture(base.vision_model.encoder.layers[1]) as v1, torch.no_grad():
        model(**inputs("clip"))
    expected = enc.coupling[1](enc.text_prompts[1])  # (4, 48): text width 32 -> video width 48
    assert torch.allclose(v1[0][0, 1:5], expected)
    out = model(**inputs("clip"))
    out.logits_per_text.sum().backward()
    assert enc.text_prompts.grad.abs().sum() > 0 and enc.coupling[0].weight.grad.abs().sum() > 0


def test_framewise_video_for_image_models():
    base = tiny_clip()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=2, num_text_tokens=2))
    x = inputs("clip")
    with torch.no_grad():
        out = model(**x, return_loss=True)
        frames = base.get_image_features(pixel_values=x["pixel_values"].flatten(0, 1)).pooler_output
    assert out.frame_embeds.shape == (2, FRAMES, 24) and out.image_embeds.shape == (2, 24)
    frames = torch.nn.functional.normalize(frames, dim=-1).view(2, FRAMES, -1)
    video = torch.nn.functional.normalize(frames.mean(1), dim=-1)
    assert torch.allclose(out.image_embeds, video, atol=1e-5)
    assert out.logits_per_text.shape == (2, 2)
    expected = torch.nn.functional.cross_entropy(out.logits_per_text, torch.arange(2))
    assert torch.allclose(out.loss, (expected + torch.nn.functional.cross_entropy(out.logits_per_image, torch.arange(2))) / 2)


class TinyVideoText(nn.Module):
    """A custom two-tower model with no built-in spec: injection through explicit module paths."""

    def __init__(self, dim=16):
        super().__init__()
        self.frame_proj = nn.Linear(12, dim)
        self.word_emb = nn.Embedding(50, dim)
        layer = lambda: nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)  # noqa: E731
        self.video_layers = nn.ModuleList([layer() for _ in range(2)])
        self.text_layers = nn.ModuleList([layer() for _ in range(2)])

    def forward(self, input_ids, video, attention_mask=None):
        v = self.frame_proj(video)  # (batch, frames, dim)
        for blk in self.video_layers:
            v = blk(v)
        t = self.word_emb(input_ids)
        pad = None if attention_mask is None else attention_mask == 0
        for blk in self.text_layers:
            t = blk(t, src_key_padding_mask=pad)
        return v, t


def test_custom_model_through_explicit_paths_and_clear_error_without():
    with pytest.raises(ValueError, match="video_embedding_module.*video_layers_module"):
        get_peft_model(TinyVideoText(), VTGPromptConfig())
    model = TinyVideoText().eval()
    config = VTGPromptConfig(num_video_tokens=2, num_text_tokens=3, video_embedding_module="frame_proj",
                             video_layers_module="video_layers", text_embedding_module="word_emb",
                             text_layers_module="text_layers", text_prompt_depth=2)
    peft_model = get_peft_model(model, config)
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with capture(model.text_layers[1]) as t1:
        v, t = peft_model(input_ids=ids, video=torch.randn(2, 6, 12), attention_mask=mask)
    assert v.shape == (2, 2 + 6, 16) and t.shape == (2, 3 + 5, 16)  # no strip point given: prompts stay
    assert torch.equal(t1[0][:, :3], encoder_of(peft_model).text_prompts[1].expand(2, -1, -1))
    assert peft_model.peft_config["default"].base_architecture == "custom"


@pytest.mark.parametrize("init", ["RANDOM", "SAMPLE_VOCAB", "VOCAB_FIRST", "UNIFORM"])
def test_text_inits(init):
    base = tiny_clip()
    model = get_peft_model(base, VTGPromptConfig(num_text_tokens=4, num_video_tokens=0, prompt_tuning_init=init,
                                                 random_range=0.1))
    prompts = encoder_of(model).text_prompts[0]
    table = base.text_model.embeddings.token_embedding.weight
    if init == "VOCAB_FIRST":
        assert torch.equal(prompts, table[:4])
    elif init == "SAMPLE_VOCAB":
        assert all((row == table).all(-1).any() for row in prompts)
    elif init == "UNIFORM":
        assert prompts.abs().max() <= 0.1
    else:
        assert 0.5 < prompts.std() / table.std() < 2


@pytest.mark.parametrize("arch", ["clip", "x_clip"])
def test_bos_init_copies_the_state_bos_has_in_every_sentence(arch):
    base = BUILDERS[arch]()
    text = base.text_model
    batch = text_batch(3)
    with capture(text.encoder.layers[0]) as l0, capture(text.encoder.layers[1]) as l1, torch.no_grad():
        text(**batch)
    # Another adapter's text prompts are active while the BOS adapter is made: its init must not see them.
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=2, text_prompt_depth=2))
    randomize_prompts(model)
    model.add_adapter("bos", VTGPromptConfig(num_video_tokens=0, num_text_tokens=4, text_prompt_depth=2,
                                             prompt_tuning_init="BOS"))
    prompts = model.base_model.model.vtg_prompts.vtg_prompt_tokens["bos"].text_prompts  # (2, 4, hidden)
    for depth, seen in enumerate((l0[0], l1[0])):
        bos = seen[:, 0]  # (3, hidden): BOS's input to this layer, the same in every sentence (causal attention)
        assert torch.allclose(bos, bos[:1].expand_as(bos), atol=1e-6)
        noise = (prompts[depth] - bos[0]).abs().max()
        assert 0 < noise <= 0.2 * bos[0].std()  # a copy, with a little noise so the tokens can specialise
    assert not torch.equal(prompts[0, 0], prompts[0, 1])


@pytest.mark.parametrize("arch,expected", [("clip", "BOS"), ("x_clip", "BOS"), ("siglip", "RANDOM"), ("tvp", "RANDOM")])
def test_default_text_init_is_bos_where_the_stream_allows_it(arch, expected, tmp_path):
    import json

    model = get_peft_model(BUILDERS[arch](), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2))
    assert model.peft_config["default"].prompt_tuning_init == expected
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["prompt_tuning_init"] == expected


def test_bos_init_needs_prompts_after_bos():
    with pytest.raises(ValueError, match="text_insert_position=1"):
        get_peft_model(tiny_siglip(), VTGPromptConfig(num_video_tokens=0, num_text_tokens=2, prompt_tuning_init="BOS"))


def test_text_init_from_a_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "find": 5, "the": 6, "moment": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    base = tiny_clip()
    model = get_peft_model(base, VTGPromptConfig(num_text_tokens=5, num_video_tokens=0, prompt_tuning_init="TEXT",
                                                 prompt_tuning_init_text="find the moment",
                                                 tokenizer_name_or_path=str(tmp_path)))
    table = base.text_model.embeddings.token_embedding.weight
    assert torch.equal(encoder_of(model).text_prompts[0], table[torch.tensor([5, 6, 7, 5, 6])])


@pytest.mark.parametrize("arch", ["clip", "siglip", "x_clip"])
def test_video_inits(arch):
    base = BUILDERS[arch]()
    vpt = encoder_of(get_peft_model(BUILDERS[arch](), VTGPromptConfig(num_video_tokens=4))).video_prompts
    bound = (6 / (3 * 8 * 8 + 48)) ** 0.5
    assert vpt.abs().max() <= bound and vpt.abs().max() > bound / 2
    mean = encoder_of(get_peft_model(base, VTGPromptConfig(num_video_tokens=4, video_prompt_init="PATCH_MEAN"))).video_prompts
    emb = base.vision_model.embeddings(torch.zeros(1, 3, 32, 32))[0, 1 if arch != "siglip" else 0 :].mean(0)
    assert torch.allclose(mean[0].mean(0), emb, atol=0.05)
    assert not torch.equal(mean[0, 0], mean[0, 1])


def test_patch_mean_on_a_spec_without_patch_embedding_says_what_to_use():
    with pytest.raises(ValueError, match="VPT_UNIFORM"):
        get_peft_model(tiny_tvp(), VTGPromptConfig(video_prompt_init="PATCH_MEAN"))


def test_video_prompt_dropout_only_in_training():
    base = tiny_clip()
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=8, num_text_tokens=0, video_prompt_dropout=0.5))
    enc = encoder_of(model)
    model.eval()
    assert torch.equal(enc.tokens("video", 0), enc.video_prompts[0])
    model.train()
    assert (enc.tokens("video", 0) == 0).any()


def test_legacy_clip_argmax_pooling_follows_the_shifted_end_of_text():
    """Checkpoints with eos_token_id == 2 pool argmax(input_ids) (the end-of-text id is the largest): the placeholder
    ids must stay below it, so the pooled token is still the end of text, shifted by the prompts."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=24, eos_token_id=2,
                                         pad_token_id=1),
                        vision_config=dict(hidden_size=48, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8))
    base = CLIPModel(config).eval()
    assert base.text_model.eos_token_id == 2
    model = get_peft_model(base, VTGPromptConfig(num_video_tokens=0, num_text_tokens=3))
    randomize_prompts(model)
    ids = torch.tensor([[3, 10, 11, 98, 0, 0], [3, 12, 13, 14, 15, 98]])  # 98 = end of text, the largest id
    with capture(base.text_model.encoder.layers[-1], "output") as last, torch.no_grad():
        out = base.text_model(input_ids=ids, attention_mask=(ids > 0).long())
    final = base.text_model.final_layer_norm(last[0])
    end = ids.argmax(-1)
    rows = torch.arange(2)
    assert torch.allclose(out.pooler_output, final[rows, end + 3])
    assert not torch.allclose(out.pooler_output, final[rows, end])
