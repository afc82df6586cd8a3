"""Reading JSON Lines text: one value per non-blank line, errors naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

BAD_LINE = "{where} line {lineno} is not valid JSON: {msg}"


def jsonl_values(text: str, where: str, bad_line: str = BAD_LINE) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of ``text``.

    Lines are split on "\\n" only: ``str.splitlines()`` would also break on U+2028 and similar characters, which
    JSON allows inside strings. A line that is not JSON raises ``ValueError`` with ``bad_line`` formatted with
    ``where``, ``lineno`` and ``msg``.
    """
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(bad_line.format(where=where, lineno=lineno, msg=exc.msg)) from exc
        yield lineno, value
