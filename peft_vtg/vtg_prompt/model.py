"""`VTGPromptModel`: the PEFT tuner that attaches VTG prompt tokens to a video-language encoder."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..injection import resolve_spec
from .config import VTGPromptConfig
from .layer import VTGPromptLayer

# Must not contain the method prefix "vtg_prompt_": PEFT skips modules whose names contain it when it walks tuner
# layers (the prefix marks adapter parameter containers, like "vtg_prompt_encoder" here or LoRA's "lora_A").
LAYER_ATTRIBUTE = "vtg_prompts"


class VTGPromptModel(BaseTuner):
    """Adds learned prompt tokens to the video and text streams of a frozen video-language model.

    Unlike PEFT's prompt-learning methods, which prepend embeddings through `inputs_embeds` and therefore reach only
    the text of language models, this tuner places tokens inside each stream with forward hooks described by a
    declarative per-architecture spec (see `peft_vtg.injection`). The base model's modules are not replaced, so its
    state-dict keys are unchanged and disabling the adapter gives exactly the base model's computation.

    Created by `peft.get_peft_model(model, VTGPromptConfig(...))`; not meant to be instantiated directly.
    """

    prefix: str = "vtg_prompt_"
    tuner_layer_cls = VTGPromptLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ injection
    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - not used
        raise NotImplementedError("VTGPromptModel injects through hooks, not module replacement.")

    def _prepare_adapter_config(self, peft_config: VTGPromptConfig, model_config: dict) -> VTGPromptConfig:
        return peft_config

    def _layer(self, model: nn.Module) -> Optional[VTGPromptLayer]:
        return getattr(model, LAYER_ATTRIBUTE, None)

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
    ) -> None:
        config: VTGPromptConfig = self.peft_config[adapter_name]
        self._check_new_adapter_config(config)
        layer = self._layer(model)
        bound = layer.bound if layer is not None else resolve_spec(model, config)
        if layer is not None:
            # A further adapter must resolve to the same injection points as the hooks already installed.
            new_bound = resolve_spec(model, config)
            if (new_bound.spec != bound.spec) or (new_bound.root_path != bound.root_path):
                raise ValueError(
                    f"Adapter {adapter_name!r} resolves to different injection points than the adapters already on "
                    "this model; all adapters of one model must use the same module paths."
                )
        self._check_base_matches(config, bound)
        if layer is None:
            layer = VTGPromptLayer(bound)
            # Attached to the base model so that PEFT's structural walks over tuner layers find it.
            model.add_module(LAYER_ATTRIBUTE, layer)
        layer.update_layer(adapter_name, config)
        self.targeted_module_names.append(LAYER_ATTRIBUTE)
        self.set_adapter(self.active_adapters)
        self._mark_only_adapters_as_trainable(model)
        if config.inference_mode:
            for param in layer.vtg_prompt_encoder[adapter_name].parameters():
                param.requires_grad = False

    @staticmethod
    def _check_base_matches(config: VTGPromptConfig, bound) -> None:
        """Record the base the adapter is made for, or, for a loaded adapter, check that this base is that one."""
        actual = {
            "base_architecture": bound.spec.name,
            "video_hidden_size": bound.video.hidden_size if bound.video else None,
            "text_hidden_size": bound.text.hidden_size if bound.text else None,
        }
        for key, value in actual.items():
            recorded = getattr(config, key)
            uses_stream = (key != "video_hidden_size" or config.num_video_tokens) and (
                key != "text_hidden_size" or config.num_text_tokens
            )
            if recorded is not None and uses_stream and recorded != value:
                raise ValueError(
                    f"This adapter was made for a base with {key}={recorded!r}, but the model it is loaded onto has "
                    f"{key}={value!r} (adapter: base_architecture={config.base_architecture!r}, video_hidden_size="
                    f"{config.video_hidden_size}, text_hidden_size={config.text_hidden_size}; this model: "
                    f"{actual}). Load it onto the base model it was trained on."
                )
        for key, value in actual.items():
            setattr(config, key, value)

    # ------------------------------------------------------------------ adapters
    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Per-sample adapters: `model(..., adapter_names=["a", "b", ...])` gives sample i the prompts of adapter i."""
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is None:
            yield
            return
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError("adapter_names must be a list of adapter names, one per sample.")
        unknown = sorted(set(adapter_names) - set(self.peft_config))
        if "__base__" in unknown:
            raise ValueError(
                "adapter_names='__base__' is not supported by VTG prompts: samples with and without prompt tokens "
                "have different sequence lengths. Run base-model samples in a separate call inside "
                "`with model.disable_adapter():`."
            )
        if unknown:
            raise ValueError(f"adapter_names names unknown adapters {unknown}; loaded: {sorted(self.peft_config)}.")
        layer = self._layer(self.model)
        layer.batch_adapter_names = list(adapter_names)
        try:
            yield
        finally:
            layer.batch_adapter_names = None

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        layer = self._layer(self.model)
        if layer is not None:
            layer.set_adapter(adapter_name, inference_mode=inference_mode)
        self.active_adapter = adapter_name

    def _unload_and_optionally_merge(self, merge: bool = True, *args: Any, **kwargs: Any) -> nn.Module:
        if merge:
            raise NotImplementedError("Prompt tokens cannot be merged into the base weights; use unload().")
        layer = self._layer(self.model)
        if layer is not None:
            layer.remove_hooks()
            delattr(self.model, LAYER_ATTRIBUTE)
        return self.model

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        layer = self._layer(self.model)
        if layer is not None and not layer.vtg_prompt_encoder:
            warnings.warn("The last VTG adapter was deleted; the model now computes the base model's outputs.")

    # ------------------------------------------------------------------ state dict
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # "...vtg_prompt_encoder.<adapter>.coupling.0.weight" -> "...vtg_prompt_encoder.coupling.0.weight"
        return re.sub(rf"\.vtg_prompt_encoder\.{re.escape(adapter_name)}\.", ".vtg_prompt_encoder.", key)
