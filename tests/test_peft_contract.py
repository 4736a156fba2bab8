"""VTG_PROMPT honours PEFT's API contract: each behaviour tested here is what LoRA does on the same tiny models.

Covered: `low_cpu_mem_usage`, `autocast_adapter_dtype`, half-precision bases, trainability when adding or loading
adapters, `unload()`, missing or renamed checkpoint tensors, `adapter_names` per sample, one config read path, and
`modules_to_save`.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import load_file, save_file
from tiny_models import BUILDERS, inputs

from peft_vtg import VTGPromptConfig
from peft_vtg.vtg_prompt.config import LEGACY_ADAPTER_SETTINGS

ARCHS = list(BUILDERS)
GROUNDING_ARCHS = [arch for arch in ARCHS if arch != "tvp"]  # TVP has no per-frame features, so no grounding head
CONFIG = dict(num_video_tokens=3, num_text_tokens=2, video_prompt_depth=2, text_prompt_depth=2, head_hidden_size=8,
              head_num_attention_heads=2, head_num_layers=1)
# A LoRA on the same tiny models, for the behaviours compared with LoRA's.
LORA_TARGETS = {"clip": ["q_proj"], "siglip": ["q_proj"], "x_clip": ["q_proj"], "tvp": ["query"]}
WEIGHTS = "adapter_model.safetensors"


def base(arch: str, dtype: torch.dtype = torch.float32):
    """The same random base model on every call (seeded), so separately built bases hold identical weights."""
    torch.manual_seed(1234)
    return BUILDERS[arch]().to(dtype)


def layer_of(model):
    return model.get_base_model().vtg_prompts


def labelled_batch(arch: str) -> dict[str, torch.Tensor]:
    x = inputs(arch)
    batch = x["input_ids"].shape[0]
    return {**x, "start_frames": torch.zeros(batch, dtype=torch.long), "end_frames": torch.full((batch,), 2)}


def outputs(arch: str, model, x) -> list[torch.Tensor]:
    """What the active adapter computes: the encoder's prompted outputs and, if it has one, its grounding head's
    logits."""
    with torch.no_grad():
        if arch == "tvp":  # TVP's random sigmoid head is flat; its pooled features show the prompts
            return [model.get_base_model().model(**x).pooler_output]
        found = [model(**x)["logits_per_text"]]
        if model.active_adapter in layer_of(model).vtg_prompt_heads:
            text = {k: x[k] for k in ("input_ids", "attention_mask")}
            grounding = model.forward_grounding(**text, pixel_values=x["pixel_values"])
            found += [grounding.start_logits, grounding.end_logits]
        return found


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b), (a, b)


def saved_adapter(arch: str, directory, **overrides):
    """Create an adapter with random (non-init) weights, save it; returns the model and its outputs."""
    model = get_peft_model(base(arch), VTGPromptConfig(**{**CONFIG, **overrides}))
    with torch.no_grad():
        for p in layer_of(model).parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(directory)
    return model, outputs(arch, model, inputs(arch))


def adapter_flags(model) -> dict[str, set[bool]]:
    """requires_grad of every adapter's parameters ({adapter: {flags}}), plus '<base>' for all other parameters."""
    flags: dict[str, set[bool]] = {}
    names = list(model.peft_config)
    for name, p in model.named_parameters():
        owner = next((n for n in names if f".{n}." in name), "<base>")
        flags.setdefault(owner, set()).add(p.requires_grad)
    return flags


def lora(arch: str):
    return LoraConfig(target_modules=LORA_TARGETS[arch])


