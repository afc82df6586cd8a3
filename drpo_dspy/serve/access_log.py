"""Access logging: one line per request with no key and no prompt text; prompts only when the operator asks.

Lines go to the ``drpo_dspy.serve.access`` logger (``--log-prompts`` adds ``drpo_dspy.serve.prompts``). Both sit
under ``drpo_dspy``, whose records pass the package's secret-redaction filter.
"""

from __future__ import annotations

import logging
import time
from typing import Any

access_logger = logging.getLogger("drpo_dspy.serve.access")
prompt_logger = logging.getLogger("drpo_dspy.serve.prompts")


class AccessLogMiddleware:
    """Pure ASGI middleware: method, path, status, duration, client address, model and program version."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            state = scope.get("state") or {}
            client = scope.get("client") or ("-", 0)
            access_logger.info("%s %s %s %d %.1fms model=%s version=%s", client[0], scope["method"], scope["path"],
                               status, (time.perf_counter() - started) * 1000, state.get("model", "-"),
                               state.get("version", "-"))


def log_exchange(model: str, version: str, messages: list[dict[str, str]], answers: list[str]) -> None:
    """The full prompt sent upstream and the answers (only called with ``--log-prompts``)."""
    prompt_logger.info("model=%s version=%s prompt=%r answers=%r", model, version, messages, answers)
