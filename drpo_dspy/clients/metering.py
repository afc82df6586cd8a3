"""Per-role accounting of LM calls, tokens, cache hits and failures, safe across threads.

DSPy's usage tracker does not roll up across ``dspy.Parallel`` workers, so DRPO counts every call it
makes itself: a callback on each role's LM counts requests as they start, and a usage tracker scoped to
each call attributes its tokens. A role served by a replica pool (``clients/replica_pool.py``) is still one LM
here; the same callback tells the pool which role calls, and the summary adds each replica's calls, tokens and
failures under the role's ``replicas``.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from drpo_dspy.clients.failures import FailurePolicy, failure_kind
from drpo_dspy.clients.replica_pool import ReplicaPool, attribute_calls, end_attribution, pool_of

ROLES = ("base", "metrics", "judge", "optimizer")


class _CallCounter(BaseCallback):
    def __init__(self, meter: Meter, role: str):
        self.meter, self.role = meter, role
        self._attributions: dict[str, Any] = {}

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.meter.count_request(self.role)
        self._attributions[call_id] = attribute_calls(self.role)  # a pool's replicas count the call for this role

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        token = self._attributions.pop(call_id, None)
        if token is not None:
            end_attribution(token)


class Meter:
    """Counts requests, tokens and failures per role; its ``policy`` decides when failures must stop the run."""

    def __init__(self, policy: FailurePolicy | None = None) -> None:
        self.policy = policy or FailurePolicy()
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.prompt_tokens: Counter[str] = Counter()
        self.completion_tokens: Counter[str] = Counter()
        self.cost_usd: defaultdict[str, float] = defaultdict(float)
        self.failures: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.pools: dict[str, ReplicaPool] = {}
        self._saved_replicas: dict[str, dict[str, Any]] = {}  # per-replica counts of the run being resumed

    def watch(self, lm: dspy.LM, role: str) -> dspy.LM:
        """A copy of ``lm`` whose requests are counted under ``role`` (the original is untouched)."""
        copied = lm.copy()
        copied.callbacks = [*(getattr(lm, "callbacks", None) or []), _CallCounter(self, role)]
        copied.history = lm.history  # the calls stay visible in the user's own lm.history / inspect_history()
        self.policy.describe(role, str(getattr(lm, "model", type(lm).__name__)))
        pool = pool_of(lm)
        if pool is not None:
            self.pools[role] = pool
        return copied

    def replicas(self, role: str) -> dict[str, Any] | None:
        """Per replica of ``role``'s pool: calls, tokens and failures (with a resumed run's), or None."""
        pool, saved = self.pools.get(role), self._saved_replicas.get(role, {})
        if pool is None and not saved:
            return None
        rows = {name: dict(row) for name, row in saved.items()}
        for name, row in (pool.stats(role) if pool is not None else {}).items():
            old = rows.get(name, {})
            failures = Counter(old.get("failures", {}))
            failures.update(row["failures"])
            rows[name] = {key: int(old.get(key, 0)) + row[key] for key in ("calls", "prompt_tokens",
                                                                          "completion_tokens")}
            rows[name]["failures"] = dict(failures)
        models = {r.name: r.model.removeprefix("drpo_text/") for r in (pool.replicas if pool is not None else [])}
        for name, row in rows.items():
            model = models.get(name)
            cost = _price(model, row["prompt_tokens"], row["completion_tokens"]) if model else row.get("cost_usd", 0)
            row["cost_usd"] = round(float(cost or 0.0), 6)
        return rows

    def count_request(self, role: str) -> None:
        with self._lock:
            self.requests[role] += 1

    def record_failure(self, role: str, kind: str) -> None:
        with self._lock:
            self.failures[role][kind] += 1

    def record_error(self, role: str, exc: BaseException, kind: str | None = None) -> None:
        """Count an exception from a role's call; raises ``SystemicFailure`` when the run must stop."""
        self.record_failure(role, kind or f"lm_error:{type(exc).__name__}")
        self.policy.record_error(role, exc)

    def record_call_failure(self, role: str, exc: BaseException, *, unreadable: bool = False) -> str:
        """Count a failed typed call by its kind and return the kind: a provider error goes to the failure policy
        (it may raise ``SystemicFailure``); unreadable output is counted, and with ``unreadable=True`` (the judge)
        a role that never produced readable output also stops the run."""
        kind = failure_kind(exc)
        if kind.startswith("lm_error:"):
            self.record_error(role, exc, kind)
        elif unreadable:
            self.record_unreadable(role, kind)
        else:
            self.record_failure(role, kind)
        return kind

    def record_unreadable(self, role: str, kind: str) -> None:
        """Count an output that could not be read; raises ``SystemicFailure`` if the role never produced one."""
        self.record_failure(role, kind)
        self.policy.record_unreadable(role, kind)

    def record_success(self, role: str) -> None:
        self.policy.record_success(role)

    @contextmanager
    def usage(self, role: str):
        """Attribute the tokens of the calls made inside this block to ``role``."""
        with dspy.track_usage() as tracker:
            try:
                yield
            finally:
                totals = tracker.get_total_tokens()
                self._add_usage(role, totals)

    def _add_usage(self, role: str, totals: dict[str, Any]) -> None:
        with self._lock:
            for model, usage in totals.items():
                prompt = int(usage.get("prompt_tokens") or 0)
                completion = int(usage.get("completion_tokens") or 0)
                self.prompt_tokens[role] += prompt
                self.completion_tokens[role] += completion
                self.cost_usd[role] += _price(model, prompt, completion)

    def total_tokens(self) -> int:
        with self._lock:
            return sum(self.prompt_tokens.values()) + sum(self.completion_tokens.values())

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def total_cost(self) -> float:
        with self._lock:
            return sum(self.cost_usd.values())

    def summary(self) -> dict[str, Any]:
        """Plain-JSON summary per role."""
        with self._lock:
            roles = sorted(set(self.requests) | set(self.prompt_tokens) | set(self.failures), key=_role_order)
            summary = {
                role: {
                    "lm_calls": self.requests[role],
                    "prompt_tokens": self.prompt_tokens[role],
                    "completion_tokens": self.completion_tokens[role],
                    "cost_usd": round(self.cost_usd[role], 6),
                    "failures": dict(self.failures[role]),
                }
                for role in roles
            }
        for role, row in summary.items():
            replicas = self.replicas(role)
            if replicas is not None:
                row["replicas"] = replicas
        return summary

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue counting from a saved summary (used when resuming a run)."""
        with self._lock:
            for role, row in state.items():
                self.requests[role] = int(row.get("lm_calls", 0))
                self.prompt_tokens[role] = int(row.get("prompt_tokens", 0))
                self.completion_tokens[role] = int(row.get("completion_tokens", 0))
                self.cost_usd[role] = float(row.get("cost_usd", 0.0))
                self.failures[role] = Counter(row.get("failures", {}))
                if row.get("replicas"):
                    self._saved_replicas[role] = dict(row["replicas"])


def replica_usage_lines(usage: dict[str, Any]) -> list[str]:
    """One line per role with replicas in a meter's summary: each replica's answered calls and failures."""
    lines = []
    for role, row in usage.items():
        replicas = row.get("replicas") or {}
        if replicas:
            parts = [f"{name} {r['calls']}" + (f" ({', '.join(f'{k} {n}' for k, n in r['failures'].items())})"
                                              if r.get("failures") else "") for name, r in replicas.items()]
            lines.append(f"Calls per replica ({role}): " + ", ".join(parts))
    return lines


def _role_order(role: str) -> tuple[int, str]:
    return (ROLES.index(role) if role in ROLES else len(ROLES), role)


def _priced_model(model: str) -> str:
    """The model a price is looked up for: a pool's first replica's (``drpo_text/`` routes dropped)."""
    pool = pool_of(model) if model.startswith("drpo_pool/") else None
    if pool is not None:
        model = pool.replicas[0].model
    return model.removeprefix("drpo_text/")


def price_per_token(model: str) -> tuple[float, float]:
    """(input, output) dollars per token from litellm's offline price table; zeros for unpriced (local) models."""
    import litellm

    model = _priced_model(model)
    info = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1]) or {}
    return float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0)


