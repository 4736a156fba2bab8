"""Adapter lifecycle through PEFT's own API: trainable parameters, several adapters, per-sample adapters, save/load,
bad files, Hub push."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from local_hub import intercept_hub
from tiny_models import BUILDERS, inputs, tiny_clip
from transformers import CLIPConfig, CLIPModel

from peft_vtg import VTGPromptConfig

# A head as small as the tiny encoders, so the trainable share stays meaningful.
CONFIG = dict(num_video_tokens=3, num_text_tokens=2, video_prompt_depth=2, text_prompt_depth=2, head_hidden_size=8,
              head_num_attention_heads=2, head_num_layers=1)


def layer_of(model):
    return model.base_model.model.vtg_prompts


def randomize(model, adapter="default"):
    with torch.no_grad():
        for p in layer_of(model).vtg_prompt_tokens[adapter].parameters():
            p.copy_(torch.randn_like(p))


def outputs(arch, model, x):
    with torch.no_grad():
        if arch == "tvp":  # TVP's random sigmoid head is flat; its pooled features show the prompts
            return model.get_base_model().model(**x).pooler_output
        return model(**x)["logits_per_text"]


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_only_prompts_are_trainable(arch):
    model = get_peft_model(BUILDERS[arch](), VTGPromptConfig(**CONFIG))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".vtg_prompt_tokens.default." in n or ".vtg_prompt_heads.default." in n for n in trainable
    )
    assert any(".vtg_prompt_heads.default." in n for n in trainable) == (arch != "tvp")  # TVP: no per-frame features
    count, total = model.get_nb_trainable_parameters()
    assert count == sum(p.numel() for p in layer_of(model).parameters())
    assert count < 0.05 * total
    status = model.get_model_status()
    assert status.available_adapters == ["default"] and status.enabled is True


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_save_load_round_trip_same_outputs(arch, tmp_path):
    torch.manual_seed(1)
    base = BUILDERS[arch]()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, VTGPromptConfig(**CONFIG))
    randomize(model)
    x = inputs(arch)
    expected = outputs(arch, model, x)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert files <= {"adapter_config.json", "adapter_model.safetensors", "README.md"}  # README = PEFT's model card
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert all(("vtg_prompt_tokens" in k or "vtg_prompt_heads" in k) and ".default." not in k for k in saved)
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, VTGPromptConfig) and config.base_architecture == arch

    fresh = BUILDERS[arch]()
    fresh.load_state_dict(state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(outputs(arch, loaded, x), expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    resumed = PeftModel.from_pretrained(BUILDERS[arch](), tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in layer_of(resumed).parameters())


def test_round_trip_in_a_fresh_interpreter(tmp_path):
    """Save base + adapter here; a new Python process loads both with `import peft_vtg` and reproduces the outputs."""
    base = tiny_clip()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, VTGPromptConfig(**CONFIG, couple_video_to_text=False))
    randomize(model)
    x = inputs("clip")
    save_file({**x, "expected": outputs("clip", model, x)}, tmp_path / "io.safetensors")
    model.save_pretrained(tmp_path / "adapter")
    script = textwrap.dedent(
        f"""
        import torch, peft_vtg
        from peft import PeftConfig, PeftModel
        from safetensors.torch import load_file
        from transformers import CLIPModel
        assert type(PeftConfig.from_pretrained({str(tmp_path / "adapter")!r})).__name__ == "VTGPromptConfig"
        io = load_file({str(tmp_path / "io.safetensors")!r})
        expected = io.pop("expected")
        model = PeftModel.from_pretrained(CLIPModel.from_pretrained({str(tmp_path / "base")!r}), {str(tmp_path / "adapter")!r})
        with torch.no_grad():
            got = model(**io).logits_per_text
        assert torch.equal(got, expected), (got, expected)
        print("ROUND TRIP OK")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ROUND TRIP OK" in result.stdout


def test_coupled_adapter_round_trip(tmp_path):
    model = get_peft_model(tiny_clip(), VTGPromptConfig(num_video_tokens=2, num_text_tokens=2, couple_video_to_text=True))
    randomize(model)
    x = inputs("clip")
    expected = outputs("clip", model, x)
    model.save_pretrained(tmp_path)
    assert any("coupling.0.weight" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(tiny_clip_with(model), tmp_path)
    assert torch.equal(outputs("clip", loaded, x), expected)


def tiny_clip_with(peft_model):
    """A fresh CLIP holding the same base weights as `peft_model`'s base."""
    fresh = tiny_clip()
    own = {k.removeprefix("base_model.model."): v for k, v in peft_model.state_dict().items() if "vtg_prompt" not in k}
    fresh.load_state_dict(own)
    return fresh


def test_loading_onto_a_different_base_names_both_sizes(tmp_path):
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    model.save_pretrained(tmp_path)
    wider = CLIPModel(CLIPConfig(text_config=dict(vocab_size=99, hidden_size=64, intermediate_size=37, num_hidden_layers=3,
                                                  num_attention_heads=4, max_position_embeddings=24, eos_token_id=98),
                                 vision_config=dict(hidden_size=80, intermediate_size=37, num_hidden_layers=3,
                                                    num_attention_heads=4, image_size=32, patch_size=8)))
    with pytest.raises(ValueError, match=r"video_hidden_size=48.*video_hidden_size=80|text_hidden_size=32.*64"):
        PeftModel.from_pretrained(wider, tmp_path)
    with pytest.raises(ValueError, match=r"base_architecture='clip'.*'siglip'"):
        PeftModel.from_pretrained(BUILDERS["siglip"](), tmp_path)


def test_corrupt_truncated_or_pickled_adapter_fails_clearly(tmp_path):
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        PeftModel.from_pretrained(tiny_clip(), tmp_path)
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        PeftModel.from_pretrained(tiny_clip(), tmp_path)
    weights.unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="safetensors only"):
        PeftModel.from_pretrained(tiny_clip(), tmp_path)


