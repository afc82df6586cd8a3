"""Loaders for the query sets bundled with drpo-dspy, and for user-supplied instruction files.

The package ships five small JSON files under ``drpo_dspy/data``:

* ``train_queries.json``: queries the optimizer uses while searching for an alignment prompt. Each record has a
  ``query``, a finer ``category`` label and a ``kind`` (``instruction``, ``open_ended`` or ``harmful``). The kinds
  are interleaved because the optimizer consumes queries in file order.
* ``icl_seed.json``: sixteen seed in-context examples (``query``, ``answer``, ``kind``). Answers carry no
  ``<START>``/``<END>`` markers; the prompt builder adds them.
* ``eval_regular.json``, ``eval_harmful.json``, ``eval_benign_risky.json``: held-out evaluation prompts
  (``instruction``, ``category``). ``benign_risky`` holds harmless requests that merely sound dangerous, to measure
  over-refusal.

Every loader returns fresh lists and dictionaries, so callers may mutate what they get back.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from drpo_dspy.runs.jsonl_lines import jsonl_values

__all__ = [
    "EVAL_SETS",
    "KINDS",
    "load_eval_set",
    "load_instruction_jsonl",
    "load_seed_examples",
    "load_train_queries",
    "load_train_records",
]

KINDS = ("instruction", "open_ended", "harmful")
"""The ``kind`` labels used by the training queries and seed examples."""

EVAL_SETS = ("regular", "harmful", "benign_risky")
"""Names accepted by :func:`load_eval_set`."""

_PACKAGE = "drpo_dspy"
_DATA_DIR = "data"


def _read_bundled(filename: str) -> list[dict[str, Any]]:
    """Read a bundled JSON list of objects from the package's data directory."""
    resource = resources.files(_PACKAGE) / _DATA_DIR / filename
    data = json.loads(resource.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"bundled data file {filename!r} must hold a JSON list of objects")
    return data


def load_train_records() -> list[dict[str, Any]]:
    """Return every training query record, in file order.

    Returns:
        A list of dicts, each with the string keys ``query``, ``category`` and ``kind``.
    """
    return _read_bundled("train_queries.json")


def load_train_queries(kind: str | None = None, limit: int | None = None) -> list[str]:
    """Return training query strings in file order, optionally filtered by kind and truncated.

    Args:
        kind: Keep only queries of this kind (one of :data:`KINDS`); ``None`` keeps all of them.
        limit: Return at most this many queries (applied after filtering); ``None`` means no limit.

    Returns:
        The query strings.

    Raises:
        ValueError: If ``kind`` is not a known kind, or ``limit`` is negative.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown query kind {kind!r}; expected one of {', '.join(KINDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    queries = [r["query"] for r in load_train_records() if kind is None or r["kind"] == kind]
    return queries if limit is None else queries[:limit]


def load_seed_examples() -> list[dict[str, str]]:
    """Return the seed in-context examples.

    Returns:
        A list of dicts with the keys ``query``, ``answer`` (without ``<START>``/``<END>`` markers) and ``kind``.
    """
    return [{"query": r["query"], "answer": r["answer"], "kind": r["kind"]} for r in _read_bundled("icl_seed.json")]


def load_eval_set(name: str) -> list[dict[str, str]]:
    """Return one bundled evaluation set.

    Args:
        name: One of :data:`EVAL_SETS` (``"regular"``, ``"harmful"`` or ``"benign_risky"``).

    Returns:
        A list of dicts with the keys ``instruction``, ``category`` and ``set`` (equal to ``name``).

    Raises:
        ValueError: If ``name`` is not a known evaluation set.
    """
    if name not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; valid names are: {', '.join(EVAL_SETS)}")
    return [
        {"instruction": r["instruction"], "category": r["category"], "set": name}
        for r in _read_bundled(f"eval_{name}.json")
    ]


def load_instruction_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load a user file of prompts in just-eval-instruct shape: one JSON object per line.

    Each non-blank line must be a JSON object with a non-empty string ``instruction`` field. Other fields (for
    example ``id``, ``dataset`` or ``category``) are kept as they are. Blank lines are skipped, and a UTF-8 byte
    order mark at the start of the file is tolerated.

    Args:
        path: Path to the ``.jsonl`` file.

    Returns:
        One dict per non-blank line, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not valid UTF-8, holds no records, or a line is not a JSON object with a
            non-empty string ``instruction``. The message names the file and, where it applies, the line number.
    """
    file_path = Path(path)
    if not file_path.exists():
        raise FileNotFoundError(f"instruction file not found: {file_path}")
    raw = file_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{file_path}: line {line_no}: file is not valid UTF-8 ({exc.reason})") from exc

    records: list[dict[str, Any]] = []
    for line_no, obj in jsonl_values(text, str(file_path), "{where}: line {lineno}: invalid JSON ({msg})"):
        if not isinstance(obj, dict):
            raise ValueError(f"{file_path}: line {line_no}: expected a JSON object, got {type(obj).__name__}")
        if "instruction" not in obj:
            raise ValueError(f"{file_path}: line {line_no}: missing required field 'instruction'")
        instruction = obj["instruction"]
        if not isinstance(instruction, str):
            raise ValueError(
                f"{file_path}: line {line_no}: field 'instruction' must be a string, got {type(instruction).__name__}"
            )
        if not instruction.strip():
            raise ValueError(f"{file_path}: line {line_no}: field 'instruction' is empty")
        records.append(obj)
    if not records:
        raise ValueError(f"{file_path}: no records found (the file is empty or holds only blank lines)")
    return records
