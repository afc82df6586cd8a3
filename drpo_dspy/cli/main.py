"""The ``drpo`` command line: one module per command, wired here.

Building the parser imports no DSPy, litellm or torch: ``drpo --help``, ``drpo --version`` and a usage error answer
at once; each command imports what it needs when it runs. Errors and exit codes follow one scheme
(:mod:`drpo_dspy.cli.common`).
"""

from __future__ import annotations

import argparse
import sys

from drpo_dspy.cli.common import EXIT_USAGE, HelpFormatter, add_verbose_flag, configure_output, run_reporting_errors

EXAMPLES = """Examples:
  drpo optimize --quick                              # a demo run of a few minutes, on the embedded models
  drpo respond "Plan a 3-day trip." --program runs/<timestamp>/program.json
  drpo evaluate --systems base,program:runs/<timestamp>/program.json --eval-set ifeval --limit 20 --no-judge
  drpo COMMAND --help                                # a command's options and examples

Exit codes: 0 done, 1 runtime failure, 2 usage or input error, 3 a role cannot work (bad key, no server, every
call failing), 130 interrupted. Troubleshooting: docs/troubleshooting.md
"""


def package_version() -> str:
    """The installed distribution's version (the source tree's ``__version__`` when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("drpo-dspy")
    except metadata.PackageNotFoundError:
        from drpo_dspy import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from drpo_dspy.cli.evaluate import add_evaluate_parser
    from drpo_dspy.cli.import_official import add_import_official_parser
    from drpo_dspy.cli.optimize import add_optimize_parser
    from drpo_dspy.cli.optimize_icl import add_optimize_icl_parser
    from drpo_dspy.cli.respond import add_respond_parser
    from drpo_dspy.cli.serve import add_serve_parser
    from drpo_dspy.cli.show import add_show_parser

    parser = argparse.ArgumentParser(
        prog="drpo", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="DRPO: tuning-free alignment by prompt optimization. Search for an alignment system prompt "
                    "with dynamic rewards, then answer, evaluate or serve with it.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_verbose_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_optimize_parser(sub)
    add_evaluate_parser(sub)
    add_optimize_icl_parser(sub)
    add_import_official_parser(sub)
    add_show_parser(sub)
    add_respond_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script: parse (usage errors exit 2 here, before anything heavy is imported), then run the command
    with its errors reported as ``drpo <command>: error: ...`` and the exit codes of :mod:`drpo_dspy.cli.common`."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    configure_output(bool(getattr(args, "verbose", False)))
    handler = getattr(args, "handler", None) or args.func
    return run_reporting_errors(lambda: handler(args), prog=f"drpo {args.command}",
                                hint=lambda: getattr(args, "resume_hint", None))


if __name__ == "__main__":
    sys.exit(main())