def test_saving_again_keeps_the_adapter_readable(tmp_path):
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # overwrite in place
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "VTG_PROMPT"
    PeftModel.from_pretrained(tiny_clip(), tmp_path)


def test_add_set_delete_adapters():
    base = tiny_clip()
    model = get_peft_model(base, VTGPromptConfig(**CONFIG))
    model.add_adapter("other", VTGPromptConfig(num_video_tokens=5, num_text_tokens=1))
    randomize(model, "default")
    randomize(model, "other")
    x = inputs("clip")
    first = outputs("clip", model, x)
    model.set_adapter("other")
    second = outputs("clip", model, x)
    assert not torch.allclose(first, second)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    model.set_adapter("default")
    assert torch.equal(outputs("clip", model, x), first)
    model.delete_adapter("other")
    assert sorted(layer_of(model).vtg_prompt_tokens) == ["default"]
    assert torch.equal(outputs("clip", model, x), first)
    with model.disable_adapter():
        off = outputs("clip", model, x)
    with pytest.warns(UserWarning, match="last VTG adapter"):
        model.delete_adapter("default")
    # PeftModel itself refuses to run without any adapter config (as with LoRA); the base model runs unprompted.
    with torch.no_grad():
        assert torch.equal(model.base_model.model(**x).logits_per_text, off)


def test_unload_restores_the_base_model():
    base = tiny_clip()
    x = inputs("clip")
    x = dict(x, pixel_values=x["pixel_values"][:, 0])
    base.requires_grad_(False)
    with torch.no_grad():
        reference = base(**x).logits_per_text
    model = get_peft_model(base, VTGPromptConfig(**CONFIG))
    randomize(model)
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_and_unload()
    plain = model.unload()
    assert not hasattr(plain, "vtg_prompts")
    with torch.no_grad():
        assert torch.equal(plain(**x).logits_per_text, reference)


@pytest.mark.parametrize("arch", ["clip", "x_clip", "siglip"])
def test_per_sample_adapters_in_one_forward(arch):
    base = BUILDERS[arch]()
    model = get_peft_model(base, VTGPromptConfig(**CONFIG))
    model.add_adapter("b", VTGPromptConfig(**CONFIG))
    randomize(model, "default")
    randomize(model, "b")
    x = inputs(arch, batch=3)
    names = ["default", "b", "default"]
    with torch.no_grad():
        mixed = model(**x, adapter_names=names)
        per_row = []
        for row, name in enumerate(names):
            model.set_adapter(name)
            single = {k: v[row : row + 1] for k, v in x.items()}
            per_row.append(model(**single))
    for key in ("text_embeds", "image_embeds" if arch != "x_clip" else "video_embeds"):
        got = mixed[key] if not (arch == "x_clip" and key == "text_embeds") else None
        if got is None:
            continue  # X-CLIP conditions each text on every video; compare its per-video embeddings only
        want = torch.cat([o[key] for o in per_row])
        assert torch.allclose(got, want, atol=1e-5), key
    with pytest.raises(ValueError, match="__base__"):
        model(**x, adapter_names=["default", "__base__", "b"])
    with pytest.raises(ValueError, match="unknown adapters"):
        model(**x, adapter_names=["default", "zzz", "b"])


def test_per_sample_adapters_must_share_a_layout():
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    model.add_adapter("short", VTGPromptConfig(num_video_tokens=1, num_text_tokens=1))
    with pytest.raises(ValueError, match="identically"):
        model(**inputs("clip"), adapter_names=["default", "short"])


def test_push_to_hub_uploads_adapter_and_model_card(monkeypatch):
    """PEFT's own push path, with the Hub API intercepted locally: no request leaves the machine."""
    from huggingface_hub.hf_api import RepoUrl

    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            source = op.path_or_fileobj
            uploaded[op.path_in_repo] = open(source, "rb").read() if isinstance(source, str) else source
        uploaded["__repo__"] = repo_id
        return None

    intercept_hub(monkeypatch, create_repo=fake_create_repo, create_commit=fake_create_commit)
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    model.push_to_hub("user/tiny-vtg")
    assert uploaded["__repo__"] == "user/tiny-vtg"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(uploaded)
    assert json.loads(uploaded["adapter_config.json"])["peft_type"] == "VTG_PROMPT"
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in uploaded)
