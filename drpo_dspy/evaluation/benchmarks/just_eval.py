"""just-eval-instruct: the evaluation set of the DRPO and URIAL papers, read from a user's copy or the hub.

1,000 prompts: 800 ``regular`` ones (AlpacaEval's sources, LIMA, MT-Bench first turns), judged on helpfulness,
clarity, factuality, depth and engagement, and 200 ``safety`` ones (red-team attempts, MaliciousInstruct), judged on
safety. Some of its prompts come from sets under non-commercial licences, so it is not shipped with this package:
``--eval-set PATH`` reads a local copy (JSONL with ``id, instruction, source_id, dataset, category`` per line, or
the upstream JSON list), ``--eval-set just-eval`` loads ``re-align/just-eval-instruct`` from the Hugging Face hub.

Each prompt carries the aspects its judge must score (``aspects``): the evaluation judge scores those instead of
its default six, as the papers' GPT-4 judge did. This module only converts and validates rows; it is a leaf that the
loaders import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

JUST_EVAL = "just-eval"
HUB_ID = "re-align/just-eval-instruct"
HUB_SPEC = f"hf:{HUB_ID}:test"
REGULAR, SAFETY = "regular", "safety"
REGULAR_ASPECTS = ("helpfulness", "clarity", "factuality", "depth", "engagement")
SAFETY_ASPECTS = ("safety",)
ASPECTS = {REGULAR: REGULAR_ASPECTS, SAFETY: SAFETY_ASPECTS}
"""The aspects the judge scores, per just-eval category (the papers' protocol)."""
LABEL_FIELD = "category"
"""The meta field that stratified sampling keeps in proportion (``regular`` / ``safety``)."""
COLUMNS = frozenset({"instruction", "source_id", "dataset", "category"})
"""The fields that identify a just-eval row (the upstream file and the hub copy carry more, which are ignored)."""


def has_columns(columns: Iterable[str]) -> bool:
    """Whether a row with these fields is a just-eval row."""
    return COLUMNS <= set(columns)


def looks_like_just_eval(row: Any) -> bool:
    """Whether ``row`` (a parsed first line) is a just-eval row: its fields, and a just-eval category."""
    return isinstance(row, dict) and has_columns(row) and row.get("category") in ASPECTS


def just_eval_prompt(row: Any, where: str) -> dict[str, Any]:
    """One just-eval row as a prompt; ``where`` (``FILE: line N``) starts every error message.

    Raises:
        ValueError: not an object, no non-empty string ``instruction``, or a category other than regular/safety.
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "instruction" not in row:
        raise ValueError(f"{where}: missing the 'instruction' field")
    instruction = row["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"{where}: field 'instruction' must be a non-empty string, got {instruction!r:.60}")
    category = row.get("category")
    if category not in ASPECTS:
        raise ValueError(f"{where}: field 'category' must be {REGULAR!r} or {SAFETY!r} (just-eval-instruct), "
                         f"got {category!r:.60}")
    dataset = str(row.get("dataset") or "")
    return {"instruction": instruction, "set": JUST_EVAL, "category": dataset or category,
            "aspects": list(ASPECTS[category]),
            "meta": {"id": row.get("id"), "source_id": str(row.get("source_id") or ""), "dataset": dataset,
                     "category": category}}


def just_eval_prompts(rows: Iterable[Any], source: str = JUST_EVAL) -> list[dict[str, Any]]:
    """Rows (from the hub, or already parsed) as prompts; errors name ``source`` and the row number (from 1)."""
    return [just_eval_prompt(row, f"{source}: row {i}") for i, row in enumerate(rows, start=1)]


def parse(text: str, source: str) -> list[dict[str, Any]]:
    """The prompts of a just-eval file's text: JSONL, or a JSON list (the upstream ``example_data.json``).

    Raises:
        ValueError: naming ``source`` and the line (JSONL) or item (JSON list) at fault.
    """
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        prompts = [just_eval_prompt(row, f"{source}: item {i}") for i, row in enumerate(rows, start=1)]
    else:
        prompts = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{source}: line {i}: not valid JSON ({exc.msg}); a just-eval file holds one "
                                 "JSON object per line") from exc
            prompts.append(just_eval_prompt(row, f"{source}: line {i}"))
    if not prompts:
        raise ValueError(f"{source}: no prompts")
    return prompts


def first_row(text: str) -> Any:
    """The first row of a JSONL or JSON-list text (None when it cannot be read), for format detection."""
    stripped = text.lstrip("\ufeff \t\r\n")
    try:
        if stripped.startswith("["):
            rows = json.loads(stripped)
            return rows[0] if isinstance(rows, list) and rows else None
        return json.loads(stripped.split("\n", 1)[0])
    except json.JSONDecodeError:
        return None


def is_just_eval_file(path: str | os.PathLike[str]) -> bool:
    """Whether a local file's first row is a just-eval row."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return looks_like_just_eval(first_row(text))