# ---------------------------------------------------------------------------------------------- 1. low_cpu_mem_usage
@pytest.mark.parametrize("arch", ARCHS)
def test_low_cpu_mem_usage_load_equals_a_normal_load(arch, tmp_path):
    _, expected = saved_adapter(arch, tmp_path)
    x = inputs(arch)
    normal = PeftModel.from_pretrained(base(arch), tmp_path)
    light = PeftModel.from_pretrained(base(arch), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in light.parameters())
    assert_same(outputs(arch, light, x), outputs(arch, normal, x))
    assert_same(outputs(arch, light, x), expected)

    normal.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in normal.parameters())
    normal.set_adapter("other")
    assert_same(outputs(arch, normal, x), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_low_cpu_mem_usage_creates_the_new_weights_on_meta_like_lora(arch):
    model = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
    model.add_adapter("empty", VTGPromptConfig(**CONFIG), low_cpu_mem_usage=True)
    new = [p for n, p in model.named_parameters() if ".empty." in n]
    assert new and all(p.is_meta for p in new)
    assert not any(p.is_meta for n, p in model.named_parameters() if ".empty." not in n)

    reference = get_peft_model(base(arch), lora(arch))
    reference.add_adapter("empty", lora(arch), low_cpu_mem_usage=True)
    assert all(p.is_meta for n, p in reference.named_parameters() if ".empty." in n)


# ----------------------------------------------------------------------------------------- 2. autocast_adapter_dtype
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_dtype_follows_autocast_adapter_dtype_like_lora(arch, dtype, autocast):
    model = get_peft_model(base(arch, dtype), VTGPromptConfig(**CONFIG), autocast_adapter_dtype=autocast)
    reference = get_peft_model(base(arch, dtype), lora(arch), autocast_adapter_dtype=autocast)
    want = {p.dtype for n, p in reference.named_parameters() if "lora_" in n}
    assert want == {dtype if (not autocast or dtype == torch.float64) else torch.float32}  # PEFT's rule, as a check
    assert {p.dtype for p in layer_of(model).parameters()} == want

    model.add_adapter("second", VTGPromptConfig(**CONFIG), autocast_adapter_dtype=autocast)
    assert {p.dtype for n, p in layer_of(model).named_parameters() if ".second." in n} == want


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("arch", ["clip", "tvp"])
def test_loaded_adapter_dtype_and_values_do_not_depend_on_low_cpu_mem_usage(arch, autocast, low_cpu_mem_usage,
                                                                            tmp_path):
    saved_adapter(arch, tmp_path)
    kwargs = dict(autocast_adapter_dtype=autocast)
    loaded = PeftModel.from_pretrained(base(arch, torch.bfloat16), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage,
                                       **kwargs)
    normal = PeftModel.from_pretrained(base(arch, torch.bfloat16), tmp_path, **kwargs)
    want = torch.float32 if autocast else torch.bfloat16
    assert {p.dtype for p in layer_of(loaded).parameters()} == {want}
    file = load_file(tmp_path / WEIGHTS)
    for (name, got), (_, ref) in zip(layer_of(loaded).named_parameters(), layer_of(normal).named_parameters()):
        assert torch.equal(got, ref), name
    if autocast:  # fp32 weights on a bf16 base keep every bit of the file
        text = layer_of(loaded).vtg_prompt_tokens["default"].text_prompts
        assert torch.equal(text, file["base_model.model.vtg_prompts.vtg_prompt_tokens.text_prompts"])


# ------------------------------------------------------------------------------------------ 3. half-precision bases
@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", GROUNDING_ARCHS)
def test_grounding_forward_and_backward_on_a_half_precision_base(arch, dtype, autocast):
    model = get_peft_model(base(arch, dtype), VTGPromptConfig(**CONFIG), autocast_adapter_dtype=autocast)
    model.train()
    out = model.forward_grounding(**labelled_batch(arch))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.start_logits.dtype == torch.float32
    out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
    for part in (".vtg_prompt_tokens.", ".vtg_prompt_heads."):  # the loss reaches the prompts and the head
        assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if part in n), part

    # Pre-extracted features in the base dtype, on an adapter without video prompts.
    model.add_adapter("features", VTGPromptConfig(**{**CONFIG, "num_video_tokens": 0}), autocast_adapter_dtype=autocast)
    model.set_adapter("features")
    x = labelled_batch(arch)
    features = model.encode_video(x.pop("pixel_values"))
    assert features.dtype == dtype
    assert torch.isfinite(model.forward_grounding(**x, video_features=features).loss)


