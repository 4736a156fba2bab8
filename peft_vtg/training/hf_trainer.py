"""Training with Hugging Face `Trainer`: `GroundingTrainer` makes `Trainer`'s forward the grounding forward."""

from __future__ import annotations

import os
from typing import Any, Optional

from transformers import Trainer

from .module import GroundingModule


class GroundingTrainer(Trainer):
    """A `transformers.Trainer` for a VTG `PeftModel`.

    `Trainer` calls `model(**inputs)` and reads `outputs["loss"]`; the model is therefore wrapped in a
    `GroundingModule` (so DDP and `Trainer`'s own loops see the grounding forward), and checkpoints save the adapter
    (what `PeftModel.from_pretrained` loads) instead of a full state dict. Batches come from `GroundingCollator`,
    which needs the raw rows, so `remove_unused_columns` is turned off.

    Example:
        ```py
        trainer = GroundingTrainer(model=peft_model, args=TrainingArguments("out", remove_unused_columns=False),
                                   train_dataset=rows, data_collator=GroundingCollator(tokenizer, videos))
        trainer.train()
        ```
    """

    def __init__(self, model: Any = None, args: Any = None, train_base_model_modes: bool = False, **kwargs: Any):
        if model is not None and not isinstance(model, GroundingModule):
            model = GroundingModule(model, train_base_model_modes=train_base_model_modes)
        if args is not None and args.remove_unused_columns:
            raise ValueError(
                "GroundingTrainer needs TrainingArguments(remove_unused_columns=False): the grounding collator reads "
                "the raw rows (qid, vid, query, duration, windows), which Trainer would drop."
            )
        super().__init__(model=model, args=args, **kwargs)

    @property
    def peft_model(self) -> Any:
        """The wrapped VTG `PeftModel`."""
        return self.accelerator.unwrap_model(self.model).peft_model

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.peft_model.save_pretrained(output_dir)
