"""`VTGPromptModel`: the PEFT tuner that attaches VTG prompt tokens to a video-language encoder."""

from __future__ import annotations

import copy
import re
import warnings
from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, _filter_state_dict_by_key_prefixes, _get_tuner_state_dict_key_prefixes
from peft.utils.other import set_additional_trainable_modules
from torch import nn

from ..heads import VTGGroundingOutput, VTGTaskHeads, fuse_grounding_outputs
from ..injection import resolve_spec
from ..injection.spec import BoundSpec
from ..injection.tower import (
    available_layer_outputs,
    captured_layer_outputs,
    check_num_layers,
    check_video_tower,
    num_video_layers,
    run_video_tower_layers,
)
from .config import VTGPromptConfig
from .layer import LEGACY_CONTAINER_NAMES, VTGPromptLayer

# Must not contain the method prefix "vtg_prompt_": PEFT skips modules whose names contain it when it walks tuner
# layers (the prefix marks adapter parameter containers, like "vtg_prompt_tokens" here or LoRA's "lora_A").
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
        """Add adapter `adapter_name` (config in `self.peft_config`) to `model`, following PEFT's `inject_adapter`.

        As there: with `low_cpu_mem_usage` the new weights are created on the meta device (loading fills them);
        `autocast_adapter_dtype` is applied by PEFT's later `_cast_adapter_dtype` call, not here; only the new adapter's
        trainability is set (trainable if it is active and not in inference mode), every parameter that existed before
        keeps its `requires_grad`; and `modules_to_save` modules are wrapped in PEFT's `ModulesToSaveWrapper`.
        `state_dict` (PEFT's "inject from a state dict's keys") is not needed: the config alone fixes every module.
        """
        # The adapter keeps its own copy of the config: what creating it records (the base's architecture and sizes,
        # resolved defaults) must not leak into the caller's object, which may make further adapters on other bases.
        config: VTGPromptConfig = copy.deepcopy(self.peft_config[adapter_name])
        # Fields may have been assigned since the constructor checked them (PEFT's way of changing a loaded config).
        config.__post_init__()
        self.peft_config[adapter_name] = config
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
        # Creating an adapter records its base (below), so a config that records one was saved with an adapter:
        # loading it, whose saved weights replace every init.
        loading = config.base_architecture is not None
        self._check_base_matches(config, bound)
        # Adding an adapter must not change the trainability of what is already there (PEFT's rule): a frozen adapter
        # loaded with is_trainable=False stays frozen when another one is loaded or added.
        existing = [(p, p.requires_grad) for p in model.parameters()] if layer is not None else []
        created = layer is None
        if created:
            layer = VTGPromptLayer(bound)
            # Attached to the base model so that PEFT's structural walks over tuner layers find it.
            model.add_module(LAYER_ATTRIBUTE, layer)
        try:
            layer.update_layer(adapter_name, config, low_cpu_mem_usage=low_cpu_mem_usage, loading=loading)
            self._check_adapter_names_apart(layer)
            # After update_layer, so that entries matching the new adapter's own modules are seen too.
            self._check_modules_to_save(config, model, bound)
        except Exception:
            # Leave the model as it was: no half-built adapter, and no hooks on a base that get_peft_model refused.
            if created:
                layer.remove_hooks()
                delattr(model, LAYER_ATTRIBUTE)
            else:
                for container in layer.adapter_layer_names:
                    if adapter_name in getattr(layer, container):
                        del getattr(layer, container)[adapter_name]
                for parameter, requires_grad in existing:
                    parameter.requires_grad = requires_grad
            raise
        if LAYER_ATTRIBUTE not in self.targeted_module_names:
            self.targeted_module_names.append(LAYER_ATTRIBUTE)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        self._mark_only_adapters_as_trainable(model)
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(self),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in self.active_adapters,
        )
        for parameter, requires_grad in existing:
            parameter.requires_grad = requires_grad

    @staticmethod
    def _check_adapter_names_apart(layer: VTGPromptLayer) -> None:
        """Refuse an adapter name that also names a part of another adapter's tensors (e.g. "grounding", "fusion",
        "0"): PEFT picks one adapter's tensors out of the model by dropping every key that contains another adapter's
        name as a part (`.name.` or a final `.name`), so saving that other adapter would silently drop tensors."""
        keys: dict[str, list[str]] = {}  # adapter -> its tensors' keys as saved, "base_model.model.vtg_prompts...."
        for container in layer.adapter_layer_names:
            for name, module in getattr(layer, container).items():
                keys.setdefault(name, []).extend(
                    f"base_model.model.{LAYER_ATTRIBUTE}.{container}.{name}.{key}" for key in module.state_dict())
        for owner, owned in keys.items():
            for other in keys:
                clash = next((key for key in owned if other != owner and (f".{other}." in key or key.endswith(
                    f".{other}"))), None)
                if clash is not None:
                    raise ValueError(
                        f"Adapter name {other!r} is also a part of the key {clash!r} of adapter {owner!r}; PEFT tells "
                        "adapters' tensors apart by name, so saving one would silently drop tensors of the other. "
                        f"Choose another name for the adapter, e.g. {other + '_adapter'!r}.")

    @staticmethod
    def _check_modules_to_save(config: VTGPromptConfig, model: nn.Module, bound: BoundSpec) -> None:
        """Refuse `modules_to_save` entries that would take a module away from the prompt hooks or the adapter.

        PEFT replaces each listed module by a wrapper that runs a trainable copy; hooks registered on the original (or
        on anything inside it) would then never run, and the adapter's own modules are trained already.
        """
        targets = config.modules_to_save or []
        if not targets:
            return
        hooked = {id(bound.root)}
        for stream in (bound.video, bound.text):
            if stream is not None:
                hooked.update(id(m) for m in (stream.module, stream.strip_after, stream.layers) if m is not None)
                hooked.update(id(m) for m in stream.layers)
        for key, module in model.named_modules():
            matched = [target for target in targets if key.endswith(target)]  # PEFT's own matching rule
            if not key or not matched:
                continue
            if key == LAYER_ATTRIBUTE or key.startswith(LAYER_ATTRIBUTE + "."):
                raise ValueError(
                    f"modules_to_save entry {matched[0]!r} matches {key!r}, a module of the VTG adapter itself, which "
                    "is trained and saved already; list base-model modules only."
                )
            holds = [f"{key}.{name}" if name else key for name, m in module.named_modules() if id(m) in hooked]
            if holds:
                raise ValueError(
                    f"modules_to_save entry {matched[0]!r} matches {key!r}, which holds {holds[0]!r}, a module the "
                    "prompt hooks are attached to; a trained copy of it would run without the prompts. List a module "
                    "that contains no prompted encoder, e.g. a projection ('visual_projection') or a task head."
                )

    @staticmethod
    def _check_base_matches(config: VTGPromptConfig, bound) -> None:
        """Record the base the adapter is made for, or, for a loaded adapter, check that this base is that one."""
        actual = {
            "base_architecture": bound.spec.name,
            "video_hidden_size": bound.video.hidden_size if bound.video else None,
            "text_hidden_size": bound.text.hidden_size if bound.text else None,
            "video_feature_size": bound.video_feature_size,
            "text_feature_size": bound.text_feature_size,
        }
        used = {
            "base_architecture": True,
            "video_hidden_size": bool(config.num_video_tokens),
            "text_hidden_size": bool(config.num_text_tokens),
            "video_feature_size": config.grounding_head is not False,
            "text_feature_size": config.grounding_head is not False,
        }
        for key, value in actual.items():
            recorded = getattr(config, key)
            if recorded is not None and used[key] and recorded != value:
                raise ValueError(
                    f"This adapter was made for a base with {key}={recorded!r}, but the model it is loaded onto has "
                    f"{key}={value!r} (adapter: base_architecture={config.base_architecture!r}, video_hidden_size="
                    f"{config.video_hidden_size}, text_hidden_size={config.text_hidden_size}; this model: "
                    f"{actual}). Load it onto the base model it was trained on."
                )
        for key, value in actual.items():
            setattr(config, key, value)

    # ------------------------------------------------------------------ adapters
    @staticmethod
    def _check_adapter_names_count(adapter_names: list[str], tensors: dict[str, Any]) -> None:
        """One adapter name per sample, as LoRA demands: a list of another length is an error, never broadcast.

        `tensors`: batch inputs by name (input_ids (batch, length), pixel_values (batch, ...), ...); None is skipped.
        """
        for name, value in tensors.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] != len(adapter_names):
                raise ValueError(
                    f"adapter_names has {len(adapter_names)} entries but {name} has {value.shape[0]} samples; give "
                    "exactly one adapter name per sample."
                )

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Per-sample adapters: `model(..., adapter_names=["a", "b", ...])` gives sample i the prompts of adapter i.

        PEFT calls this with the forward's own arguments, so the number of names is checked against the batch.
        """
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is None:
            yield
            return
        if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError("adapter_names must be a list of adapter names, one per sample.")
        adapter_names = list(adapter_names)
        batch_inputs = {k: kwargs.get(k) for k in ("input_ids", "pixel_values", "inputs_embeds")}
        if args:
            batch_inputs = {"the first positional input": args[0], **batch_inputs}
        self._check_adapter_names_count(adapter_names, batch_inputs)
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
        layer.batch_adapter_names = adapter_names
        try:
            yield
        finally:
            layer.batch_adapter_names = None

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's dtype rule: `autocast_adapter_dtype=True` upcasts fp16/bf16 adapter weights to fp32; False leaves them
        in the base model's dtype.

        The adapter is created in the base dtype already; the False branch casts anyway, because a
        `low_cpu_mem_usage` load assigns the tensors in the dtype they were saved in.
        """
        if autocast_adapter_dtype:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=True)
            return
        layer = self._layer(self.model)
        if layer is not None:
            layer.cast_adapter_to_base_dtype(adapter_name)

    def _unload_and_optionally_merge(self, merge: bool = True, *args: Any, **kwargs: Any) -> nn.Module:
        """Remove the hooks and the adapter layer, then let PEFT unwrap `modules_to_save` and drop `peft_config`, so
        the returned base model is clean (wrapping it again does not warn about an existing `peft_config`)."""
        if merge:
            raise NotImplementedError("Prompt tokens cannot be merged into the base weights; use unload().")
        layer = self._layer(self.model)
        if layer is not None:
            layer.remove_hooks()
            delattr(self.model, LAYER_ATTRIBUTE)
        super()._unload_and_optionally_merge(False, *args, **kwargs)
        return self.model

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # Unloading replaces a ModulesToSaveWrapper by the module it runs; nothing else is ever replaced. PEFT's default
        # also copies `weight` from the replaced module (for LoRA-style layers), which fails for a module without one
        # (e.g. a task head); LoRA overrides it the same way.
        setattr(parent, child_name, new_module)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        layer = self._layer(self.model)
        if layer is not None and not layer.vtg_prompt_tokens:
            warnings.warn("The last VTG adapter was deleted; the model now computes the base model's outputs.")

    # ------------------------------------------------------------------ grounding
    def _feature_spec(self):
        layer = self._layer(self.model)
        if layer is None:
            raise ValueError("This model has no VTG adapter (it was unloaded).")
        features = layer.bound.spec.features
        if features is None:
            raise ValueError(
                f"The {layer.bound.spec.name!r} spec declares no per-frame features, so it has no grounding head; "
                "use an architecture with a FeatureSpec (CLIP, SigLIP, X-CLIP)."
            )
        return layer, features

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-token text features with the active adapter's prompts, shape (batch, length, text_feature_size)."""
        layer, features = self._feature_spec()
        return features.text_tokens(layer.bound.root, input_ids, attention_mask)

    def encode_video(
        self, pixel_values: torch.Tensor, num_layers: Optional[int] = None, adapter_names: Optional[list[str]] = None
    ) -> torch.Tensor:
        """Per-frame video features with the active adapter's prompts.

        Args:
            pixel_values: (batch, frames, channels, height, width), preprocessed for the encoder.
            num_layers: None for the encoder's features; m >= 1 for the features of its last m layers, each pooled
                as the tower pools its own output (what a head with `head_video_layers = m` reads).
            adapter_names: one adapter per clip (per-sample adapters, as in `model(..., adapter_names=...)`) in
                place of the active adapter.

        Returns:
            (batch, frames, video_feature_size); with `num_layers` (batch, frames, m, video_feature_size), earliest
            layer first (the last entry is the encoder's features).
        """
        if adapter_names is not None:
            with self._enable_peft_forward_hooks(pixel_values=pixel_values, adapter_names=adapter_names):
                return self.encode_video(pixel_values, num_layers)
        layer, features = self._feature_spec()
        if pixel_values.dim() != 5:
            raise ValueError(
                f"pixel_values must be (batch, frames, channels, height, width), got shape {tuple(pixel_values.shape)}."
            )
        required = layer.bound.required_num_frames
        if required is not None and pixel_values.shape[1] != required:
            raise ValueError(
                f"The {layer.bound.spec.name!r} video encoder needs exactly {required} frames per clip (its temporal "
                f"position embeddings), got {pixel_values.shape[1]}. Sample videos to num_frames={required}."
            )
        if num_layers is None:
            return features.video_frames(layer.bound.root, pixel_values)
        bound = layer.bound
        check_video_tower(bound)
        total = num_video_layers(bound)
        check_num_layers(bound, num_layers)
        batch, frames = pixel_values.shape[:2]
        with captured_layer_outputs(bound, layer.injector, range(total - num_layers, total - 1)) as earlier:
            last = features.video_frames(bound.root, pixel_values)  # (batch, frames, video_dim)
        finish = bound.spec.video_tower.finish
        per_layer = [features.frames_from_tower(bound.root, finish(bound.video_tower, earlier[index]), batch, frames)
                     for index in range(total - num_layers, total - 1)]
        return torch.stack(per_layer + [last], dim=2)  # (batch, frames, layers, video_dim)

    def check_video_hidden_states_layer(
        self, layer: int, adapter_names: Optional[list[str]] = None, stored_layers: int = 1
    ) -> None:
        """Raise a `ValueError` naming the fix when features cannot be computed from the hidden states entering video
        layer `layer` (the frozen-prefix cache): the architecture has no video tower spec, an adapter (those in
        `adapter_names`, default all of this model's) puts video prompts below `layer`, where the cached states were
        computed without them, or its head reads more layers than those states give (`stored_layers`: how many final
        layer outputs a cache at layer L holds)."""
        layer_module, _ = self._feature_spec()
        bound = layer_module.bound
        check_video_tower(bound)
        total = num_video_layers(bound)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= total:
            raise ValueError(f"video_hidden_states_layer must be a whole number in 0..{total} (the video tower's "
                             f"layers; {total} = its final states), got {layer!r}.")
        names = list(dict.fromkeys(adapter_names if adapter_names is not None else layer_module.vtg_prompt_tokens))
        available = available_layer_outputs(bound, layer, stored_layers)
        for name in names:
            heads = layer_module.vtg_prompt_heads[name] if name in layer_module.vtg_prompt_heads else None
            wanted = heads.grounding.video_layers if heads is not None else 1
            if wanted > available:
                raise ValueError(
                    f"Adapter {name!r} reads the features of the last {wanted} video layers (head_video_layers="
                    f"{wanted}), but hidden states entering layer {layer} give the last {available} only. Build the "
                    f"cache at --layer {total - wanted + 1} or below, or of final features with --layer {total} "
                    f"--feature-layers {wanted}."
                )
            plan = layer_module.vtg_prompt_tokens[name].plans.get("video")
            if plan is None:
                continue
            if plan.start_layer < layer:
                raise ValueError(
                    f"Adapter {name!r} puts video prompts into video layer {plan.start_layer} (prompt_start_layer="
                    f"{plan.start_layer}), but the cached hidden states enter layer {layer}: layers 0..{layer - 1} "
                    "ran without prompts when the cache was built. Build the cache at --layer "
                    f"{plan.start_layer} or lower, set prompt_start_layer >= {layer}, or set num_video_tokens=0."
                )
            if bound.video.spec.slot_source != "layer_input":
                raise ValueError(
                    f"Adapter {name!r} inserts video prompts at {bound.video.spec.module!r} (before the first layer), "
                    "so they cannot act on cached hidden states; drop the video_embedding_module override or set "
                    "num_video_tokens=0."
                )

    def encode_video_from_hidden_states(
        self, hidden_states: torch.Tensor, layer: int, num_layers: Optional[int] = None
    ) -> torch.Tensor:
        """Per-frame video features from the hidden states entering video layer `layer`, with the active adapter's
        prompts (which must enter at layers >= `layer`): only layers `layer`.. of the video tower run, then what
        follows them (post layer-norm, pooling, X-CLIP's projection and MIT).

        Args:
            hidden_states: (batch, frames, tokens, hidden) as `peft_vtg.cache` stores them (any float dtype; cast
                to the model's). At layer L also (batch, frames, stored_layers, tokens, hidden): a cache of the last
                layers' final outputs (`--feature-layers`).
            layer: k, the layer the states enter (0..L; L = the tower's final states).
            num_layers: as in `encode_video`: None for the encoder's features, m for its last m layers'.

        Returns:
            (batch, frames, video_feature_size), or with `num_layers` (batch, frames, m, video_feature_size); equal
            to `encode_video` on the frames the states came from.
        """
        layer_module, features = self._feature_spec()
        bound = layer_module.bound
        layered = hidden_states.dim() == 5 and layer == num_video_layers(bound)
        if hidden_states.dim() != 4 and not layered:
            raise ValueError(f"video_hidden_states must be (batch, frames, tokens, hidden) (or, entering the last "
                             f"layer, (batch, frames, layers, tokens, hidden)), got shape "
                             f"{tuple(hidden_states.shape)} for layer {layer}.")
        batch, frames = hidden_states.shape[:2]
        required = bound.required_num_frames
        if required is not None and frames != required:
            raise ValueError(
                f"The {bound.spec.name!r} video encoder needs exactly {required} frames per clip (its temporal "
                f"position embeddings), got {frames}. Build the cache with --num-frames {required}."
            )
        if hidden_states.shape[-1] != bound.video.hidden_size:
            raise ValueError(
                f"video_hidden_states have width {hidden_states.shape[-1]} but this model's video layers have "
                f"{bound.video.hidden_size}; the cache was built with another base model."
            )
        outputs = run_video_tower_layers(bound, hidden_states.flatten(0, 1), layer, injector=layer_module.injector,
                                         num_layers=num_layers or 1)
        per_layer = [features.frames_from_tower(bound.root, output, batch, frames) for output in outputs]
        return per_layer[0] if num_layers is None else torch.stack(per_layer, dim=2)

    def _heads_of(self, name: str) -> VTGTaskHeads:
        layer = self._layer(self.model)
        if name not in layer.vtg_prompt_heads:
            raise ValueError(
                f"Adapter {name!r} has no grounding head (its config has grounding_head=False). Create the adapter "
                "with grounding_head=True (or None on an architecture with per-frame features)."
            )
        return layer.vtg_prompt_heads[name]

    def forward_grounding(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        video_features: Optional[torch.Tensor] = None,
        frame_mask: Optional[torch.Tensor] = None,
        start_frames: Optional[torch.Tensor] = None,
        end_frames: Optional[torch.Tensor] = None,
        video_ids: Optional[list[str]] = None,
        adapter_names: Optional[list[str]] = None,
        generator: Optional[torch.Generator] = None,
        video_hidden_states: Optional[torch.Tensor] = None,
        video_hidden_states_layer: Optional[int] = None,
        saliency_targets: Optional[torch.Tensor] = None,
        saliency_mask: Optional[torch.Tensor] = None,
        video_features_from_adapter: bool = False,
        moment_present: Optional[torch.Tensor] = None,
        **unused: Any,
    ) -> VTGGroundingOutput:
        """Ground each query in its video: per-frame span logits, and the training loss when labels are given.

        Reachable from the `PeftModel` as `model.forward_grounding(...)`. Give the video as frames (`pixel_values`,
        run through the prompted video encoder), as pre-extracted per-frame features (`video_features`, e.g. from
        `encode_video`; video prompts cannot act on those), or as the frozen encoder's hidden states entering video
        layer k (`video_hidden_states` with `video_hidden_states_layer=k`, from `peft_vtg.cache`: only layers k.. run,
        and video prompts must enter at layers >= k).

        Args:
            input_ids, attention_mask: (batch, length) tokenized queries.
            pixel_values: (batch, frames, channels, height, width).
            video_features: (batch, frames, video_feature_size) instead of `pixel_values`.
            video_hidden_states: (batch, frames, tokens, hidden) instead of `pixel_values`: the states entering video
                layer `video_hidden_states_layer` (see `encode_video_from_hidden_states`).
            video_hidden_states_layer: k, the video layer `video_hidden_states` enter (0..L).
            frame_mask: (batch, frames), 1 for real frames, 0 for padding; default all ones.
            start_frames, end_frames: (batch,) inclusive frame indices of the true moment (see
                `peft_vtg.timeline.seconds_to_frames`); when given, `loss` is set.
            moment_present: (batch,) bool, False for a row whose clip does not hold its query's moment (a window of a
                long video elsewhere, from `peft_vtg.data.LongVideoWindowCollator`): trained as "not here" (no span
                target, inside target 0 on every frame). None: every labelled row holds its moment.
            video_ids: one id per row, so matching negatives never pair two queries of the same video.
            adapter_names: one adapter per row (per-sample adapters), as in `model(..., adapter_names=...)`.
            generator: random generator for the matching negatives.
            video_features_from_adapter: the `video_features` were computed by this model's own `encode_video`
                with the same adapter(s), video prompts included: one encoding of a video reused for many queries
                (video prompts do not depend on the query). Without it, video features are refused for adapters
                with video prompts (features of the bare encoder would bypass them).
            saliency_targets, saliency_mask: (batch, frames) highlight targets and where they are known, from
                `GroundingCollator` for rows with highlight labels; adapters with `predict_saliency` add the saliency
                ranking loss.
            unused: other batch entries (e.g. `qid`, `duration` from the collator) are ignored.

        Returns:
            `VTGGroundingOutput` with `start_logits`, `end_logits`, `inside_logits`, `saliency_logits` (batch, frames;
            the last two when the head predicts them), the matching
            logits of the heads the adapter has, and `loss` / `loss_terms` when labels are given.
        """
        layer, _ = self._feature_spec()
        if layer.disable_adapters:
            raise ValueError("Adapters are disabled; the grounding head belongs to an adapter. Leave disable_adapter().")
        given = [name for name, value in (("pixel_values", pixel_values), ("video_features", video_features),
                                          ("video_hidden_states", video_hidden_states)) if value is not None]
        if len(given) != 1:
            raise ValueError("Give exactly one of pixel_values (frames), video_features (pre-extracted features) and "
                             f"video_hidden_states (cached layer inputs); got {given or 'none'}.")
        if (video_hidden_states is None) != (video_hidden_states_layer is None):
            raise ValueError("video_hidden_states and video_hidden_states_layer (the video layer they enter) go "
                             "together; give both or neither.")
        batch = input_ids.shape[0]
        if adapter_names is not None:
            if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
                raise TypeError("adapter_names must be a list of adapter names, one per sample.")
            self._check_adapter_names_count(
                list(adapter_names),
                {"input_ids": input_ids, "pixel_values": pixel_values, "video_features": video_features,
                 "video_hidden_states": video_hidden_states},
            )
        names = list(adapter_names) if adapter_names is not None else layer._call_adapters()
        if adapter_names is None and not names:
            raise ValueError("No active adapter; call set_adapter first.")
        # Heads over several layers read (batch, frames, layers, video_dim): the most any adapter of the call reads.
        video_layers = max(self._heads_of(name).grounding.video_layers for name in set(names))
        read_layers = video_layers if video_layers > 1 else None
        if video_hidden_states is not None:
            stored = video_hidden_states.shape[2] if video_hidden_states.dim() == 5 else 1
            self.check_video_hidden_states_layer(video_hidden_states_layer, names, stored_layers=stored)
        with self._enable_peft_forward_hooks(adapter_names=adapter_names):
            text = self.encode_text(input_ids, attention_mask)  # (batch, length, text_dim)
            if pixel_values is not None:
                video = self.encode_video(pixel_values, read_layers)  # (batch, frames, [layers,] video_dim)
            elif video_hidden_states is not None:
                video = self.encode_video_from_hidden_states(video_hidden_states, video_hidden_states_layer,
                                                             read_layers)
            else:
                with_video_prompts = sorted(n for n in set(names) if layer.vtg_prompt_tokens[n].plans.get("video"))
                if with_video_prompts and not video_features_from_adapter:
                    raise ValueError(
                        f"Adapter(s) {with_video_prompts} have video prompts, which act inside the video encoder; "
                        "pre-extracted video_features bypass it. Pass pixel_values, or train a feature-based adapter "
                        "with num_video_tokens=0."
                    )
                video = video_features
                expected = layer.bound.video_feature_size
                if video.dim() not in (3, 4) or video.shape[-1] != expected:
                    raise ValueError(
                        f"video_features must be (batch, frames, {expected}) for this encoder (or (batch, frames, "
                        f"layers, {expected}) with several layers' features), got {tuple(video.shape)}; extract them "
                        "with model.encode_video on the same base model."
                    )
        if video.shape[0] != batch:
            raise ValueError(f"The video batch has {video.shape[0]} clips but there are {batch} queries.")
        if frame_mask is None:
            frame_mask = torch.ones(video.shape[:2], dtype=torch.long, device=video.device)
        text_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        head_inputs = dict(video_features=video, frame_mask=frame_mask, text_features=text, text_mask=text_mask,
                           start_frames=start_frames, end_frames=end_frames, saliency_targets=saliency_targets,
                           saliency_mask=saliency_mask, moment_present=moment_present)
        if len(set(names)) == 1:
            return self._heads_of(names[0])(**head_inputs, video_ids=video_ids, generator=generator)
        return self._grounding_per_adapter(names, head_inputs, video_ids, generator)

    def forward_grounding_ensemble(
        self, adapter_names: list[str], fusion: str = "mean", **inputs: Any
    ) -> VTGGroundingOutput:
        """A prompt ensemble's grounding forward: every row grounded by each of `adapter_names` in one batched
        forward (rows repeated member-minor through per-sample adapters), the members' outputs fused into one row
        (`peft_vtg.heads.fuse_grounding_outputs`: "mean" of their probabilities or their "geometric" mean).

        Args:
            adapter_names: the members, loaded adapters with grounding heads.
            inputs: what `forward_grounding` takes for the rows (input_ids, attention_mask, pixel_values or
                video_features, frame_mask, ...), without labels: an ensemble of separately trained adapters is
                evaluated, not trained. Per-row tensors are repeated; anything else is passed as is.

        Returns:
            A `VTGGroundingOutput` with one row per input row and no loss.
        """
        labels = [key for key in ("start_frames", "end_frames", "saliency_targets", "moment_present")
                  if inputs.get(key) is not None]
        if labels:
            raise ValueError(f"An ensemble is evaluated, not trained: drop {labels} from the batch.")
        members = len(adapter_names)
        rows = inputs["input_ids"].shape[0]
        repeated = {key: value.repeat_interleave(members, dim=0)
                    if isinstance(value, torch.Tensor) and value.dim() else value for key, value in inputs.items()}
        out = self.forward_grounding(**repeated, adapter_names=list(adapter_names) * rows)
        return fuse_grounding_outputs(out, members, fusion)

    def _grounding_per_adapter(self, names, head_inputs, video_ids, generator) -> VTGGroundingOutput:
        """Per-sample adapters: each adapter's heads run on its own rows; results are put back in batch order."""
        batch = len(names)
        groups = []  # (row index tensor, output)
        loss, terms = None, {}
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            index = torch.tensor(rows, device=head_inputs["video_features"].device)
            part = {k: (v.index_select(0, index) if v is not None else None) for k, v in head_inputs.items()}
            ids = [video_ids[i] for i in rows] if video_ids is not None else None
            out = self._heads_of(name)(**part, video_ids=ids, generator=generator)
            groups.append((index, out))
            if out.loss is not None:
                weight = len(rows) / batch  # the mean over rows of per-adapter means
                loss = out.loss * weight if loss is None else loss + out.loss * weight
                for key, value in out.loss_terms.items():
                    terms[key] = terms.get(key, 0.0) + value * weight
        merged: dict[str, Optional[torch.Tensor]] = {}
        for key in ("start_logits", "end_logits", "inside_logits", "saliency_logits", "frame_mask",
                    "violet_vtm_logits", "all_in_one_vtm_logits"):
            values = [out[key] if key in out else None for _, out in groups]
            if any(v is None for v in values):  # an output only some adapters have is left out, not zero-filled
                merged[key] = None
                continue
            full = values[0].new_zeros((batch,) + tuple(values[0].shape[1:]))
            for (index, _), value in zip(groups, values):
                full = full.index_copy(0, index, value)
            merged[key] = full
        return VTGGroundingOutput(loss=loss, loss_terms=terms or None, **merged)

    # ------------------------------------------------------------------ state dict
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # "...vtg_prompt_tokens.<adapter>.coupling.0.weight" -> "...vtg_prompt_tokens.coupling.0.weight", and the
        # same for "...vtg_prompt_heads.<adapter>.grounding...".
        containers = "|".join(re.escape(name) for name in VTGPromptLayer.adapter_layer_names)
        return re.sub(rf"\.({containers})\.{re.escape(adapter_name)}\.", r".\1.", key)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: VTGPromptConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Checkpoint keys -> model keys (PEFT's mapping), after renaming the containers of older releases; and an error
        naming every tensor the adapter's config builds but the checkpoint lacks.

        PEFT would only warn, or stay silent, and leave those tensors at their random init. A config that records no
        grounding head (an adapter saved before heads existed) builds none, so it expects none.
        """
        renamed = {}
        for key, value in state_dict.items():
            for old, new in LEGACY_CONTAINER_NAMES.items():
                key = key.replace(f".{old}.", f".{new}.")
            renamed[key] = value
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, renamed)
        prefixes = _get_tuner_state_dict_key_prefixes(model, adapter_name=adapter_name)
        expected = _filter_state_dict_by_key_prefixes(model.state_dict(), prefixes)
        missing = sorted(
            cls._remove_adapter_name_from_key(key, adapter_name).removeprefix("base_model.model.")
            for key in expected
            if key not in remapped
        )
        containers = tuple(f".{name}." for name in VTGPromptLayer.adapter_layer_names)
        unused = sorted(cls._remove_adapter_name_from_key(key, adapter_name).removeprefix("base_model.model.")
                        for key in remapped if key not in expected and any(c in key for c in containers))
        if unused and not missing:
            # PEFT drops them silently; a config that builds less than was trained (e.g. grounding_head edited to
            # false) would lose trained weights without a word.
            warnings.warn(
                f"The checkpoint of adapter {adapter_name!r} holds {len(unused)} tensor(s) that its config does not "
                f"build, and they are ignored: {unused[:10]}{' ...' if len(unused) > 10 else ''}. If that is not "
                "meant, load it with the adapter_config.json it was saved with.", stacklevel=2)
        if missing:
            cls._discard_failed_load(model, adapter_name)
            raise ValueError(
                f"The checkpoint of adapter {adapter_name!r} lacks {len(missing)} tensor(s) that its config builds: "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. The weights file is incomplete, or "
                "adapter_config.json does not belong to it (e.g. it enables grounding_head, or more prompt layers "
                f"than were trained); save the adapter again, or use the config it was saved with. The adapter was "
                "not added."
            )
        return remapped

    @staticmethod
    def _discard_failed_load(model: nn.Module, adapter_name: str) -> None:
        """Take away an adapter whose weights failed to load, so that no adapter with untrained (or, with
        `low_cpu_mem_usage`, meta) tensors stays on the model: deleted beside the model's other adapters, or, when it
        was the only one (`PeftModel.from_pretrained`), its hooks and layer removed from the caller's base model."""
        tuner = getattr(model, "base_model", None)
        if not isinstance(tuner, VTGPromptModel) or adapter_name not in tuner.peft_config:
            return
        if len(tuner.peft_config) > 1:
            model.delete_adapter(adapter_name)
            return
        layer = tuner._layer(tuner.model)
        if layer is not None:
            layer.remove_hooks()
            delattr(tuner.model, LAYER_ATTRIBUTE)
        del tuner.peft_config[adapter_name]
