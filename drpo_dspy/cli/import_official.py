"""``drpo import-official``: turn a result of the original DRPO release into a program.json for ``drpo respond``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import add_command, non_negative_int

EXAMPLES = """\
  drpo import-official DRPO/outputs/mistral --out aligned.json   # the folder holding output.json
  drpo import-official DRPO/outputs/mistral/output.pkl --icl ICL_examples.json --k 3 --out aligned.json \\
      --levels-out levels.json
  drpo respond "Plan a 3-day trip." --program aligned.json       # then answer with it"""


def add_import_official_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``import-official`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = add_command(
        subparsers, "import-official", help="import a model folder of the original DRPO release as a program",
        examples=EXAMPLES,
        description="Import the original release's per-level output.json, output.txt or output.pkl (or the model "
                    "folder holding them) with its ICL_examples.json, and save it as an AlignedResponder program. "
                    "Pickles are read with a restricted unpickler that refuses code.")
    parser.add_argument("path", type=Path, metavar="PATH",
                        help="model folder, or its output.json / output.txt / output.pkl")
    parser.add_argument("--icl", type=Path, metavar="PATH",
                        help="in-context examples (default: ICL_examples.json in the folder or its parent, else the "
                             "built-in seed examples)")
    parser.add_argument("--k", type=non_negative_int, default=2,
                        help="in-context examples retrieved per query (default: 2)")
    parser.add_argument("--embedder", help="sentence-transformers model for retrieval (default: the packaged one)")
    parser.add_argument("--levels-out", type=Path, metavar="PATH",
                        help="also write the imported per-level results (published JSON shape) here")
    parser.add_argument("--out", type=Path, required=True, help="where to write the program (program.json)")
    parser.set_defaults(handler=run_import_official)
    return parser


def run_import_official(args: argparse.Namespace) -> int:
    """Run ``drpo import-official``; errors are ValueError / FileNotFoundError / ImportError with a clear message."""
    from drpo_dspy.interop.official import export_levels, import_official

    if args.k < 0:
        raise ValueError(f"--k must be >= 0, got {args.k}")
    if args.out.suffix.lower() != ".json":
        raise ValueError(f"--out must be a .json file, got {args.out}")
    program = import_official(args.path, icl_examples=args.icl, k=args.k, embedder=args.embedder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(args.out))
    levels = program.published_levels
    print(f"Imported {program.imported_from}: {len(levels)} level(s), final prompt of {len(program.instructions)} "
          f"characters, {len(program.bank)} in-context examples (k={program.k}).")
    print(f"Program written to {args.out}  (answer with: drpo respond \"...\" --program {args.out})")
    if args.levels_out:
        export_levels(program, args.levels_out)
        print(f"Per-level results written to {args.levels_out}")
    return 0
