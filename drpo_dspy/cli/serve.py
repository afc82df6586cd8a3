"""``drpo serve``: serve compiled programs as an OpenAI-compatible API (see :mod:`drpo_dspy.serve`)."""

from drpo_dspy.serve.command import add_parser as add_serve_parser
from drpo_dspy.serve.command import run as run_serve

__all__ = ["add_serve_parser", "run_serve"]
