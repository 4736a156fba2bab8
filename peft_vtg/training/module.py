"""`GroundingModule`: a `PeftModel` whose `forward` is the grounding forward, for DDP, accelerate and `Trainer`;
`EnsembleGroundingModule`: several adapters' fused grounding forward, for evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..heads import ENSEMBLE_FUSIONS, VTGGroundingOutput


class GroundingModule(nn.Module):
    """Wraps a VTG `PeftModel` so that `forward(**batch)` runs `forward_grounding(**batch)`.

    Distributed wrappers (DDP) synchronise gradients only through `forward`, so the grounding forward has to be the
    module's `forward`. `train()` keeps the frozen base model in eval mode (dropout and batch-norm as at inference)
    unless `train_base_model_modes=True`; the adapter's prompts and heads follow the requested mode.
    """

    def __init__(self, peft_model: nn.Module, train_base_model_modes: bool = False) -> None:
        super().__init__()
        if not hasattr(peft_model, "forward_grounding"):
            raise TypeError(f"{type(peft_model).__name__} has no forward_grounding; wrap a VTG PeftModel.")
        self.peft_model = peft_model
        self.train_base_model_modes = train_base_model_modes

    def forward(self, **batch: Any) -> VTGGroundingOutput:
        return self.peft_model.forward_grounding(**batch)

    def train(self, mode: bool = True) -> "GroundingModule":
        super().train(mode)
        if mode and not self.train_base_model_modes:
            base = self.peft_model.get_base_model()
            base.eval()
            base.vtg_prompts.train()  # the adapter layer lives inside the base model
        return self


class EnsembleGroundingModule(nn.Module):
    """A prompt ensemble for evaluation: `forward(**batch)` is the model's `forward_grounding_ensemble`, every row
    grounded by each of `adapter_names` in one batched forward and their outputs fused into one row (by default the
    mean of the members' probabilities). Inference only: an ensemble of separately trained adapters is not trained
    as one, so label keys are refused.

    Args:
        peft_model: a VTG `PeftModel` with every member loaded (`load_adapter(path, adapter_name=...)`).
        adapter_names: the members, each once.
        fusion: "mean" (of the members' probabilities) or "geometric" (see `peft_vtg.heads.ensemble`).
    """

    def __init__(self, peft_model: nn.Module, adapter_names: Sequence[str], fusion: str = "mean") -> None:
        super().__init__()
        if not hasattr(peft_model, "forward_grounding"):
            raise TypeError(f"{type(peft_model).__name__} has no forward_grounding; wrap a VTG PeftModel.")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [name for name in names if name not in peft_model.peft_config]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(f"adapter_names must name loaded adapters, each once; got {names} (loaded: "
                             f"{sorted(peft_model.peft_config)}).")
        if fusion not in ENSEMBLE_FUSIONS:
            raise ValueError(f"fusion must be one of {ENSEMBLE_FUSIONS}, got {fusion!r}.")
        self.peft_model = peft_model
        self.adapter_names = names
        self.fusion = fusion

    def forward(self, **batch: Any) -> VTGGroundingOutput:
        inputs = {key: value for key, value in batch.items() if key not in ("qid", "duration", "video_ids", "windows")}
        return self.peft_model.forward_grounding_ensemble(self.adapter_names, self.fusion, **inputs)
