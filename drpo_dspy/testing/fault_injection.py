"""Fault injection: a litellm custom provider that fails on command, for tests of DRPO's reliability.

``faulty_lm(script, faults=...)`` returns a real ``dspy.LM`` (model ``faulty/<name>``) that answers like
:func:`drpo_dspy.testing.scripted_lm` (``script(messages, params)`` returns the completion text or a dict of output
fields) except where the fault plan says otherwise. A fault either *raises* the exception a real provider's failure
becomes in litellm, or *corrupts the content* of an otherwise normal completion::

    timeout()                        litellm.Timeout
    rate_limit(retry_after=0.01)     litellm.RateLimitError (HTTP 429), with or without a Retry-After header
    server_error(500 | 502 | 503)    litellm.InternalServerError / BadGatewayError / ServiceUnavailableError
    connection_reset()               litellm.APIConnectionError ("Connection reset by peer")
    auth_error()                     litellm.AuthenticationError (401), by default echoing the key it was sent
    context_window()                 litellm.ContextWindowExceededError
    not_found()                      litellm.NotFoundError (404: an unknown model)
    permission_denied()              litellm.PermissionDeniedError (403)
    bad_request()                    litellm.BadRequestError (400)
    empty(), truncated_json(), prose(), refusal(), bad_score("6"), text("...")   content faults

The plan (``faults=``) is a list (the i-th provider request gets the i-th entry, ``None`` = no fault), a
``{request index: fault}`` dict, or a function of the :class:`Attempt`. ``on_first_attempts(fault, n)`` fails the
first ``n`` tries of every distinct request, which is deterministic under concurrency and shows whether retries
happen. Each request is logged on the :class:`FaultInjector` (``injector_for(lm).log``).

DSPy owns retries (``dspy.LM(num_retries=...)``; transient errors only: rate limits, timeouts, 5xx, transport) and
sleeps ``Retry-After`` or ``2**attempt`` seconds between tries; :func:`fast_backoff` records those delays instead of
sleeping them, to keep tests fast.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dspy
from litellm import CustomLLM, ModelResponse

from drpo_dspy.clients.providers import register_custom_provider
from drpo_dspy.testing import Script, render_fields

PROVIDER = "faulty"

RAISING_KINDS = ("timeout", "rate_limit", "server_error", "connection_reset", "auth_error", "context_window",
                 "not_found", "permission_denied", "bad_request")
CONTENT_KINDS = ("empty", "truncated_json", "prose", "refusal", "bad_score", "text")

PROSE = ("Overall this is a reasonable answer. It covers the main points, though it could say more about the "
         "details, and the tone is fine. I would consider it decent work.")
REFUSAL = "I'm sorry, but I can't help with evaluating content like this. I won't grade answers about harmful acts."


@dataclass(frozen=True)
class Fault:
    """One injected fault. ``message`` may contain ``{api_key}``: the key the failing request carried."""

    kind: str
    status: int | None = None
    retry_after: float | None = None
    value: Any = None
    message: str = ""

    def __post_init__(self) -> None:
        if self.kind not in RAISING_KINDS + CONTENT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {RAISING_KINDS + CONTENT_KINDS}")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.status}" if self.status else self.kind


def timeout(message: str = "Request timed out after 600 seconds") -> Fault:
    return Fault("timeout", message=message)


def rate_limit(retry_after: float | None = None, message: str = "Rate limit reached for requests") -> Fault:
    return Fault("rate_limit", status=429, retry_after=retry_after, message=message)


def server_error(status: int = 500, retry_after: float | None = None, message: str = "") -> Fault:
    if status not in (500, 502, 503):
        raise ValueError(f"server_error status must be 500, 502 or 503, got {status}")
    return Fault("server_error", status=status, retry_after=retry_after, message=message or f"upstream error {status}")


def connection_reset(message: str = "Connection reset by peer") -> Fault:
    return Fault("connection_reset", message=message)


def auth_error(message: str = "Incorrect API key provided: {api_key}. Check your key.") -> Fault:
    return Fault("auth_error", status=401, message=message)


def context_window(message: str = "This model's maximum context length is 4096 tokens") -> Fault:
    return Fault("context_window", status=400, message=message)


def not_found(message: str = "The model `missing-model` does not exist or you do not have access to it.") -> Fault:
    return Fault("not_found", message=message)


def permission_denied(message: str = "You are not allowed to use this model.") -> Fault:
    return Fault("permission_denied", message=message)


def bad_request(message: str = "Unsupported parameter: 'temperature' is not supported with this model.") -> Fault:
    return Fault("bad_request", message=message)


def empty() -> Fault:
    return Fault("empty")


def truncated_json() -> Fault:
    return Fault("truncated_json")


def prose(text: str = PROSE) -> Fault:
    return Fault("prose", value=text)


def refusal(text: str = REFUSAL) -> Fault:
    return Fault("refusal", value=text)


def bad_score(value: Any) -> Fault:
    """Every ``score`` in the script's output replaced by ``value`` (``"6"``, ``0``, ``"4/5"``, ``"five"``...)."""
    return Fault("bad_score", value=value)


