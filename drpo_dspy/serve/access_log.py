"""Access logging: one line per request with no key and no prompt text; prompts only when the operator asks.

Lines go to the ``drpo_dspy.serve.access`` logger (``--log-prompts`` adds ``drpo_dspy.serve.prompts``). Both sit
under ``drpo_dspy``, whose records pass the package's secret-redaction filter.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

access_logger = logging.getLogger("drpo_dspy.serve.access")
prompt_logger = logging.getLogger("drpo_dspy.serve.prompts")


_INTERNAL_ERROR = json.dumps({"error": {"message": "Internal server error; the server log names the failure class.",
                                         "type": "server_error", "param": None, "code": None}}).encode()


class AccessLogMiddleware:
    """Pure ASGI middleware: logs method, path, status, duration, client address, model and program version, and
    turns an unhandled exception into an OpenAI-style 500 whose log line is redacted (no traceback, which could
    carry prompt text or a key in an exception message)."""

    def __init__(self, app: Any, redact: Callable[[str], str] = str):
        self.app, self.redact = app, redact

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, answered = 500, False

        async def send_and_note(message: dict) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            access_logger.error("unhandled %s", self.redact(f"{type(exc).__name__}: {exc}")[:300])
            if not answered:
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": _INTERNAL_ERROR})
        finally:
            state = scope.get("state") or {}
            client = scope.get("client") or ("-", 0)
            access_logger.info("%s %s %s %d %.1fms model=%s version=%s", client[0], scope["method"], scope["path"],
                               status, (time.perf_counter() - started) * 1000, state.get("model", "-"),
                               state.get("version", "-"))


def log_exchange(model: str, version: str, messages: list[dict[str, str]], answers: list[str]) -> None:
    """The full prompt sent upstream and the answers (only called with ``--log-prompts``)."""
    prompt_logger.info("model=%s version=%s prompt=%r answers=%r", model, version, messages, answers)
