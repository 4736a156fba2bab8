"""Trainable-parameter share of VTG adapters on real-size backbones (randomly initialised from their default configs,
so nothing is downloaded; the share does not depend on the weights).

    python benchmarks/parameter_share.py

The shipped SynthVTG backbone has 0.23 M parameters, so any useful head is a large share of it; this shows what the
same adapters cost on the backbones they are meant for. "default head" is `head_hidden_size=None`, which scales the
head with the video encoder (`peft_vtg.vtg_prompt.config.default_head_hidden_size`); width 256 was the fixed default
before it.
"""

import torch
from peft import get_peft_model
from transformers import CLIPConfig, CLIPModel, XCLIPConfig, XCLIPModel

from peft_vtg import VTGPromptConfig  # importing peft_vtg registers the method

VIT_L14 = dict(
    projection_dim=768,
    text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       patch_size=14),
)
BACKBONES = {
    "X-CLIP ViT-B/32 (config of microsoft/xclip-base-patch32)": lambda: XCLIPModel(XCLIPConfig()),
    "CLIP ViT-B/32 (config of openai/clip-vit-base-patch32)": lambda: CLIPModel(CLIPConfig()),
    "CLIP ViT-L/14 (config of openai/clip-vit-large-patch14)": lambda: CLIPModel(CLIPConfig(**VIT_L14)),
}


def adapters(video_layers: int, text_layers: int) -> dict[str, dict]:
    """The adapters measured on a backbone whose towers have `video_layers` and `text_layers` layers."""
    # One prompt_start_layer serves both towers: the last layer of the shorter one.
    top = dict(num_video_tokens=16, num_text_tokens=8, prompt_start_layer=min(video_layers, text_layers) - 1)
    deep = dict(num_video_tokens=8, num_text_tokens=8, video_prompt_depth=video_layers, text_prompt_depth=text_layers)
    return {
        "head only, default head": dict(num_video_tokens=0, num_text_tokens=0, grounding_head=True),
        "head only over the last 4 video layers, default head": dict(num_video_tokens=0, num_text_tokens=0,
                                                                     grounding_head=True, head_video_layers=4),
        "VTG top: 16 video + 8 text tokens entering one layer, default head": top,
        "VTG deep: 8 + 8 tokens in every layer, default head": deep,
        "head only, width 256 (the old default)": dict(num_video_tokens=0, num_text_tokens=0, grounding_head=True,
                                                        head_hidden_size=256),
        "VTG deep: 8 + 8 tokens in every layer, width 256 (the old default)": dict(deep, head_hidden_size=256),
    }


def main() -> None:
    print("| backbone | adapter | head width | base parameters | trainable | share |")
    print("|---|---|---|---|---|---|")
    for backbone, build in BACKBONES.items():
        torch.manual_seed(0)
        base = build()
        total = sum(p.numel() for p in base.parameters())
        layers = base.config.vision_config.num_hidden_layers, base.config.text_config.num_hidden_layers
        for adapter, kwargs in adapters(*layers).items():
            model = get_peft_model(base, VTGPromptConfig(**kwargs), adapter_name="probe")
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            width = model.peft_config["probe"].head_hidden_size
            print(f"| {backbone} | {adapter} | {width} | {total:,} | {trainable:,} | {100 * trainable / total:.3f}% |",
                  flush=True)
            base = model.unload()


if __name__ == "__main__":
    main()
