"""Train a tiny CLIP grounding adapter with peft_vtg.training.train; run as a script, alone or under
`accelerate launch`, by tests/test_training.py.

    python tests/scripts/train_tiny.py OUTPUT_DIR PER_DEVICE_BATCH [MAX_STEPS]
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from peft import get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the tiny models

from peft_vtg import VTGPromptConfig  # noqa: E402
from peft_vtg.data import GroundingCollator  # noqa: E402
from peft_vtg.training import VTGTrainingArguments, release_process_group, train  # noqa: E402
from test_end_to_end import synthetic_set  # noqa: E402
from tiny_models import tiny_clip, tiny_tokenizer  # noqa: E402

# No randomness inside a step (no dropout, no matching negatives), so 1 and 2 processes can agree.
CONFIG = dict(num_video_tokens=2, num_text_tokens=2, head_hidden_size=16, head_num_attention_heads=2,
              head_num_layers=1, head_dropout=0.0)


def main() -> None:
    output_dir, batch = sys.argv[1], int(sys.argv[2])
    max_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), VTGPromptConfig(**CONFIG))
    rows, videos = synthetic_set(16)
    collate = GroundingCollator(tiny_tokenizer(), videos.__getitem__)
    args = VTGTrainingArguments(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch,
                                per_device_eval_batch_size=2, learning_rate=1e-2, lr_scheduler_type="linear",
                                warmup_steps=1, logging_steps=1, disable_tqdm=True, seed=0)
    result = train(model, rows, collate, args, eval_dataset=rows[:7])  # 7: the last eval batch is uneven on 2 processes
    # train() leaves the processes able to work together (accelerate's end_training destroyed the process group,
    # and DDP's wrapper then hung the main process at exit now and then)
    from accelerate.utils import gather_object

    state = PartialState()
    assert sorted(gather_object([state.process_index])) == list(range(state.num_processes))
    if PartialState().is_main_process:
        model.save_pretrained(f"{output_dir}/final")  # the last adapter (output_dir holds the best one)
        with open(f"{output_dir}/history.json", "w") as handle:
            json.dump(result.history, handle)
    release_process_group()  # the script's end: what train() leaves to its caller


if __name__ == "__main__":
    main()