def test_ground_on_a_bf16_base():
    from tiny_models import FRAMES, IMAGE, tiny_tokenizer

    from peft_vtg import ground

    model = get_peft_model(base("clip", torch.bfloat16), VTGPromptConfig(**CONFIG))
    moments = ground(model, torch.randn(FRAMES, 3, IMAGE, IMAGE), "a red square", tiny_tokenizer(), duration=8.0)
    assert moments and all(0.0 <= start <= end <= 8.0 for start, end, _ in moments)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tvp_prompts_train_on_a_half_precision_base(dtype):
    model = get_peft_model(base("tvp", dtype), VTGPromptConfig(**CONFIG))
    model.train()
    x = inputs("tvp")
    x["pixel_values"] = x["pixel_values"].to(dtype)  # TVP's own vision stem does not cast its input
    model(**x).logits.float().sum().backward()
    prompts = layer_of(model).vtg_prompt_tokens["default"]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in prompts.parameters())


# -------------------------------------------------------------------------------------------------- 4. trainability
def _trainability_script(make, arch, tmp_path):
    """The same sequence of adapter operations on a model; returns the flags after each step."""
    steps = []
    model = get_peft_model(base(arch), make())
    steps.append(adapter_flags(model))
    model.add_adapter("added", make())
    steps.append(adapter_flags(model))
    model.set_adapter("added")
    steps.append(adapter_flags(model))
    model.set_adapter("default")
    model.delete_adapter("added")
    steps.append(adapter_flags(model))
    model.save_pretrained(tmp_path)

    frozen = PeftModel.from_pretrained(base(arch), tmp_path)
    frozen.load_adapter(tmp_path, adapter_name="other", is_trainable=False)
    steps.append(adapter_flags(frozen))
    frozen.load_adapter(tmp_path, adapter_name="trainable", is_trainable=True)
    steps.append(adapter_flags(frozen))

    training = PeftModel.from_pretrained(base(arch), tmp_path, is_trainable=True)
    training.load_adapter(tmp_path, adapter_name="other", is_trainable=False)
    steps.append(adapter_flags(training))
    return steps


@pytest.mark.parametrize("arch", ARCHS)
def test_adding_and_loading_adapters_sets_trainability_like_lora(arch, tmp_path):
    ours = _trainability_script(lambda: VTGPromptConfig(**CONFIG), arch, tmp_path / "vtg")
    theirs = _trainability_script(lambda: lora(arch), arch, tmp_path / "lora")
    assert ours == theirs
    # What that is, spelled out for the case of the bug: an adapter loaded frozen stays frozen when another one is
    # loaded, and only the newly loaded adapter's trainability follows is_trainable.
    assert ours[4] == {"<base>": {False}, "default": {False}, "other": {False}}
    assert ours[5] == {"<base>": {False}, "default": {False}, "other": {False}, "trainable": {True}}
    assert ours[6] == {"<base>": {False}, "default": {True}, "other": {False}}


# -------------------------------------------------------------------------------------------------------- 5. unload
def _hooks(model) -> dict[str, int]:
    return {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()}


@pytest.mark.parametrize("arch", ARCHS)
def test_unload_returns_a_clean_base_that_can_be_wrapped_again(arch):
    untouched = base(arch).requires_grad_(False)  # frozen as under PEFT: some kernels depend on requires_grad
    x = inputs(arch)
    if arch in ("clip", "siglip"):  # untouched image models take images; videos only through the adapter's hooks
        x["pixel_values"] = x["pixel_values"][:, 0]
    with torch.no_grad():
        reference = untouched(**x)
    model = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
    plain = model.unload()
    assert not hasattr(plain, "peft_config")
    assert not any("vtg_prompt" in name for name, _ in plain.named_modules())
    assert _hooks(plain) == _hooks(untouched)
    with torch.no_grad():
        got = plain(**x)
    key = "logits" if arch == "tvp" else "logits_per_text"
    assert torch.equal(got[key], reference[key])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(plain, VTGPromptConfig(**CONFIG))
    assert not [w for w in caught if "peft_config" in str(w.message)], [str(w.message) for w in caught]


