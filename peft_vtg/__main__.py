"""`python -m peft_vtg ...` runs the `peft-vtg` command line."""

import sys

from .cli import main

sys.exit(main())
