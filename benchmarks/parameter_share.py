"""Trainable-parameter share of the benchmark's VTG adapters on real-size backbones (randomly initialised from their
default configs, so nothing is downloaded; the share does not depend on the weights).

    python benchmarks/parameter_share.py

The shipped SynthVTG backbone has 0.23 M parameters, so any useful head is a large share of it; this shows what the
same adapters cost on the backbones they are meant for.
"""

import torch
from peft import get_peft_model
from transformers import CLIPConfig, CLIPModel, XCLIPConfig, XCLIPModel

from peft_vtg import VTGPromptConfig  # importing peft_vtg registers the method

BACKBONES = {
    "X-CLIP ViT-B/32 (config of microsoft/xclip-base-patch32)": lambda: XCLIPModel(XCLIPConfig()),
    "CLIP ViT-B/32 (config of openai/clip-vit-base-patch32)": lambda: CLIPModel(CLIPConfig()),
}
ADAPTERS = {
    "head only (width 256)": dict(num_video_tokens=0, num_text_tokens=0, grounding_head=True),
    "VTG deep 8+8 tokens, every layer, + head (width 256)": dict(num_video_tokens=8, num_text_tokens=8,
                                                                  video_prompt_depth=12, text_prompt_depth=12),
    "VTG deep 8+8 tokens, every layer, + head (width 64, as benchmarked)": dict(
        num_video_tokens=8, num_text_tokens=8, video_prompt_depth=12, text_prompt_depth=12, head_hidden_size=64),
}


def main() -> None:
    print("| backbone | adapter | base parameters | trainable | share |")
    print("|---|---|---|---|---|")
    for backbone, build in BACKBONES.items():
        torch.manual_seed(0)
        base = build()
        total = sum(p.numel() for p in base.parameters())
        for adapter, kwargs in ADAPTERS.items():
            model = get_peft_model(base, VTGPromptConfig(**kwargs), adapter_name="probe")
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"| {backbone} | {adapter} | {total:,} | {trainable:,} | {100 * trainable / total:.3f}% |")
            base = model.unload()


if __name__ == "__main__":
    main()
