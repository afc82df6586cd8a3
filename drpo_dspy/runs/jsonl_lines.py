"""Reading JSON Lines text: one value per non-blank line, errors naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def jsonl_values(text: str, where: str) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of ``text``.

    Lines are split on "\\n" only: ``str.splitlines()`` would also break on U+2028 and similar characters, which
    JSON allows inside strings. A line that is not JSON raises ``ValueError("<where> line N is not valid JSON: ...")``.
    """
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} line {lineno} is not valid JSON: {exc.msg}") from exc
        yield lineno, value
