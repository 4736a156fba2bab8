"""peft_vtg: parameter-efficient video temporal grounding as a PEFT plugin.

`import peft_vtg` registers the `VTG_PROMPT` method with PEFT, after which `get_peft_model`, `PeftConfig` and
`PeftModel` handle `VTGPromptConfig` like any built-in method.
"""

from ._registration import register as _register

_register()  # before importing the config: its __post_init__ uses PeftType.VTG_PROMPT

from .injection import ARCHITECTURES, ArchitectureSpec, StreamSpec  # noqa: E402
from .vtg_prompt import TextPromptInit, VideoPromptInit, VTGPromptConfig, VTGPromptModel  # noqa: E402
from . import heads, metrics, timeline  # noqa: E402

__version__ = "0.1.0.dev0"


def __getattr__(name: str):
    # `data` (and `ground`, which uses it) import `datasets`, close to a second of start-up; `import peft_vtg` is
    # needed just to register the method, so they load on first use.
    if name == "data":
        from . import data

        return data
    if name in ("ground", "ground_queries"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
    "ground_queries",
    "heads",
    "metrics",
    "timeline",
]
