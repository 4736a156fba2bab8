"""SynthVTG: a deterministic synthetic video temporal grounding benchmark, its language, and the shipped backbone."""

from .dataset import SYNTH_FEATURES, FrameSource, SynthVTG, pixel_values
from .generator import DOMAINS, RenderDomain, SynthVideo, generate_clip, generate_video, held_out_combinations
from .text import build_tokenizer, describe, vocabulary

__all__ = ["DOMAINS", "FrameSource", "RenderDomain", "SYNTH_FEATURES", "SynthVTG", "SynthVideo", "pixel_values",
           "build_tokenizer", "describe", "generate_clip", "generate_video", "held_out_combinations", "vocabulary"]
