"""VTG prompt tuning: video + text soft prompts for frozen video-language encoders (config, layer, tuner)."""

from .config import TextPromptInit, VideoPromptInit, VTGPromptConfig
from .layer import VTGPromptEncoder, VTGPromptLayer
from .model import VTGPromptModel

__all__ = [
    "TextPromptInit",
    "VTGPromptConfig",
    "VTGPromptEncoder",
    "VTGPromptLayer",
    "VTGPromptModel",
    "VideoPromptInit",
]
