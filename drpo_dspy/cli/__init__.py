"""The ``drpo`` command line, one module per command; ``main`` is the console script's entry point."""

from drpo_dspy.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
