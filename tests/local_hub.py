"""Route the Hub API to local fakes in a test, whatever version of huggingface_hub and transformers is installed."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

# Modules that hold `create_repo = api.create_repo`-style aliases, bound to one HfApi when they were imported:
# patching HfApi alone misses them, and transformers < 5.2 pushes through them.
_ALIAS_MODULES = ("huggingface_hub", "huggingface_hub.hf_api", "transformers.utils.hub")


def intercept_hub(monkeypatch: pytest.MonkeyPatch, **fakes: Callable) -> None:
    """Replace `HfApi.<name>` by `fakes[name]` (a function taking `self` first) and every module-level alias of it.

    Example: `intercept_hub(monkeypatch, create_repo=fake_create_repo, create_commit=fake_create_commit)`.
    """
    from huggingface_hub import HfApi

    for name, fake in fakes.items():
        if not hasattr(HfApi, name):
            raise AttributeError(f"HfApi has no method {name!r} to intercept")
        monkeypatch.setattr(HfApi, name, fake)
        for module_name in _ALIAS_MODULES:
            module = importlib.import_module(module_name)
            alias = getattr(module, name, None)
            if isinstance(getattr(alias, "__self__", None), HfApi):
                monkeypatch.setattr(module, name, getattr(alias.__self__, name))  # rebound: now the fake