def _price(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Dollar cost of a call's tokens."""
    if not prompt_tokens and not completion_tokens:
        return 0.0
    prompt_price, completion_price = price_per_token(model)
    return prompt_tokens * prompt_price + completion_tokens * completion_price


# Providers that serve models on the user's own machines: no price is expected for them (counted as free).
SELF_HOSTED_PROVIDERS = frozenset({"ollama", "ollama_chat", "hosted_vllm", "vllm", "lm_studio", "llamafile",
                                   "openai_like", "custom_openai", "xinference", "oobabooga", "triton"})
_FREE_PREFIXES = ("embedded/", "drpo_text/", "scripted/")


def _price_entry(model: str) -> dict[str, Any] | None:
    import litellm

    info = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1])
    if not isinstance(info, dict) or not ({"input_cost_per_token", "output_cost_per_token"} & info.keys()):
        return None
    return info


def price_known(lm_or_model: Any) -> bool:
    """Whether a model's cost can be estimated: litellm's offline price table lists it, or it is free by
    construction (the embedded model, scripted LMs, a self-hosted provider, any ``api_base`` server)."""
    model = lm_or_model if isinstance(lm_or_model, str) else str(getattr(lm_or_model, "model", "") or "")
    kwargs = {} if isinstance(lm_or_model, str) else (getattr(lm_or_model, "kwargs", None) or {})
    pool = pool_of(lm_or_model) if model.startswith("drpo_pool/") else None
    if pool is not None:  # priced as its replicas: each is free if it is a server of one's own
        return all(bool(price_known(r.model.removeprefix("drpo_text/")) or r.params.get("api_base")
                        or r.params.get("base_url")) for r in pool.replicas)
    if not model or model.startswith(_FREE_PREFIXES) or kwargs.get("api_base") or kwargs.get("base_url"):
        return True
    if _price_entry(model) is not None:
        return True
    try:
        import litellm

        provider = litellm.get_llm_provider(model)[1]
    except Exception:
        return False
    return provider in SELF_HOSTED_PROVIDERS


def unpriced_models(lms: Any) -> list[str]:
    """The model strings among ``lms`` (``dspy.LM``s or strings) whose cost an estimate cannot know, in order."""
    out: list[str] = []
    for lm in lms:
        model = lm if isinstance(lm, str) else str(getattr(lm, "model", "") or "")
        if model not in out and not price_known(lm):
            out.append(model)
    return out


def price_notes(lms: Any) -> list[str]:
    """One line per unpriced model (a typo such as ``openai/gpt-4o-typo`` would otherwise be priced at $0.00)."""
    return [f"no price known for {model}: cost not estimated (counted as $0.00 above; check the model name)"
            for model in unpriced_models(lms)]
