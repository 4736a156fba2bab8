"""peft_vtg: parameter-efficient video temporal grounding as a PEFT plugin.

`import peft_vtg` registers the `VTG_PROMPT` method with PEFT, after which `get_peft_model`, `PeftConfig` and
`PeftModel` handle `VTGPromptConfig` like any built-in method.
"""

from ._registration import register as _register

_register()  # before importing the config: its __post_init__ uses PeftType.VTG_PROMPT

from .injection import ARCHITECTURES, ArchitectureSpec, StreamSpec  # noqa: E402
from .vtg_prompt import TextPromptInit, VideoPromptInit, VTGPromptConfig, VTGPromptModel  # noqa: E402
from . import data, heads, metrics, timeline  # noqa: E402
from .inference import ground  # noqa: E402

__version__ = "0.1.0.dev0"

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "StreamSpec",
    "TextPromptInit",
    "VTGPromptConfig",
    "VTGPromptModel",
    "VideoPromptInit",
    "__version__",
    "data",
    "ground",
    "heads",
    "metrics",
    "timeline",
]
