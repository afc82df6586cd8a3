"""OpenAI-style API errors, and the mapping of upstream (litellm) failures to HTTP statuses with retry hints."""

from __future__ import annotations

import math
from typing import Any

from drpo_dspy.runs.secrets import Redactor


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def unknown_model(name: Any, served: list[str]) -> APIError:
    return APIError(404, f"The model {name!r} does not exist on this server; served models: {', '.join(served)}.",
                    param="model", code="model_not_found")


def missing_key() -> APIError:
    return APIError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>' with a key this server "
                    "accepts.", type="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} bytes.",
                    code="request_too_large")


# litellm exception class name -> (HTTP status, error type, default Retry-After seconds or None)
_UPSTREAM_STATUS: dict[str, tuple[int, str, float | None]] = {
    "Timeout": (504, "upstream_timeout", 1.0),
    "TimeoutError": (504, "upstream_timeout", 1.0),  # the server's own deadline (asyncio.wait_for)
    "RateLimitError": (503, "upstream_rate_limited", 1.0),
    "ServiceUnavailableError": (503, "upstream_unavailable", 1.0),
    "APIConnectionError": (502, "upstream_unreachable", 1.0),
    "InternalServerError": (502, "upstream_error", 1.0),
    "BadGatewayError": (502, "upstream_error", 1.0),
    "AuthenticationError": (502, "upstream_auth_error", None),
    "PermissionDeniedError": (502, "upstream_auth_error", None),
    "NotFoundError": (502, "upstream_model_not_found", None),
}


def _retry_after(exc: BaseException) -> float | None:
    """The upstream's own Retry-After hint (seconds), when its response carried one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _class_names(exc: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(exc).__mro__]


def upstream_error(exc: BaseException, redactor: Redactor) -> APIError:
    """The API error for a failed base-model call: the client's fault -> 400, the upstream's -> 502/503/504.

    The message names the failure class and carries the upstream's words with every known secret masked.
    """
    names = _class_names(exc)
    detail = redactor.text(str(exc))[:500] or "no answer within the server's timeout"
    if "ContextWindowExceededError" in names:
        return bad_request(f"The conversation is too long for the base model: {detail}", param="messages",
                           code="context_length_exceeded")
    for name in names:
        if name in _UPSTREAM_STATUS:
            status, kind, default_wait = _UPSTREAM_STATUS[name]
            break
    else:
        if "BadRequestError" in names:
            return APIError(400, f"The base model rejected the request: {detail}", code="upstream_bad_request")
        status, kind, default_wait = 502, "upstream_error", 1.0
    headers = {}
    wait = _retry_after(exc)
    wait = default_wait if wait is None else wait
    if wait is not None:
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return APIError(status, f"The base model failed ({type(exc).__name__}): {detail}", type=kind, code=kind,
                    headers=headers)
