"""Telling systemic failures from transient ones, and stopping a run at once on the systemic kind.

A *transient* failure (a timeout, a 429, a 5xx, a reset connection, one unreadable output) is retried by DSPy and
litellm, then counted and survived. A *systemic* one cannot get better by trying again: a wrong key (401), no
permission (403), an unknown model (404), a malformed request (400), a missing package, an embedder that cannot
load. One systemic error, or a role whose errors pass ``max_errors``, or a role that has never produced a readable
output after ``max_errors + 1`` tries, trips the policy: the call that saw it raises :class:`SystemicFailure`, and
every later call of the run is refused before it is sent (``Budget.spend`` checks the policy), so no more money is
spent on a run that cannot produce a reward.

A role served by a replica pool (``clients/replica_pool.py``) fails over instead: one replica's connection error,
timeout or 5xx is retried on another replica inside litellm's Router and never reaches this policy. Only an error
after every replica has failed (``ReplicaPoolExhausted``, found anywhere in the exception's chain, as DSPy and litellm
wrap it) is systemic here ("every replica failed"); a 401/404 that every replica returns is systemic as it is for
one server.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

from drpo_dspy.primitives.checks import is_whole

DEFAULT_MAX_ERRORS = 10

_SYSTEMIC_STATUS = {400: "bad request", 401: "authentication failed", 402: "billing or quota exhausted",
                    403: "permission denied", 404: "model or endpoint not found",
                    422: "request rejected as unprocessable"}
# Exception classes (DSPy's LM errors and litellm's), most specific first; matched by name along the class's MRO.
_SYSTEMIC_CLASSES = (
    (("ContextWindowExceededError", "ContentPolicyViolationError"), None),  # tied to one input: counted
    (("LMAuthError", "AuthenticationError"), "authentication failed"),
    (("LMBillingError", "BudgetExceededError"), "billing or quota exhausted"),
    (("PermissionDeniedError",), "permission denied"),
    (("LMUnsupportedModelError", "NotFoundError"), "model or endpoint not found"),
    (("LMNotConfiguredError", "LMConfigurationError"), "not configured"),
    (("LMUnsupportedFeatureError",), "bad request"),
)
_HINTS = {
    "authentication failed": "check the API key of this role's model (environment variable or api_key=).",
    "permission denied": "check that the key may use this model.",
    "model or endpoint not found": "check the model name (provider/model) and api_base of this role.",
    "bad request": "check the model name, api_base and the decoding settings this model accepts.",
    "request rejected as unprocessable": "check the decoding settings this model accepts.",
    "billing or quota exhausted": "check the account's billing and quota for this provider.",
    "not configured": "check the provider settings of this role's LM (model string, api_base, key).",
    "missing package": "install the missing package (the message names the pip command).",
    "embedder could not load": "install the embedder's package or pass a local model directory.",
    "every replica failed": "every replica of this role's pool refused connections, timed out or failed (summary.json "
                            "lists each replica's failures); bring at least one back, then resume.",
    "too many errors": "the provider failed repeatedly; check that the server is up and reachable, then resume.",
    "no readable output": "this model never produced output DRPO could read; use a stronger model for this role.",
}


class SystemicFailure(RuntimeError):
    """A role cannot work: the run stopped before spending more. ``role``, ``model`` and ``first_error`` say why."""

    def __init__(self, role: str, model: str, reason: str, first_error: str, calls: int):
        self.role, self.model, self.reason, self.first_error, self.calls = role, model, reason, first_error, calls
        hint = _HINTS.get(reason, "")
        when = "before any call" if calls == 0 else f"after {calls} call(s)"
        super().__init__(
            f"the {role} role ({model}) cannot work: {reason} {when}. First error: {first_error}. "
            f"What to try: {hint} Finished levels are kept in the run directory; fix the cause and resume."
        )


def _status_of(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
        for name in ("status_code", "status"):
            status = getattr(obj, name, None)
            if isinstance(status, int):
                return status
    return None


def _in_chain(exc: BaseException, class_name: str) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is of a class named ``class_name``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ == class_name for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


def systemic_reason(exc: BaseException) -> str | None:
    """Why ``exc`` cannot be fixed by retrying (``"authentication failed"``, ...), or None when it may be transient."""
    if isinstance(exc, ImportError):
        return "missing package"
    if _in_chain(exc, "ReplicaPoolExhausted"):
        return "every replica failed"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "EmbedderLoadError" in names:
        return "embedder could not load"
    per_input, *classes = _SYSTEMIC_CLASSES
    if names.intersection(per_input[0]):
        return None
    status = _status_of(exc)
    if status in (401, 402, 403, 404):  # the status is more precise than the class DSPy maps it to
        return _SYSTEMIC_STATUS[status]
    for class_names, reason in classes:
        if names.intersection(class_names):
            return reason
    return _SYSTEMIC_STATUS.get(status)  # e.g. DSPy's LMInvalidRequestError(status=400)


class FailurePolicy:
    """Per-role error counts for one run; trips on the first systemic error or past ``max_errors``."""

    def __init__(self, max_errors: int | None = DEFAULT_MAX_ERRORS, redact: Any = None):
        if max_errors is not None and (not is_whole(max_errors)
                                       or max_errors < 0):
            raise ValueError(f"max_errors must be a non-negative integer or None, got {max_errors!r}")
        self.max_errors = max_errors
        self._redact = redact or (lambda text: text)
        self._lock = threading.Lock()
        self.errors: Counter[str] = Counter()
        self.unreadable: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.models: dict[str, str] = {}
        self._first: dict[str, str] = {}
        self.tripped: SystemicFailure | None = None

    def set_redactor(self, redact: Any) -> None:
        self._redact = redact

    def describe(self, role: str, model: str) -> None:
        self.models[role] = model

    def _trip(self, role: str, reason: str) -> SystemicFailure:
        calls = self.errors[role] + self.unreadable[role] + self.successes[role]
        failure = SystemicFailure(role, self.models.get(role, "unknown model"), reason,
                                  self._first.get(role, "(none recorded)"), calls)
        if self.tripped is None:
            self.tripped = failure
        return failure

    def record_error(self, role: str, exc: BaseException) -> None:
        """Count an exception from a role's call; raise :class:`SystemicFailure` when the run must stop."""
        text = f"{type(exc).__name__}: {self._redact(str(exc))[:300]}"
        with self._lock:
            self.errors[role] += 1
            self._first.setdefault(role, text)
            reason = systemic_reason(exc)
            if reason is None and self.max_errors is not None and self.errors[role] > self.max_errors:
                reason = "too many errors"
            if reason is not None:
                raise self._trip(role, reason)

    def record_unreadable(self, role: str, kind: str) -> None:
        """Count an output that could not be read; a role that never produced a readable one stops the run."""
        with self._lock:
            self.unreadable[role] += 1
            self._first.setdefault(role, f"unreadable output ({kind})")
            if (self.max_errors is not None and not self.successes[role]
                    and self.unreadable[role] + self.errors[role] > self.max_errors):
                raise self._trip(role, "no readable output")

    def no_reward_failure(self) -> SystemicFailure:
        """The failure to report when a run ends with no reward read: blamed on the base model if it never
        answered, else on the judge."""
        with self._lock:
            role = "base" if self.errors["base"] and not self.successes["base"] else "judge"
            self._first.setdefault(role, "no judgment on the kept paths could be read")
            reason = "too many errors" if role == "base" else "no readable output"
            return self._trip(role, reason)

    def record_success(self, role: str) -> None:
        with self._lock:
            self.successes[role] += 1

    def raise_if_tripped(self) -> None:
        """Refuse a new call once the run has a systemic failure (a fresh exception per caller and thread)."""
        t = self.tripped
        if t is not None:
            raise SystemicFailure(t.role, t.model, t.reason, t.first_error, t.calls)


