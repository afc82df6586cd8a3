"""Keeping API keys out of everything DRPO writes: configs, logs, traces, saved programs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

_SECRET_NAME = re.compile(
    r"(api[_-]?key|(^|[_\-])token($|[_\-])|secret|password|passwd|authorization|credential|bearer)", re.I
)
_KEY_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|AKIA[0-9A-Z]{12,}|xox[abp]-[A-Za-z0-9\-]{8,})")
MASK = "***"


def is_secret_name(name: str) -> bool:
    """Whether a setting's name suggests it holds a credential."""
    return bool(_SECRET_NAME.search(name))


def secret_values(lms: Iterable[Any] = ()) -> set[str]:
    """Credential values known to this process: secret-looking environment variables and LM settings."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and isinstance(v, str) and len(v) >= 6}
    for lm in lms:
        for key, value in (getattr(lm, "kwargs", None) or {}).items():
            if is_secret_name(key) and isinstance(value, str) and len(value) >= 6:
                values.add(value)
    return values


class Redactor:
    """Replaces known secret values, and strings shaped like common API keys, with ``***``."""

    def __init__(self, lms: Iterable[Any] = ()):
        self.values = sorted(secret_values(lms), key=len, reverse=True)

    def text(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return _KEY_SHAPES.sub(MASK, text)

    def data(self, obj: Any) -> Any:
        """A copy of a JSON-like object with secret-named fields dropped and secret values masked."""
        if isinstance(obj, dict):
            return {k: (MASK if is_secret_name(str(k)) else self.data(v)) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.data(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def describe_lm(lm: Any) -> dict[str, Any]:
    """A secret-free description of an LM for configs and summaries."""
    if lm is None:
        return {}
    kwargs = {k: v for k, v in (getattr(lm, "kwargs", None) or {}).items()
              if not is_secret_name(k) and k not in ("headers", "extra_headers") and _jsonable(v)}
    return {"model": getattr(lm, "model", str(lm)), "model_type": getattr(lm, "model_type", "chat"), "kwargs": kwargs}


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)
