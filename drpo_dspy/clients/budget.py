"""Hard budgets on LM calls, tokens and dollars, checked before every call; and graceful stop requests.

Every role call first reserves its worst case: the LM requests it may make (a chat-adapter call may be
retried once in JSON mode, so two) and the tokens it may use (the role's ``max_tokens`` plus the prompt
estimate). A call whose reservation would take the run over a budget is refused with ``BudgetExhausted``
before it is sent; the search then stops and returns the best program of the last finished level.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drpo_dspy.clients.metering import Meter, price_per_token
from drpo_dspy.primitives.checks import is_real


class BudgetExhausted(RuntimeError):
    """Raised before a call that could take the run over one of its budgets."""


class StopRequested(BudgetExhausted):
    """Raised before a call when a stop was requested (STOP file, Ctrl-C, ``StopSignal.request``)."""


@dataclass
class Reservation:
    calls: int
    tokens: int
    cost: float


class Budget:
    """Limits across all roles; ``None`` means unlimited."""

    def __init__(self, meter: Meter, *, max_calls: int | None = None, max_total_tokens: int | None = None,
                 max_cost_usd: float | None = None, stop: StopSignal | None = None):
        for name, value in (("max_calls", max_calls), ("max_total_tokens", max_total_tokens),
                            ("max_cost_usd", max_cost_usd)):
            if value is not None and (not is_real(value)
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        self.meter = meter
        self.max_calls, self.max_total_tokens, self.max_cost_usd = max_calls, max_total_tokens, max_cost_usd
        self.stop = stop
        self._lock = threading.Lock()
        self._reserved = Reservation(0, 0, 0.0)
        self.exhausted: str | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_calls, self.max_total_tokens, self.max_cost_usd))

    @property
    def limits(self) -> dict[str, Any]:
        return {"max_calls": self.max_calls, "max_total_tokens": self.max_total_tokens,
                "max_cost_usd": self.max_cost_usd}

    @contextmanager
    def spend(self, lm: Any, *, requests: int = 1, prompt_chars: int = 0):
        """Reserve the worst case of one role call for the duration of the call.

        Refused before anything is sent when the run has a systemic failure (``SystemicFailure``), when a stop was
        requested (``StopRequested``) or when the call could exceed a budget (``BudgetExhausted``).
        """
        self.meter.policy.raise_if_tripped()
        reason = self.stop() if self.stop is not None else None
        if reason:
            self.exhausted = self.exhausted or reason
            raise StopRequested(reason)
        if not self.limited:
            yield
            return
        completion = int((getattr(lm, "kwargs", {}) or {}).get("max_tokens") or 1024)
        tokens = requests * (completion + prompt_chars // 3 + 256)
        in_price, out_price = price_per_token(getattr(lm, "model", ""))
        cost = requests * ((prompt_chars // 3 + 256) * in_price + completion * out_price)
        reservation = Reservation(requests, tokens, cost)
        with self._lock:
            reason = self._refusal(reservation)
            if reason:
                self.exhausted = self.exhausted or reason
                raise BudgetExhausted(reason)
            self._add(reservation, +1)
        try:
            yield
        finally:
            with self._lock:
                self._add(reservation, -1)

    def _add(self, r: Reservation, sign: int) -> None:
        self._reserved = Reservation(self._reserved.calls + sign * r.calls, self._reserved.tokens + sign * r.tokens,
                                     self._reserved.cost + sign * r.cost)

    def _refusal(self, r: Reservation) -> str | None:
        if self.max_calls is not None and self.meter.total_requests() + self._reserved.calls + r.calls > self.max_calls:
            return f"the call budget (max_calls={self.max_calls}) is reached"
        tokens = self.meter.total_tokens() + self._reserved.tokens + r.tokens
        if self.max_total_tokens is not None and tokens > self.max_total_tokens:
            return f"the token budget (max_total_tokens={self.max_total_tokens}) is reached"
        if self.max_cost_usd is not None and (
                self.meter.total_cost() + self._reserved.cost + r.cost > self.max_cost_usd):
            return f"the cost budget (max_cost_usd={self.max_cost_usd}) is reached"
        return None


class StopSignal:
    """A stop request: a ``STOP`` file in the run directory or another stop file, Ctrl-C, or ``request()``."""

    def __init__(self, stop_file: Path | None = None, *more: Path | None):
        self.stop_file = stop_file
        self.stop_files = [f for f in (stop_file, *more) if f is not None]
        self._reason: str | None = None

    def request(self, reason: str) -> None:
        self._reason = self._reason or reason

    def __call__(self) -> str | None:
        if self._reason is None:
            found = next((f for f in self.stop_files if f.exists()), None)
            if found is not None:
                self._reason = f"stop file {found} found"
        return self._reason


def guarded(budget: Budget | None, lm: Any, prompt_chars: int, *, requests: int | None = None):
    """``budget.spend`` for one typed role call (two requests when a JSON retry is possible), or a no-op."""
    if budget is None:
        from contextlib import nullcontext

        return nullcontext()
    if requests is None:
        from drpo_dspy.adapters.typed_calls import requests_per_call

        requests = requests_per_call(lm)
    return budget.spend(lm, requests=requests, prompt_chars=prompt_chars)
