"""Reading training queries from user files (.json, .jsonl, .txt) with errors that point at the problem."""

from __future__ import annotations

import json
from pathlib import Path

from drpo_dspy.validation import coerce_queries


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"training file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start}): re-save it as UTF-8") from exc


def read_queries(path: str | Path) -> list[str]:
    """Queries from a JSON list (strings or objects with ``query``/``instruction``), JSONL, or text lines."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        if isinstance(data, dict) and isinstance(data.get("queries"), list):
            data = data["queries"]
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of queries")
        return coerce_queries(data, name=path.name)
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from exc
        return coerce_queries(records, name=path.name)
    if path.suffix in (".txt", ""):
        return coerce_queries([line for line in text.splitlines() if line.strip()], name=path.name)
    raise ValueError(f"{path}: unsupported trainset format {path.suffix!r} (use .json, .jsonl or .txt)")
