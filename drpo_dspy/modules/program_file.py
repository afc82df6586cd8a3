"""Checks a saved AlignedResponder file before DSPy reads it, so a wrong file fails with a message that helps."""

from __future__ import annotations

import json
from pathlib import Path

PROGRAM_FIX = "re-save it with AlignedResponder.save(...) or use the program.json of a finished DRPO run"


def check_program_file(path: Path) -> None:
    """Fail with a clear message when ``path`` cannot be a saved AlignedResponder (before DSPy reads it)."""
    if not path.is_file():
        raise FileNotFoundError(f"program file {path} does not exist")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"program file {path} is empty; {PROGRAM_FIX}")
    try:
        state = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"program file {path} is not UTF-8 JSON (byte {exc.start}); {PROGRAM_FIX}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"program file {path} is corrupt or truncated (not valid JSON at line {exc.lineno}, "
                         f"column {exc.colno}: {exc.msg}); {PROGRAM_FIX}") from None
    if not isinstance(state, dict):
        raise ValueError(f"program file {path} holds a JSON {type(state).__name__}, not a saved AlignedResponder "
                         "(a JSON object with 'respond' and 'examples')")
    missing = [key for key in ("respond", "examples") if key not in state]
    if missing:
        raise ValueError(f"program file {path} is not a saved AlignedResponder: it has no {' or '.join(missing)} "
                         f"entry (saved from another DSPy program?); {PROGRAM_FIX}")
