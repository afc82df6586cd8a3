"""``drpo show RUN_DIR``: write a self-contained HTML view of a run's beam search."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import add_command

EXAMPLES = """\
  drpo show runs/20250101-120000                      # writes runs/20250101-120000/search.html
  drpo show runs/mistral --out /tmp/mistral-search.html"""


def add_show_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``show`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = add_command(
        subparsers, "show", help="render a run's beam search as one HTML page", examples=EXAMPLES,
        description="Write an HTML view of the beam tree in RUN_DIR/trace.jsonl (prompts, diffs against the parent "
                    "prompt, per-aspect scores and rationales, the best path) and reward_per_level.png next to it.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (log_dir) of a DRPO compile")
    parser.add_argument("--out", type=Path, metavar="FILE.html", help="output page (default: RUN_DIR/search.html)")
    parser.set_defaults(handler=run_show)
    return parser


def run_show(args: argparse.Namespace) -> int:
    """Run ``drpo show``; a missing or non-run directory is a ValueError / FileNotFoundError with a clear message."""
    from drpo_dspy.teleprompt.search_report import CHART_FILE, render_run

    if args.out is not None and args.out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must be an .html file, got {args.out}")
    page = render_run(args.run_dir, args.out)
    print(f"Search view written to {page}  (chart: {page.parent / CHART_FILE})")
    return 0