def text(value: str) -> Fault:
    return Fault("text", value=value)


@dataclass
class Attempt:
    """One provider request as the fault plan sees it."""

    index: int  # 0-based, over all requests to this LM (retries included)
    repeat: int  # how many identical requests came before this one (0 on the first try)
    messages: list[dict[str, Any]]
    params: dict[str, Any]

    @property
    def text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)


FaultPlan = Sequence["Fault | None"] | Mapping[int, Fault] | Callable[[Attempt], "Fault | None"] | None


def on_first_attempts(fault: Fault, n: int = 1) -> Callable[[Attempt], Fault | None]:
    """Fail the first ``n`` tries of every distinct request, then answer normally."""
    return lambda attempt: fault if attempt.repeat < n else None


def always(fault: Fault) -> Callable[[Attempt], Fault | None]:
    return lambda attempt: fault


def when(predicate: Callable[[str], bool], fault: Fault, *,
         times: int | None = None) -> Callable[[Attempt], Fault | None]:
    """``fault`` for requests whose text satisfies ``predicate`` (for their first ``times`` tries, if given)."""
    return lambda attempt: fault if predicate(attempt.text) and (times is None or attempt.repeat < times) else None


class FaultInjector:
    """The state behind one faulty LM: its script, plan and a log of every request."""

    def __init__(self, script: Script, faults: FaultPlan = None, name: str = ""):
        self.script, self.faults, self.name = script, faults, name
        self._lock = threading.Lock()
        self._index = itertools.count()
        self._seen: Counter[str] = Counter()
        self.log: list[tuple[int, str]] = []  # (request index, fault label or "ok")

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(label for _, label in self.log)

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.log)

    def _plan(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[Attempt, Fault | None]:
        key = hashlib.sha256(json.dumps([messages, {k: v for k, v in params.items() if k != "n_index"}],
                                        sort_keys=True, default=str).encode()).hexdigest()
        with self._lock:
            attempt = Attempt(next(self._index), self._seen[key], messages, params)
            self._seen[key] += 1
        plan = self.faults
        if plan is None:
            fault = None
        elif callable(plan):
            fault = plan(attempt)
        elif isinstance(plan, Mapping):
            fault = plan.get(attempt.index)
        else:
            fault = plan[attempt.index] if attempt.index < len(plan) else None
        with self._lock:
            self.log.append((attempt.index, fault.label if fault else "ok"))
        return attempt, fault

    def complete(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                 api_key: str | None) -> ModelResponse:
        _, fault = self._plan(messages, params)
        if fault is not None and fault.kind in RAISING_KINDS:
            raise _exception(fault, model, api_key)
        as_json = "response_format" in params
        texts = []
        for index in range(int(params.get("n") or 1)):
            out = self.script(messages, {**params, "n_index": index})
            texts.append(_corrupt(out, fault, as_json) if fault else _render(out, as_json))
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = sum(len(t.split()) for t in texts)
        return ModelResponse(
            model=model,
            choices=[{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                     for i, t in enumerate(texts)],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": prompt_tokens + completion_tokens},
        )


def _render(out: str | dict[str, Any], as_json: bool) -> str:
    return out if isinstance(out, str) else render_fields(out, as_json=as_json)


def _with_score(value: Any, score: Any) -> Any:
    if isinstance(value, dict):
        return {k: (score if k == "score" else _with_score(v, score)) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_score(v, score) for v in value]
    return value


def _corrupt(out: str | dict[str, Any], fault: Fault, as_json: bool) -> str:
    if fault.kind == "empty":
        return ""
    if fault.kind in ("prose", "refusal", "text"):
        return str(fault.value)
    if fault.kind == "bad_score":
        return _render(_with_score(out, fault.value) if isinstance(out, dict) else out, as_json)
    full = _render(out, True)  # truncated_json: the JSON form, cut in the middle (as a max_tokens cut would)
    return full[: max(1, len(full) // 2)]


def _exception(fault: Fault, model: str, api_key: str | None) -> Exception:
    import httpx
    import litellm

    message = fault.message.replace("{api_key}", api_key or "(no key)")
    request = httpx.Request("POST", "https://faulty.invalid/v1/chat/completions")
    headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}

    def response(status: int) -> httpx.Response:
        return httpx.Response(status, headers=headers, request=request)

    if fault.kind == "timeout":
        return litellm.Timeout(message, model=model, llm_provider=PROVIDER)
    if fault.kind == "rate_limit":
        return litellm.RateLimitError(message, llm_provider=PROVIDER, model=model, response=response(429))
    if fault.kind == "server_error":
        cls = {500: litellm.InternalServerError, 502: litellm.BadGatewayError,
               503: litellm.ServiceUnavailableError}[fault.status or 500]
        return cls(message, llm_provider=PROVIDER, model=model, response=response(fault.status or 500))
    if fault.kind == "connection_reset":
        return litellm.APIConnectionError(message, llm_provider=PROVIDER, model=model, request=request)
    if fault.kind == "auth_error":
        return litellm.AuthenticationError(message, llm_provider=PROVIDER, model=model, response=response(401))
    if fault.kind == "not_found":
        return litellm.NotFoundError(message, model=model, llm_provider=PROVIDER, response=response(404))
    if fault.kind == "permission_denied":
        return litellm.PermissionDeniedError(message, model=model, llm_provider=PROVIDER, response=response(403))
    if fault.kind == "bad_request":
        return litellm.BadRequestError(message, model=model, llm_provider=PROVIDER, response=response(400))
    return litellm.ContextWindowExceededError(message, model=model, llm_provider=PROVIDER, response=response(400))


_INJECTORS: dict[str, FaultInjector] = {}
_COUNTER = itertools.count()


class _FaultyHandler(CustomLLM):
    """litellm handler for ``faulty/<name>``: each request goes to the named injector."""

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        name = model.split("/", 1)[-1]
        injector = _INJECTORS.get(name)
        if injector is None:
            raise ValueError(f"no fault injector registered for {PROVIDER}/{name}")
        params = dict(kwargs.get("optional_params") or {})
        return injector.complete(f"{PROVIDER}/{name}", messages, params, kwargs.get("api_key"))

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        import asyncio

        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)


def faulty_lm(script: Script, *, faults: FaultPlan = None, name: str | None = None, num_retries: int = 3,
              **lm_kwargs: Any) -> dspy.LM:
    """A ``dspy.LM`` answered by ``script`` except where ``faults`` injects a failure; uncached by default.

    ``num_retries`` is DSPy's (3, as for ``dspy.LM``), so transient faults are retried as in production.
    """
    register_custom_provider(PROVIDER, _FaultyHandler)
    name = name or f"faulty-{next(_COUNTER)}"
    _INJECTORS[name] = FaultInjector(script, faults, name)
    lm_kwargs.setdefault("cache", False)
    return dspy.LM(f"{PROVIDER}/{name}", engine="litellm", num_retries=num_retries, **lm_kwargs)


def injector_for(lm: Any) -> FaultInjector:
    """The injector behind a faulty LM (or a copy of one)."""
    return _INJECTORS[str(lm.model).split("/", 1)[-1]]


@contextmanager
def fast_backoff(scale: float = 0.0) -> Iterator[list[float]]:
    """Record the delays DSPy would sleep between retries (``Retry-After`` or exponential) and sleep
    ``scale`` times them instead. Yields the list of recorded delays."""
    from dspy.clients import execution

    delays: list[float] = []
    original = execution._delay

    def delay(exc: BaseException, attempt: int) -> float:
        seconds = original(exc, attempt)
        delays.append(seconds)
        return seconds * scale

    execution._delay = delay
    try:
        yield delays
    finally:
        execution._delay = original
