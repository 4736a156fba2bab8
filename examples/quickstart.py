"""Quickstart: prompt-tune a (tiny, randomly initialised) X-CLIP with VTG prompts, save, reload, verify.

Runs offline on a CPU in seconds:

    python examples/quickstart.py [--steps 30] [--output-dir vtg-quickstart-adapter]

With a real checkpoint, replace `tiny_xclip()` by `XCLIPModel.from_pretrained("microsoft/xclip-base-patch32")` and
feed frames from its processor; everything else is unchanged.
"""

from __future__ import annotations

import argparse
import os

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import XCLIPConfig, XCLIPModel

import peft_vtg


def tiny_xclip(seed: int = 0) -> XCLIPModel:
    """A small random X-CLIP (2-layer towers, 32x32 frames, 4 frames per clip), built in code."""
    torch.manual_seed(seed)
    text = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32, bos_token_id=97, eos_token_id=98, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, num_frames=4, mit_hidden_size=16, mit_intermediate_size=32, mit_num_hidden_layers=1,
                  mit_num_attention_heads=2)
    return XCLIPModel(XCLIPConfig(text_config=text, vision_config=vision, projection_dim=16, prompt_layers=1,
                                  prompt_num_attention_heads=2))


def random_pairs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n (video, caption) pairs: videos (n, 4, 3, 32, 32), captions [BOS, 6 words, EOS]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 90, (n, 8), generator=g)
    ids[:, 0], ids[:, -1] = 97, 98
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(n, 4, 3, 32, 32, generator=g)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument("--output-dir", default="vtg-quickstart-adapter", help="where the adapter is saved")
    args = parser.parse_args()

    base = tiny_xclip()
    config = peft_vtg.VTGPromptConfig(num_video_tokens=4, num_text_tokens=4, video_prompt_depth=2)
    model = get_peft_model(base, config)
    model.print_trainable_parameters()

    batch = random_pairs(8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in tqdm(range(args.steps), desc="prompt tuning"):
        loss = model(**batch, return_loss=True).loss  # X-CLIP's video-text contrastive loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(f"contrastive loss: {losses[0]:.4f} -> {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        before = model(**batch).logits_per_video
    model.save_pretrained(args.output_dir)
    print(f"adapter saved to {os.path.abspath(args.output_dir)}: {sorted(os.listdir(args.output_dir))}")

    assert isinstance(PeftConfig.from_pretrained(args.output_dir), peft_vtg.VTGPromptConfig)
    reloaded = PeftModel.from_pretrained(tiny_xclip(), args.output_dir)
    with torch.no_grad():
        after = reloaded(**batch).logits_per_video
    if not torch.equal(before, after):
        raise SystemExit("reloaded adapter gives different outputs")
    print("reloaded adapter reproduces the outputs exactly")


if __name__ == "__main__":
    main()
