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
