import os
import sys

# No network in tests: every Hub call must be served locally or intercepted.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

import peft_vtg  # noqa: E402,F401  (registers the method)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """Name the stack the suite ran on (CI runs it on the newest releases and on the declared floors)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "huggingface_hub")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    terminalreporter.write_line("stack: " + ", ".join(found))
