"""Quickstart: prompt-tune a (tiny, randomly initialised) X-CLIP for grounding with VTG prompts, save, reload, ground.

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


def synthetic_moments(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n (video, query, moment) triples: 4-frame videos (n, 4, 3, 32, 32) in which the frames of the moment are
    filled with the colour the query names (word id 10 + colour), and the moment as inclusive frame indices."""
    g = torch.Generator().manual_seed(seed)
    videos = torch.randn(n, 4, 3, 32, 32, generator=g) * 0.1
    start = torch.randint(0, 3, (n,), generator=g)
    end = torch.minimum(start + torch.randint(0, 2, (n,), generator=g), torch.tensor(3))
    colour = torch.arange(n) % 3
    for i in range(n):
        videos[i, start[i] : end[i] + 1, colour[i]] += 2.0
    ids = torch.stack([torch.tensor([97, 10 + int(c), 20, 21, 98]) for c in colour])  # [BOS, colour, words, EOS]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": videos,
            "start_frames": start, "end_frames": end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument("--output-dir", default="vtg-quickstart-adapter", help="where the adapter is saved")
    args = parser.parse_args()

    base = tiny_xclip()
    # A head as small as this toy encoder; real encoders use the defaults (256 wide, 2 fusion layers).
    config = peft_vtg.VTGPromptConfig(num_video_tokens=4, num_text_tokens=4, video_prompt_depth=2,
                                      head_hidden_size=32, head_num_layers=1, vtm_heads=["all_in_one"])
    model = get_peft_model(base, config)
    model.print_trainable_parameters()  # prompt tokens + grounding head; the encoder is frozen

    batch = synthetic_moments(12)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in tqdm(range(args.steps), desc="prompt tuning"):
        loss = model.forward_grounding(**batch).loss  # start/end CE + inside BCE + matching NLL
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(f"grounding loss: {losses[0]:.4f} -> {losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        before = model.forward_grounding(**batch).start_logits
    model.save_pretrained(args.output_dir)
    print(f"adapter saved to {os.path.abspath(args.output_dir)}: {sorted(os.listdir(args.output_dir))}")

    assert isinstance(PeftConfig.from_pretrained(args.output_dir), peft_vtg.VTGPromptConfig)
    reloaded = PeftModel.from_pretrained(tiny_xclip(), args.output_dir)
    with torch.no_grad():
        after = reloaded.forward_grounding(**batch).start_logits
    if not torch.equal(before, after):
        raise SystemExit("reloaded adapter gives different outputs")
    print("reloaded adapter reproduces the outputs exactly")

    # Each clip is 4 frames over 8 s (2 s per frame); moments come back in seconds, best first.
    out = reloaded.forward_grounding(input_ids=batch["input_ids"][:1], pixel_values=batch["pixel_values"][:1])
    moments = peft_vtg.heads.decode_moments(out.start_logits.detach(), out.end_logits.detach(), [8.0], top_k=3)[0]
    truth = (2.0 * int(batch["start_frames"][0]), 2.0 * (int(batch["end_frames"][0]) + 1))
    print(f"query 0: true moment {truth[0]:.1f}-{truth[1]:.1f} s; predicted " +
          ", ".join(f"{s:.1f}-{e:.1f} s ({p:.2f})" for s, e, p in moments))


if __name__ == "__main__":
    main()
