"""Reading and writing alignment-bank files: JSON, JSONL with a header line, atomic replacement."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_bank_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() != ".jsonl":
            return json.loads(text)
        lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not lines:
            raise ValueError(f"{path}: empty JSONL file (expected a header line)")
        rows = []
        for lineno, line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: corrupt JSON on line {lineno}: {exc.msg}") from exc
        header = rows[0]
        if not isinstance(header, dict) or "examples" in header:
            raise ValueError(f"{path}: first JSONL line must be the bank header object")
        if header.get("count") != len(rows) - 1:
            raise ValueError(f"{path}: header says {header.get('count')} examples but the file has {len(rows) - 1} "
                             "(truncated or edited?)")
        return {**header, "examples": rows[1:]}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from exc


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
