"""``drpo respond``: answer a query with a compiled program."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import EMBEDDED, UsageError, add_command, check_settings, make_lm, positive_int

DESCRIPTION = """\
Answer one query with a compiled program (the program.json written by drpo optimize or drpo import-official): its
system prompt and the in-context examples nearest to the query, in the DRPO layout, sent to the base model. The
answer goes to standard output; messages go to standard error."""
EXAMPLES = """\
  drpo respond "How do I politely decline a meeting?" --program runs/<timestamp>/program.json
  drpo respond "Plan a 3-day trip to Kyoto." --program aligned.json \\
      --base-model hosted_vllm/mistralai/Mistral-7B-v0.1 --base-api-base http://localhost:8000/v1 --base-model-type text
  drpo respond "Summarize DRPO in one line." --program aligned.json --base-model openai/gpt-4o-mini --max-tokens 64"""


def add_respond_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``respond`` sub-command."""
    resp = add_command(subparsers, "respond", help="answer a query with a compiled program",
                       description=DESCRIPTION, examples=EXAMPLES)
    resp.add_argument("query", metavar="QUERY", help="the user's query (quote it)")
    resp.add_argument("--program", type=Path, required=True, metavar="PROGRAM.json",
                      help="program.json written by drpo optimize or drpo import-official")
    resp.add_argument("--base-model", "--model", dest="model", default=None, metavar="MODEL",
                      help=f"litellm model string of the model answering (default: {EMBEDDED}); --model is the "
                           "same option")
    resp.add_argument("--base-api-base", "--api-base", dest="api_base", metavar="URL",
                      help="API base URL of that model (vLLM, Ollama, proxies); --api-base is the same option")
    resp.add_argument("--base-model-type", "--model-type", dest="model_type", choices=["chat", "text"], default=None,
                      help="'text' for base (non-chat) models served by text completion (default: 'text' for the "
                           "embedded base models, else 'chat'); --model-type is the same option")
    resp.add_argument("--max-tokens", type=positive_int, help="answer cap (default: the program's)")
    resp.set_defaults(handler=cmd_respond)
    return resp


def cmd_respond(args: argparse.Namespace) -> int:
    if not args.program.is_file():
        raise UsageError(f"program file {args.program} does not exist")

    from drpo_dspy import AlignedResponder

    program = AlignedResponder(examples=[], k=0)
    program.load(str(args.program))
    if args.max_tokens is not None:
        program.max_tokens = args.max_tokens
    lm = make_lm(args.model, args.api_base, args.model_type, role="base")  # URL1,URL2: a pool (scale-out.md)
    check_settings("base", lm)
    print(program(query=args.query, lm=lm).response)
    return 0
