"""`peft-vtg push`: upload an adapter with a model card to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from typing import Any



def run(args: argparse.Namespace) -> int:
    from ..hub import push_adapter

    url = push_adapter(args.adapter, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.adapter} to {args.repo_id}: {url}")
    return 0



def add_parser(commands: Any) -> None:
    """Add `push` to the `peft-vtg` subcommands."""
    push = commands.add_parser("push", help="upload an adapter with a model card to the Hub",
                               description="Write a model card (base model, config, data, metrics, how to load) "
                               "into the adapter directory and upload it to a Hub repository.")
    push.add_argument("--adapter", required=True, help="adapter directory")
    push.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/xclip-charades-vtg")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.set_defaults(run=run)
