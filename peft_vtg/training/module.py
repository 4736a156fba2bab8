"""`GroundingModule`: a `PeftModel` whose `forward` is the grounding forward, for DDP, accelerate and `Trainer`."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..heads import VTGGroundingOutput


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