# -- naming what went wrong ----------------------------------------------------------------------------------------
_REFUSAL = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I (?:cannot|can ?not|can't|won't|will not|must decline to|"
    r"am unable to|'m unable to|am not able to|'m not able to)\b)", re.I)
_SCORE_RANGE = re.compile(r"\bscore\s+Input should be (?:less|greater) than or equal to")
_SCORE_TYPE = re.compile(r"\bscore\s+(?:Value error, )?Input should be a valid (?:integer|number)")


def looks_like_refusal(text: str | None) -> bool:
    """Whether an unreadable completion is a prose refusal ("I'm sorry, I can't grade this") rather than noise."""
    text = (text or "").strip()
    return bool(text) and text[0] not in "{[" and bool(_REFUSAL.search(text[:300]))


def failure_kind(exc: BaseException) -> str:
    """The failure-count key of an exception from a typed LM call: ``lm_error:<class>`` for a provider error; for
    unreadable output ``score_out_of_range`` ("6", "0"), ``score_not_an_integer`` ("4/5", 4.5), ``refusal`` (a prose
    refusal to answer in the format) or ``parse_failure``."""
    from dspy.utils.exceptions import AdapterParseError

    if isinstance(exc, AdapterParseError):
        message = str(exc)
        if _SCORE_RANGE.search(message):
            return "score_out_of_range"
        if _SCORE_TYPE.search(message):
            return "score_not_an_integer"
        if looks_like_refusal(getattr(exc, "lm_response", None)):
            return "refusal"
        return "parse_failure"
    return f"lm_error:{type(exc).__name__}"
