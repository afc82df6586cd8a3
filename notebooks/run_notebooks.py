"""Run the notebooks of this folder offline on the embedded model and store their outputs, stamped with their source.

    python notebooks/run_notebooks.py                    # run every notebook, keep its outputs
    python notebooks/run_notebooks.py 03_evaluation      # run one (a name or a prefix)
    python notebooks/run_notebooks.py --check            # exit 1 if a stored output is missing or stale

The ``.ipynb`` files are the source: edit them in Jupyter (or any editor), then run this script so that a reader on
GitHub sees real outputs. Every code cell's outputs carry ``metadata.drpo.source_sha256``, the hash of the cell's
source when it ran; ``--check`` (and the tests) fail when a cell's source has changed since, so stored outputs
always come from the current source. Runs happen in a scratch directory with a fresh DSPy cache, offline, with no
API keys and closed local ports (the bring-your-own-model cells then say they skipped), exactly as the tests run
them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 240  # the quickstart's compile cell is the longest: about a minute on two CPU cores
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
               "VLLM_API_BASE": "http://127.0.0.1:9/v1", "OLLAMA_API_BASE": "http://127.0.0.1:9"}
NO_KEYS = ("OPENAI_API_KEY", "VLLM_API_KEY")


def notebooks(names: list[str] | None = None) -> list[Path]:
    found = sorted(HERE.glob("*.ipynb"))
    if names:
        found = [p for p in found if any(p.name.startswith(n) for n in names)]
    return found


def source_hash(source: str | list[str]) -> str:
    text = "".join(source) if isinstance(source, list) else source
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stale_cells(nb: Any) -> list[str]:
    """Ids of the code cells whose stored outputs are missing or were made from another source."""
    stale = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        stamp = cell.get("metadata", {}).get("drpo", {}).get("source_sha256")
        if stamp != source_hash(cell["source"]) or cell.get("execution_count") is None:
            stale.append(cell.get("id", "?"))
    return stale


def run(path: Path) -> None:
    """Execute ``path`` top to bottom in a scratch directory and write it back with stamped outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = {key: os.environ.get(key) for key in (*OFFLINE_ENV, *NO_KEYS, "DSPY_CACHEDIR")}
    with tempfile.TemporaryDirectory(prefix="drpo-notebook-") as scratch:
        os.environ.update(OFFLINE_ENV, DSPY_CACHEDIR=str(Path(scratch) / "dspy_cache"))
        for key in NO_KEYS:
            os.environ.pop(key, None)
        try:
            client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                    resources={"metadata": {"path": scratch}})
            client.execute()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata["drpo"] = {"source_sha256": source_hash(cell.source)}
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (a name or a prefix; default: all)")
    parser.add_argument("--check", action="store_true", help="only check that every stored output is current")
    args = parser.parse_args(argv)
    paths = notebooks(args.names)
    if not paths:
        print(f"no notebook matches {args.names}", file=sys.stderr)
        return 2
    if args.check:
        import json

        stale = {p.name: cells for p in paths if (cells := stale_cells(json.loads(p.read_text(encoding="utf-8"))))}
        for name, cells in stale.items():
            print(f"{name}: outputs missing or stale in cells {', '.join(cells)} "
                  f"(run python notebooks/run_notebooks.py {name.split('_')[0]})", file=sys.stderr)
        print("up to date" if not stale else "", end="\n" if not stale else "")
        return 1 if stale else 0
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        run(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
