"""``drpo respond``: answer a query with a compiled program."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import EMBEDDED, make_lm


def add_respond_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``respond`` sub-command."""
    resp = subparsers.add_parser("respond", help="answer a query with a compiled program")
    resp.add_argument("query")
    resp.add_argument("--program", type=Path, required=True, help="program.json written by drpo optimize")
    resp.add_argument("--model", default=None, help=f"model answering (default: {EMBEDDED})")
    resp.add_argument("--api-base")
    resp.add_argument("--model-type", choices=["chat", "text"], default=None)
    resp.add_argument("--max-tokens", type=int, help="answer cap (default: the program's)")
    resp.set_defaults(handler=cmd_respond)
    return resp


def cmd_respond(args: argparse.Namespace) -> int:
    from drpo_dspy import AlignedResponder

    if not args.program.is_file():
        raise SystemExit(f"drpo: program file {args.program} does not exist")
    program = AlignedResponder(examples=[], k=0)
    program.load(str(args.program))
    if args.max_tokens is not None:
        program.max_tokens = args.max_tokens
    lm = make_lm(args.model, args.api_base, args.model_type)
    print(program(query=args.query, lm=lm).response)
    return 0
