"""Registers VTG prompt tuning with PEFT: the one place where peft_vtg touches PEFT's registries.

PEFT keeps its method names in the `PeftType` enum and refuses to register a name that is not a member, so the
member `VTG_PROMPT` is added first. Both steps are idempotent: importing peft_vtg twice, or a future PEFT that already
defines the member, is harmless.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method
from peft.utils.peft_types import PeftType

METHOD_NAME = "vtg_prompt"
PEFT_TYPE_NAME = METHOD_NAME.upper()


def _add_peft_type_member(name: str) -> PeftType:
    """Add `name` to the `PeftType` enum (a `str` enum, so the member equals its value and JSON-serialises as it)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


def register() -> None:
    """Make `VTGPromptConfig` / `VTGPromptModel` known to `get_peft_model`, `PeftConfig` and `PeftModel`."""
    peft_type = _add_peft_type_member(PEFT_TYPE_NAME)
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    from .vtg_prompt import VTGPromptConfig, VTGPromptModel

    register_peft_method(name=METHOD_NAME, config_cls=VTGPromptConfig, model_cls=VTGPromptModel)
