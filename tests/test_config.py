import json

import pytest
from peft import PeftConfig
from peft.utils.peft_types import PeftType

import peft_vtg
from peft_vtg import VTGPromptConfig


def test_registration_is_idempotent_and_peft_type_is_saved(tmp_path):
    import importlib

    importlib.reload(peft_vtg)  # importing twice is harmless
    peft_vtg._registration.register()
    config = VTGPromptConfig(num_video_tokens=4, num_text_tokens=3)
    assert config.peft_type == PeftType.VTG_PROMPT == "VTG_PROMPT"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "VTG_PROMPT"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VTGPromptConfig)
    assert (loaded.num_video_tokens, loaded.num_text_tokens, loaded.num_virtual_tokens) == (4, 3, 3)


def test_num_virtual_tokens_is_an_alias():
    assert VTGPromptConfig(num_virtual_tokens=5).num_text_tokens == 5
    assert VTGPromptConfig(num_text_tokens=6).num_virtual_tokens == 6
    assert VTGPromptConfig().num_text_tokens == 8
    with pytest.raises(ValueError, match="aliases"):
        VTGPromptConfig(num_text_tokens=2, num_virtual_tokens=3)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_video_tokens=-1), "num_video_tokens"),
        (dict(num_text_tokens=0, num_video_tokens=0), "both 0"),
        (dict(video_prompt_depth=0), "video_prompt_depth"),
        (dict(text_prompt_depth=0), "text_prompt_depth"),
        (dict(prompt_start_layer=-2), "prompt_start_layer"),
        (dict(prompt_tuning_init="NOPE"), "prompt_tuning_init"),
        (dict(video_prompt_init="NOPE"), "video_prompt_init"),
        (dict(prompt_tuning_init="TEXT", prompt_tuning_init_text="find"), "tokenizer_name_or_path"),
        (dict(prompt_tuning_init="TEXT", tokenizer_name_or_path="tok"), "prompt_tuning_init_text"),
        (dict(tokenizer_kwargs={"a": 1}), "tokenizer_kwargs"),
        (dict(random_range=0), "random_range"),
        (dict(video_prompt_dropout=1.0), "video_prompt_dropout"),
        (dict(couple_video_to_text=True, num_video_tokens=4, num_text_tokens=3), "must equal"),
        (dict(couple_video_to_text=True, video_prompt_depth=2), "video_prompt_depth"),
        (dict(couple_video_to_text=True, video_prompt_init="PATCH_MEAN"), "video_prompt_init"),
        (dict(text_insert_position=-1), "text_insert_position"),
        (dict(head_temporal_kernel_size=2), "head_temporal_kernel_size"),
        (dict(head_temporal_kernel_size=-1), "head_temporal_kernel_size"),
        (dict(head_hadamard_fusion="yes"), "head_hadamard_fusion"),
        (dict(keep_text_positions=1), "keep_text_positions"),
    ],
)
def test_invalid_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VTGPromptConfig(**kwargs)


def test_every_field_has_help():
    import dataclasses

    inherited = {f.name for f in dataclasses.fields(PeftConfig)}
    own = [f for f in dataclasses.fields(VTGPromptConfig) if f.name not in inherited]
    assert len(own) > 20
    assert [f.name for f in own if not f.metadata.get("help")] == []


def test_numpy_numbers_are_kept_as_the_plain_numbers_json_saves(tmp_path):
    import numpy as np

    config = VTGPromptConfig(num_video_tokens=np.int64(4), head_dropout=np.float32(0.25),
                             trained_window_seconds=np.float64(8.0))
    config.video_prompt_dropout = np.float32(0.5)  # assigned later, as array maths gives it
    values = [config.num_video_tokens, config.head_dropout, config.trained_window_seconds, config.video_prompt_dropout]
    assert [type(v) for v in values] == [int, float, float, float] and values == [4, 0.25, 8.0, 0.5]
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["head_dropout"], saved["video_prompt_dropout"]) == (0.25, 0.5)
    with pytest.raises(ValueError, match="must be True or False"):
        VTGPromptConfig(predict_saliency=np.bool_(True))  # a numpy bool is no number: still refused


def test_a_config_json_cannot_hold_is_refused_before_the_saved_one_is_touched(tmp_path):
    VTGPromptConfig(num_video_tokens=4).save_pretrained(tmp_path)
    before = (tmp_path / "adapter_config.json").read_bytes()
    config = VTGPromptConfig(num_video_tokens=8)
    config.tokenizer_kwargs = {"padding_side": object()}  # PEFT's own save wrote an empty file, then raised
    with pytest.raises(ValueError, match=r"cannot be saved: tokenizer_kwargs=.* is not a JSON value .*Nothing was "
                                         r"written"):
        config.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").read_bytes() == before


def test_another_methods_adapter_is_named_by_its_type(tmp_path):
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_clip

    get_peft_model(tiny_clip(), LoraConfig(target_modules=["q_proj"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a LORA adapter, not a VTG_PROMPT one; load it with "
                                         r"PeftModel.from_pretrained"):
        VTGPromptConfig.from_pretrained(str(tmp_path))


def test_a_subclass_of_the_config_reads_its_own_files(tmp_path):
    class Mine(VTGPromptConfig):
        pass

    VTGPromptConfig(num_video_tokens=4).save_pretrained(tmp_path)
    assert Mine.from_pretrained(str(tmp_path)).num_video_tokens == 4  # PEFT builds the registered class
