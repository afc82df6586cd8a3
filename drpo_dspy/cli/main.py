"""The ``drpo`` command line: one module per command, wired here."""

from __future__ import annotations

import argparse
import sys

from drpo_dspy.cli.common import run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    from drpo_dspy.cli.evaluate import add_evaluate_parser
    from drpo_dspy.cli.import_official import add_import_official_parser
    from drpo_dspy.cli.optimize import add_optimize_parser
    from drpo_dspy.cli.optimize_icl import add_optimize_icl_parser
    from drpo_dspy.cli.respond import add_respond_parser
    from drpo_dspy.cli.serve import add_serve_parser
    from drpo_dspy.cli.show import add_show_parser

    parser = argparse.ArgumentParser(prog="drpo", description="DRPO: tuning-free alignment by prompt optimization.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_optimize_parser(sub)
    add_evaluate_parser(sub)
    add_optimize_icl_parser(sub)
    add_import_official_parser(sub)
    add_show_parser(sub)
    add_respond_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None) or args.func
    return run_reporting_errors(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
