"""Training with Hugging Face `Trainer`: `GroundingTrainer` makes `Trainer`'s forward the grounding forward."""

from __future__ import annotations

import math
import os
from typing import Any, Optional

from transformers import Trainer, TrainerCallback, TrainingArguments

from .evaluation import evaluate_grounding
from .loop import record_trained_window
from .module import GroundingModule


class _CollatorEpochCallback(TrainerCallback):
    """Tells a collator that draws per epoch (`LongVideoWindowCollator`) which epoch begins, as peft_vtg's own loop
    does; without it every epoch draws the same windows."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.collator.set_epoch(math.floor(state.epoch or 0))


class GroundingTrainer(Trainer):
    """A `transformers.Trainer` for a VTG `PeftModel`.

    `Trainer` calls `model(**inputs)` and reads `outputs["loss"]`; the model is therefore wrapped in a
    `GroundingModule` (so DDP and `Trainer`'s own loops see the grounding forward), and checkpoints save the adapter
    (what `PeftModel.from_pretrained` loads) instead of a full state dict; resuming (`resume_from_checkpoint`) and
    `load_best_model_at_end` load it back. Batches come from `GroundingCollator`, which needs the raw rows, so
    `remove_unused_columns` must be off (it is, when no `args` are given).

    As in peft_vtg's own loop: `evaluate` adds the grounding metrics (`eval_R1@0.5`, `eval_mIoU`, Moment-DETR's
    mAP, highlight metrics where the rows have labels; usable as `metric_for_best_model`) to `Trainer`'s loss, on
    the evaluation collator (`LongVideoWindowCollator.for_evaluation()`: whole videos, no random windows); a
    collator that draws per epoch is told each epoch; and the adapters record the window they were trained on, for
    long-video inference (`ground`).

    Example:
        ```py
        trainer = GroundingTrainer(model=peft_model, args=TrainingArguments("out", remove_unused_columns=False),
                                   train_dataset=rows, eval_dataset=eval_rows,
                                   data_collator=GroundingCollator(tokenizer, videos))
        trainer.train()
        trainer.evaluate()["eval_R1@0.5"]
        ```
    """

    def __init__(self, model: Any = None, args: Any = None, train_base_model_modes: bool = False, **kwargs: Any):
        if model is not None and not isinstance(model, GroundingModule):
            model = GroundingModule(model, train_base_model_modes=train_base_model_modes)
        if args is None:  # Trainer's own default would drop the rows' columns
            args = TrainingArguments(output_dir="tmp_trainer", remove_unused_columns=False)
        if args.remove_unused_columns:
            raise ValueError(
                "GroundingTrainer needs TrainingArguments(remove_unused_columns=False): the grounding collator reads "
                "the raw rows (qid, vid, query, duration, windows), which Trainer would drop."
            )
        super().__init__(model=model, args=args, **kwargs)
        if args.label_names is None:  # the span labels the loss reads; Trainer infers none from forward(**batch)
            self.label_names = ["start_frames", "end_frames"]
        if hasattr(self.data_collator, "set_epoch"):
            self.add_callback(_CollatorEpochCallback(self.data_collator))

    @property
    def peft_model(self) -> Any:
        """The wrapped VTG `PeftModel`."""
        return self.accelerator.unwrap_model(self.model).peft_model

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.train_dataset is not None and len(self.train_dataset):
            record_trained_window(self.peft_model, self.train_dataset, self.data_collator)
        return super().train(*args, **kwargs)

    # ------------------------------------------------------------------ evaluation
    def _with_evaluation_collator(self, make_loader: Any, dataset: Any) -> Any:
        collator = self.data_collator
        evaluation = getattr(collator, "for_evaluation", None)
        if not callable(evaluation):
            return make_loader(dataset)
        self.data_collator = evaluation()
        try:
            return make_loader(dataset)
        finally:
            self.data_collator = collator

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return self._with_evaluation_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        return self._with_evaluation_collator(super().get_test_dataloader, test_dataset)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Optional[list[str]] = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """`Trainer.evaluate` (loss, speed) plus the grounding metrics of the same rows, keys `{prefix}_{metric}`."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        rows = eval_dataset if eval_dataset is not None else self.eval_dataset
        if rows is None or isinstance(rows, (dict, str)):  # several sets: super() evaluated each through here
            return metrics
        grounding, _ = evaluate_grounding(self.model, self.get_eval_dataloader(rows), rows, self.accelerator,
                                          disable_tqdm=self.args.disable_tqdm)
        extra = {f"{metric_key_prefix}_{key}": value for key, value in grounding.items()}
        self.log(extra)
        metrics.update(extra)
        return metrics

    # ------------------------------------------------------------------ checkpoints hold the adapter
    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.peft_model.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self._load_adapters(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_adapters(self.state.best_model_checkpoint)

    def _load_adapters(self, directory: str) -> None:
        """The weights of every adapter saved in `directory` by `_save` (`save_pretrained`: the default adapter at
        the top, others in subfolders by name) into the model being trained, in place."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        peft_model = self.peft_model
        for name in peft_model.peft_config:
            path = directory if name == "default" else os.path.join(directory, name)
            if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
                raise FileNotFoundError(f"{path} has no adapter_model.safetensors for adapter {name!r}; it is not a "
                                        "checkpoint of this GroundingTrainer's model.")
            set_peft_model_state_dict(peft_model, load_peft_weights(path, device="cpu"), adapter_name=name)
