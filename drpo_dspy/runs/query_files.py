"""Reading training queries from user files (.json, .jsonl, .txt) with errors that point at the problem.

A query is a string or ``{"query": ...}``; in .json and .jsonl it may also be a conversation, answered at its last
user turn: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ..., {"role": "user",
...}]}`` or ``{"query": ..., "history": [{"query": ..., "response": ...}, ...]}`` (see
:mod:`drpo_dspy.primitives.conversation_query`). Errors name the file and the line (JSONL) or the position (JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

from drpo_dspy.runs.jsonl_lines import jsonl_values
from drpo_dspy.runs.validation import coerce_queries, query_text

MAX_TRAINSET_BYTES = 512 * 1024 * 1024
_FORMATS = ("use .json (a list of strings, {\"query\": ...} or {\"messages\": [...]} objects), .jsonl (one per "
            "line) or .txt (one per line)")


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise ValueError(f"training file {path} is a directory: point --trainset at a .json, .jsonl or .txt file")
    if not path.is_file():
        raise FileNotFoundError(f"training file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_TRAINSET_BYTES:
        raise ValueError(f"training file {path} is {size:,} bytes, above the {MAX_TRAINSET_BYTES:,}-byte limit")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path} is UTF-16 text: re-save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start}, line {line}): re-save it as UTF-8") from exc


def read_queries(path: str | Path) -> list[str]:
    """Queries from a JSON list (strings, objects with ``query``/``instruction``, conversations), JSONL, or text
    lines."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".txt", ""):
        raise ValueError(f"{path}: unsupported trainset format {path.suffix!r}; {_FORMATS}")
    text = _read_text(path)
    if not text.strip():
        raise ValueError(f"training file {path} is empty: DRPO needs at least one training query")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                             + ("; for one query per line name the file .jsonl" if exc.msg == "Extra data" else "")
                             ) from exc
        if isinstance(data, dict) and isinstance(data.get("queries"), list):
            data = data["queries"]
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of queries (or {{\"queries\": [...]}}), "
                             f"got a JSON {type(data).__name__}")
        return coerce_queries(data, name=str(path))
    if suffix == ".jsonl":
        queries = [query_text(record, f"{path} line {lineno}") for lineno, record in jsonl_values(text, str(path))]
        return coerce_queries(queries, name=path.name)
    lines = [(lineno, line) for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return coerce_queries([query_text(line, f"{path} line {lineno}") for lineno, line in lines], name=path.name)