# -------------------------------------------------------------------------------- 6. missing and renamed tensors
@pytest.mark.parametrize("arch", ARCHS)
def test_saved_keys_are_not_hidden_from_peft_missing_key_reports(arch, tmp_path):
    saved_adapter(arch, tmp_path)
    keys = list(load_file(tmp_path / WEIGHTS))
    # PeftModel.from_pretrained drops keys containing "prompt_encoder" from its missing-keys warning.
    assert keys and not [k for k in keys if "prompt_encoder" in k]


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_saved_with_the_old_container_name_loads(arch, tmp_path):
    _, expected = saved_adapter(arch, tmp_path)
    weights = load_file(tmp_path / WEIGHTS)
    old = {k.replace(".vtg_prompt_tokens.", ".vtg_prompt_encoder."): v for k, v in weights.items()}
    assert any(".vtg_prompt_encoder." in k for k in old)
    save_file(old, tmp_path / WEIGHTS, metadata={"format": "pt"})
    x = inputs(arch)
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(base(arch), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        assert_same(outputs(arch, loaded, x), expected)
    loaded.load_adapter(tmp_path, adapter_name="again")
    loaded.set_adapter("again")
    assert_same(outputs(arch, loaded, x), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_checkpoint_missing_expected_tensors_is_an_error_naming_them(arch, tmp_path):
    _, expected_good = saved_adapter(arch, tmp_path / "good")
    saved_adapter(arch, tmp_path)
    weights = load_file(tmp_path / WEIGHTS)
    drop = [k for k in weights if k.endswith((".text_prompts", ".grounding.cls_token"))]  # a prompt and a head tensor
    assert len(drop) == (1 if arch == "tvp" else 2)
    save_file({k: v for k, v in weights.items() if k not in drop}, tmp_path / WEIGHTS, metadata={"format": "pt"})
    pattern = "lacks.*" + ".*".join(k.removeprefix("base_model.model.") for k in sorted(drop))
    x = inputs(arch)
    for low_cpu_mem_usage in (False, True):
        # The failed adapter is taken away again: from the caller's base (no layer, no hooks; a correct adapter then
        # loads onto it), and from a model with other adapters (no untrained or meta tensors left to save or run).
        host = base(arch)
        with pytest.raises(ValueError, match=pattern + ".*was not added"):
            PeftModel.from_pretrained(host, tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        assert not hasattr(host, "vtg_prompts")
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in host.modules())
        good = PeftModel.from_pretrained(host, tmp_path / "good")
        good.eval()
        assert_same(outputs(arch, good, x), expected_good)
        model = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
        model.eval()
        expected = outputs(arch, model, x)
        with pytest.raises(ValueError, match=pattern + ".*was not added"):
            model.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=low_cpu_mem_usage)
        assert list(model.peft_config) == ["default"] and list(layer_of(model).vtg_prompt_tokens) == ["default"]
        assert not any(p.is_meta for p in model.parameters())
        assert_same(outputs(arch, model, x), expected)
        model.save_pretrained(tmp_path / f"after-{low_cpu_mem_usage}")


# ------------------------------------------------------------------------------------------------ 7. adapter_names
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_names_must_give_one_name_per_sample(arch):
    model = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
    model.add_adapter("b", VTGPromptConfig(**CONFIG))
    x = inputs(arch)
    batch = x["input_ids"].shape[0]
    for names in (["default"] * (batch - 1), ["default", "b"] * batch + ["b"]):
        if len(names) == batch:
            continue
        with pytest.raises(ValueError, match=f"adapter_names has {len(names)} entries but input_ids has {batch}"):
            model(**x, adapter_names=names)
        if arch != "tvp":
            with pytest.raises(ValueError, match=f"adapter_names has {len(names)} entries but input_ids has {batch}"):
                model.forward_grounding(**labelled_batch(arch), adapter_names=names)


# ------------------------------------------------------------------------------------------------ 8. config reading
def _read_every_way(arch, directory):
    """(config, model or None) through every read path PEFT offers."""
    results = [
        (VTGPromptConfig.from_pretrained(directory), None),
        (PeftConfig.from_pretrained(directory), None),
    ]
    model = PeftModel.from_pretrained(base(arch), directory)
    results.append((model.peft_config["default"], model))
    model = PeftModel.from_pretrained(base(arch), directory, config=PeftConfig.from_pretrained(directory))
    results.append((model.peft_config["default"], model))
    model = PeftModel.from_pretrained(base(arch), directory, config=VTGPromptConfig.from_pretrained(directory))
    results.append((model.peft_config["default"], model))
    host = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
    host.load_adapter(directory, adapter_name="loaded")
    host.set_adapter("loaded")
    results.append((host.peft_config["loaded"], host))
    return results


def _comparable(config) -> dict:
    data = config.to_dict()
    data.pop("inference_mode")  # set by each loader from is_trainable
    return data


@pytest.mark.parametrize("arch", ARCHS)
def test_new_adapter_reads_back_identically_every_way(arch, tmp_path):
    _, expected = saved_adapter(arch, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    for name in [*LEGACY_ADAPTER_SETTINGS, "prompt_tuning_init", "base_architecture"]:
        assert saved[name] is not None, name  # the resolved value is recorded
    results = _read_every_way(arch, tmp_path)
    first = _comparable(results[0][0])
    assert all(_comparable(config) == first for config, _ in results)
    assert first["keep_text_positions"] is True and first["grounding_head"] is (arch != "tvp")
    for _, model in results:
        if model is not None:
            assert_same(outputs(arch, model, inputs(arch)), expected)


@pytest.mark.parametrize("missing", ["absent", "null"])
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_saved_before_the_settings_existed_reads_as_legacy_every_way(arch, missing, tmp_path):
    legacy = dict(LEGACY_ADAPTER_SETTINGS)
    _, expected = saved_adapter(arch, tmp_path, **legacy)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    for name in legacy:
        if missing == "absent":
            del saved[name]
        else:
            saved[name] = None
    path.write_text(json.dumps(saved))
    assert not any("vtg_prompt_heads" in k for k in load_file(tmp_path / WEIGHTS))  # no head was saved
    for config, model in _read_every_way(arch, tmp_path):
        assert {name: getattr(config, name) for name in legacy} == legacy
        if model is not None:
            assert_same(outputs(arch, model, inputs(arch))[:1], expected[:1])


def test_a_config_never_attached_to_a_model_keeps_todays_defaults_every_way(tmp_path):
    VTGPromptConfig(**CONFIG).save_pretrained(tmp_path)
    configs = [VTGPromptConfig.from_pretrained(tmp_path), PeftConfig.from_pretrained(tmp_path)]
    assert _comparable(configs[0]) == _comparable(configs[1])
    for config in configs:
        model = get_peft_model(base("clip"), config)
        built = model.peft_config["default"]
        assert built.keep_text_positions is True and built.grounding_head is True
        assert "default" in layer_of(model).vtg_prompt_heads
        assert config.keep_text_positions is None and config.base_architecture is None  # the caller's copy as given


# ---------------------------------------------------------------------------------------------- 9. modules_to_save
MODULES_TO_SAVE = {"clip": "visual_projection", "siglip": "text_model.head", "x_clip": "visual_projection",
                   "tvp": "video_grounding_head"}


def _wrapped(model, arch) -> ModulesToSaveWrapper:
    wrapper = model.get_base_model().get_submodule(MODULES_TO_SAVE[arch])
    assert isinstance(wrapper, ModulesToSaveWrapper)
    return wrapper


def _target_output(arch, model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits if arch == "tvp" else model(**x)["logits_per_text"]


@pytest.mark.parametrize("arch", ARCHS)
def test_modules_to_save_trains_saves_and_reloads(arch, tmp_path):
    config = VTGPromptConfig(**CONFIG, modules_to_save=[MODULES_TO_SAVE[arch]])
    model = get_peft_model(base(arch), config)
    wrapper = _wrapped(model, arch)
    copy = wrapper.modules_to_save["default"]
    assert all(p.requires_grad for p in copy.parameters())
    assert not any(p.requires_grad for p in wrapper.original_module.parameters())

    x = inputs(arch)
    out = model(**x)  # in eval mode: a training forward would move the base's BatchNorm statistics (TVP)
    loss = out.logits.float().sum() if arch == "tvp" else out["logits_per_text"].float().pow(2).sum()
    loss.backward()
    before = {n: p.detach().clone() for n, p in copy.named_parameters()}
    with torch.no_grad():
        for p in copy.parameters():
            p -= 10.0 * p.grad
    assert any(not torch.equal(before[n], p) for n, p in copy.named_parameters())  # it trained
    model.requires_grad_(False)  # as the loaded adapter is: some kernels depend on requires_grad
    trained = _target_output(arch, model, x)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / WEIGHTS)
    stem = MODULES_TO_SAVE[arch]
    assert any(k.startswith(f"base_model.model.{stem}.") for k in saved), sorted(saved)

    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(base(arch), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        for (name, got), want in zip(_wrapped(loaded, arch).modules_to_save["default"].named_parameters(),
                                     copy.parameters()):
            assert torch.equal(got, want), name
        assert torch.equal(_target_output(arch, loaded, x), trained)
    without = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
    without.load_adapter(tmp_path, adapter_name="default_copy")  # the wrapper is created for a loaded adapter, too
    without.set_adapter("default_copy")
    assert isinstance(without.get_base_model().get_submodule(stem), ModulesToSaveWrapper)

    plain = loaded.unload()  # as with LoRA: the trained copy replaces the wrapper
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in plain.modules())


@pytest.mark.parametrize("target", ["text_model", "vision_model.encoder", "grounding"])
def test_modules_to_save_refuses_modules_the_prompts_need(target):
    model = base("clip")
    with pytest.raises(ValueError, match=rf"modules_to_save entry '{target}'"):
        get_peft_model(model, VTGPromptConfig(**CONFIG, modules_to_save=[target]))
    assert _hooks(model) == _hooks(base("clip")) and not hasattr(model, "vtg_prompts")  # left as it was

    peft_model = get_peft_model(base("clip"), VTGPromptConfig(**CONFIG))
    with pytest.raises(ValueError, match=rf"modules_to_save entry '{target}'"):
        peft_model.add_adapter("other", VTGPromptConfig(**CONFIG, modules_to_save=[target]))
    assert list(peft_model.peft_config) == ["default"]
    assert all(".other." not in name for name, _ in peft_model.named_parameters())


@pytest.mark.parametrize("name", ["num_text_tokens", "num_virtual_tokens"])
def test_assigning_either_name_of_the_text_token_count_builds_saves_and_reloads_that_count(name, tmp_path):
    # PEFT's way of changing a config after building it (`config.r = 16` for LoRA): both names are one setting.
    config = VTGPromptConfig(**CONFIG)
    setattr(config, name, 4)
    assert config.num_text_tokens == config.num_virtual_tokens == 4
    model = get_peft_model(base("clip"), config)
    assert layer_of(model).vtg_prompt_tokens["default"].text_prompts.shape[1] == 4
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["num_text_tokens"] == saved["num_virtual_tokens"] == 4
    loaded = PeftModel.from_pretrained(base("clip"), tmp_path)
    assert layer_of(loaded).vtg_prompt_tokens["default"].text_prompts.shape[1] == 4
    with pytest.raises(ValueError, match="are aliases and must agree"):  # the constructor still refuses a conflict
        VTGPromptConfig(**{**CONFIG, "num_text_tokens": 4, "num_virtual_tokens": 2})


def test_a_value_assigned_after_construction_is_checked_when_the_adapter_is_created():
    config = VTGPromptConfig(**CONFIG)
    config.video_prompt_depth = 0
    with pytest.raises(ValueError, match="video_prompt_depth must be an integer >= 1"):
        get_peft_model(base("clip"), config)


def test_one_config_makes_adapters_on_bases_of_other_sizes_and_is_left_as_given():
    # As a LoraConfig can: what creating an adapter records (architecture, hidden sizes, resolved defaults) goes to
    # the adapter's own copy, so the next base is not checked against the first one's sizes.
    config = VTGPromptConfig(**CONFIG)
    before = config.to_dict()
    small = get_peft_model(base("clip"), config)
    other = get_peft_model(base("siglip"), config)
    assert config.to_dict() == before
    assert small.peft_config["default"].base_architecture == "clip"
    assert other.peft_config["default"].base_architecture == "siglip"
    assert small.peft_config["default"] is not other.peft_config["default"]


def test_an_adapter_initialised_from_text_loads_without_its_init_tokenizer(tmp_path):
    # The saved prompts replace the TEXT init, so loading (trainable or not) must not need that tokenizer again: it
    # may have moved, or be a Hub id on a machine now offline.
    from tiny_models import tiny_tokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    model, expected = saved_adapter("clip", tmp_path / "adapter", prompt_tuning_init="TEXT",
                                    prompt_tuning_init_text="find the red square",
                                    tokenizer_name_or_path=str(tokenizer_dir))
    for path in tokenizer_dir.iterdir():
        path.unlink()
    tokenizer_dir.rmdir()
    for trainable in (False, True):
        loaded = PeftModel.from_pretrained(base("clip"), tmp_path / "adapter", is_trainable=trainable)
        loaded.eval()
        assert_same(outputs("clip", loaded, inputs("clip")), expected)
    with pytest.raises(OSError):  # a new adapter still needs it
        get_peft_model(base("clip"), VTGPromptConfig(**CONFIG, prompt_tuning_init="TEXT",
                                                     prompt_tuning_init_text="find the red square",
                                                     tokenizer_name_or_path=str(tokenizer_dir)))


@pytest.mark.parametrize("name", ["grounding", "fusion", "text_prompts"])
def test_an_adapter_name_that_names_a_part_of_another_adapters_tensors_is_refused(name, tmp_path):
    # PEFT drops every key holding another adapter's name as a part when it saves one adapter: "default" would lose
    # its head's tensors beside an adapter called "grounding". Refused when the clash is made, either way round.
    model = get_peft_model(base("clip"), VTGPromptConfig(**CONFIG))
    before = set(model.state_dict())
    with pytest.raises(ValueError, match=f"Adapter name '{name}' is also a part of the key"):
        model.add_adapter(name, VTGPromptConfig(**CONFIG))
    assert list(model.peft_config) == ["default"] and set(model.state_dict()) == before
    alone = get_peft_model(base("clip"), VTGPromptConfig(**CONFIG), adapter_name=name)  # alone it saves whole
    with pytest.raises(ValueError, match=f"Adapter name '{name}' is also a part of the key"):
        alone.add_adapter("second", VTGPromptConfig(**CONFIG))
    model.add_adapter(f"{name}_adapter", VTGPromptConfig(**CONFIG))
    model.save_pretrained(tmp_path)
    assert len(load_file(tmp_path / WEIGHTS)) == len(load_file(tmp_path / f"{name}_adapter" / WEIGHTS))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_with_an_adapter_pickles_as_a_lora_model_does(arch):
    # torch.save(model) / multiprocessing pickle whole models; nothing of the injection may be a local closure.
    import pickle

    model = get_peft_model(base(arch), VTGPromptConfig(**CONFIG))
    model.eval()
    x = inputs(arch)
    copied = pickle.loads(pickle.dumps(model))
    assert_same(outputs(arch, copied, x), outputs(arch, model, x))


def test_checkpoint_tensors_that_the_config_does_not_build_are_named_in_a_warning(tmp_path):
    # PEFT ignores them silently; a config edited to build less than was trained would drop trained weights.
    saved_adapter("clip", tmp_path)
    heads = [k for k in load_file(tmp_path / WEIGHTS) if ".vtg_prompt_heads." in k]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the adapter as saved loads without it
        PeftModel.from_pretrained(base("clip"), tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "grounding_head": False}))
    with pytest.warns(UserWarning, match=rf"holds {len(heads)} tensor\(s\) that its config does not build"):
        loaded = PeftModel.from_pretrained(base("clip"), tmp_path)
    assert not layer_of(loaded).vtg_prompt_heads
