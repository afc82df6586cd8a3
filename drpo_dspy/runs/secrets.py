"""Keeping API keys out of everything DRPO writes: configs, logs, traces, saved programs, error messages.

Known secrets are the values of secret-looking environment variables (``*_API_KEY``, ``*_TOKEN``, ...) and of
secret-looking LM settings (``api_key``, an ``Authorization``/``Bearer`` header), plus every value any ``Redactor``
has seen in this process; strings shaped like common API keys (``sk-...``, ``hf_...``) are masked too. Building a
``Redactor`` also makes DRPO's own loggers (``drpo_dspy.*``) redact their records, and ``redact_exception``
scrubs an exception chain before it is shown.
"""

from __future__ import annotations

import logging
import os
import re
import threading
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


_MIN_SECRET_CHARS = 6
_KNOWN: set[str] = set()  # every secret value a Redactor has seen in this process
_KNOWN_LOCK = threading.Lock()


def _add_secret(values: set[str], value: Any) -> None:
    if not isinstance(value, str):
        return
    value = value.strip()
    scheme, _, token = value.partition(" ")
    if scheme.lower() in ("bearer", "basic", "token") and len(token.strip()) >= _MIN_SECRET_CHARS:
        values.add(token.strip())  # "Bearer <token>": the token alone is the secret
    if len(value) >= _MIN_SECRET_CHARS:
        values.add(value)


def _settings_secrets(settings: Any, values: set[str], depth: int = 0) -> None:
    """Secret-named values in LM settings, including nested ones such as ``extra_headers={"Authorization": ...}``."""
    if not isinstance(settings, dict) or depth > 3:
        return
    for key, value in settings.items():
        if is_secret_name(str(key)):
            _add_secret(values, value)
        elif isinstance(value, dict):
            _settings_secrets(value, values, depth + 1)


def secret_values(lms: Iterable[Any] = ()) -> set[str]:
    """Credential values known to this process: secret-looking environment variables and LM settings."""
    values: set[str] = set()
    for key, value in os.environ.items():
        if is_secret_name(key):
            _add_secret(values, value)
    for lm in lms:
        _settings_secrets(getattr(lm, "kwargs", None) or {}, values)
        pool = getattr(lm, "replica_pool", None)  # a replica pool's LM: its replicas' keys (clients/replica_pool.py)
        for settings in (pool.replica_settings() if pool is not None else []):
            _settings_secrets(settings, values)
    return values


def known_secrets() -> set[str]:
    """Every secret value seen so far: the environment's now, plus those of LMs given to any ``Redactor``."""
    with _KNOWN_LOCK:
        return secret_values() | _KNOWN


class Redactor:
    """Replaces known secret values, and strings shaped like common API keys, with ``***``."""

    def __init__(self, lms: Iterable[Any] = ()):
        found = secret_values(lms)
        with _KNOWN_LOCK:
            _KNOWN.update(found)
            found |= _KNOWN
        self.values = sorted(found, key=len, reverse=True)
        install_log_redaction()

    def text(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return _KEY_SHAPES.sub(MASK, text)

    def exception(self, exc: BaseException) -> BaseException:
        """Scrub ``exc`` and its causes in place (message, args, notes) and return it."""
        seen: set[int] = set()
        pending: list[BaseException | None] = [exc]
        while pending:
            current = pending.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            try:
                current.args = tuple(self.text(a) if isinstance(a, str) else a for a in current.args)
                for name in ("message", "msg", "detail", "litellm_debug_info", "llm_response", "lm_response"):
                    value = current.__dict__.get(name)
                    if isinstance(value, str):
                        setattr(current, name, self.text(value))
                notes = getattr(current, "__notes__", None)
                if isinstance(notes, list):
                    current.__notes__ = [self.text(n) if isinstance(n, str) else n for n in notes]
            except (AttributeError, TypeError):
                pass  # an exception type with read-only fields: its causes are still scrubbed
            pending.extend([current.__cause__, current.__context__, *getattr(current, "exceptions", ())])
        return exc

    def data(self, obj: Any) -> Any:
        """A copy of a JSON-like object with secret-named fields dropped and secret values masked."""
        if isinstance(obj, dict):
            return {k: (MASK if is_secret_name(str(k)) else self.data(v)) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.data(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def strip_secret_settings(settings: Any, depth: int = 0) -> Any:
    """A copy of LM settings without secret-named entries (``api_key``, ``Authorization`` headers, ...), for state
    that is saved and later loaded (a masked value would be sent as a credential, so the entry is dropped)."""
    if not isinstance(settings, dict) or depth > 3:
        return settings
    return {k: strip_secret_settings(v, depth + 1) for k, v in settings.items() if not is_secret_name(str(k))}


def redact_exception(exc: BaseException, lms: Iterable[Any] = ()) -> BaseException:
    """``exc`` (and its causes) with every known secret masked, for showing to a user or writing to a log."""
    return Redactor(lms).exception(exc)


def redacted_message(exc: BaseException, lms: Iterable[Any] = ()) -> str:
    """``"ExcType: message"`` with every known secret masked."""
    return Redactor(lms).text(f"{type(exc).__name__}: {exc}")


class RedactingLogFilter(logging.Filter):
    """Masks known secrets in a log record's message and traceback before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = sorted(known_secrets(), key=len, reverse=True)

        def clean(text: str) -> str:
            for value in values:
                text = text.replace(value, MASK)
            return _KEY_SHAPES.sub(MASK, text)

        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave the record to logging's own error handling
            return True
        cleaned = clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = clean(record.exc_text)
        return True


_LOG_FILTER = RedactingLogFilter()
LOGGER_PREFIXES = ("drpo_dspy",)


def install_log_redaction(prefixes: Iterable[str] = LOGGER_PREFIXES) -> None:
    """Attach the redacting filter to every existing logger under ``prefixes`` (idempotent)."""
    names = [name for name in list(logging.Logger.manager.loggerDict)
             if any(name == p or name.startswith(p + ".") for p in prefixes)]
    for name in [*prefixes, *names]:
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


def describe_lm(lm: Any) -> dict[str, Any]:
    """A secret-free description of an LM for configs and summaries (a replica pool's: its replicas' models and
    addresses, and the path of its router file, never the file's keys)."""
    if lm is None:
        return {}
    kwargs = {k: v for k, v in (getattr(lm, "kwargs", None) or {}).items()
              if not is_secret_name(k) and k not in ("headers", "extra_headers") and _jsonable(v)}
    described = {"model": getattr(lm, "model", str(lm)), "model_type": getattr(lm, "model_type", "chat"),
                 "kwargs": kwargs}
    pool = getattr(lm, "replica_pool", None)
    if pool is not None:
        described["pool"] = pool.describe()
    return described


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)
