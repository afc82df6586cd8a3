"""A pool of inference replicas behind one role: one ``dspy.LM`` whose calls litellm's ``Router`` spreads over
several servers (or provider deployments) of the same model.

``replica_pool_lm(replicas, model=..., label=...)`` returns ``dspy.LM("drpo_pool/<label>/<model>")``, so DSPy's
cache, history and callbacks, and DRPO's meter and budget, still see one LM per role. The ``drpo_pool`` provider
hands each call to the pool's Router; every Router deployment is a ``drpo_replica/<pool>#<i>`` model whose provider
calls that replica's real model through litellm and records the outcome: which replica answered, its tokens, its
failures, per role (:func:`attribute_calls`, set by the meter).

Failover, not failure: a replica that refuses connections, times out or answers 5xx is reported to the Router as
unavailable (:class:`ReplicaUnavailable`, a 503: litellm never cools down its own ``APIConnectionError``), so the
Router takes it out of rotation for ``cooldown_time`` seconds (after ``allowed_fails`` failures) and retries the
call on another replica. Retries across replicas happen inside the Router only: the pool LM has ``num_retries=0``
(DSPy does not retry a pool's answer) and each replica call has ``max_retries=0``. When every replica has failed,
the call raises :class:`ReplicaPoolExhausted`, a systemic failure (``clients/failures.py``); when every replica
rejects the key or the model, that rejection is raised itself (401/404: systemic, as for one server).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dspy
import litellm
from litellm import CustomLLM, ModelResponse

from drpo_dspy.clients.providers import register_custom_provider

POOL_PROVIDER = "drpo_pool"
REPLICA_PROVIDER = "drpo_replica"
GROUP = "replicas"  # the Router's one model group
PER_REPLICA_THREADS = 4  # concurrent calls per replica a derived --num-threads allows for
MAX_DERIVED_THREADS = 64
DEFAULT_ROUTER_SETTINGS: dict[str, Any] = {"routing_strategy": "least-busy", "allowed_fails": 0, "cooldown_time": 30.0}
ROUTING_KEYS = ("rpm", "tpm", "weight", "order", "max_parallel_requests")  # per-deployment hints for the Router
UNAVAILABLE = ("unreachable", "timeout")  # a replica's failures the Router routes around
REJECTED = "rejected"  # 401/402/403/404: this replica refuses the key or does not serve the model

logger = logging.getLogger(__name__)
_POOLS: weakref.WeakValueDictionary[str, ReplicaPool] = weakref.WeakValueDictionary()  # alive while an LM uses it
_POOLS_LOCK = threading.Lock()
_ROLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("drpo_pool_role", default=None)


class ReplicaUnavailable(litellm.ServiceUnavailableError):
    """One replica could not answer (connection refused or reset, timeout, 5xx); the Router cools it down."""


class ReplicaPoolExhausted(litellm.ServiceUnavailableError):
    """Every replica of a pool failed: the role cannot work (systemic, see ``clients/failures.py``)."""

    def __init__(self, pool: str, last_errors: dict[str, tuple[str, str]]):
        self.pool, self.last_errors = pool, dict(last_errors)
        kinds = Counter(kind for kind, _ in last_errors.values())
        counted = ", ".join(f"{kind} {n}" for kind, n in kinds.items())
        listed = "; ".join(f"{name}: {error}" for name, (_, error) in last_errors.items())
        super().__init__(f"every replica of the pool {pool} failed ({len(last_errors)} replicas: {counted}): "
                         f"{listed}", llm_provider=POOL_PROVIDER, model=pool)


@dataclass(frozen=True)
class Replica:
    """One deployment: ``model`` is the litellm model it is called with (``drpo_text/...`` for a text model),
    ``params`` its connection settings (``api_base``, ``api_key``, ``timeout``...; never written anywhere),
    ``routing`` the Router's hints for it (``rpm``, ``weight``...)."""

    name: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReplicaCounts:
    """One replica's calls for one role: answered calls, their tokens, and failures by kind."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "failures": dict(self.failures)}


def public_url(url: Any) -> str | None:
    """An API base without credentials in it (``http://user:pw@host`` -> ``http://host``), for summaries."""
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def failure_kind(exc: BaseException) -> str:
    """What a replica's failure says about the replica: ``timeout``, ``unreachable`` (connection, 5xx),
    ``rate_limited`` (429), ``rejected`` (401-404) or ``request_error`` (the request's own fault: 400, context)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = getattr(exc, "status_code", None)
    if names & {"Timeout", "APITimeoutError", "TimeoutError", "ReadTimeout", "ConnectTimeout"}:
        return "timeout"
    if status == 429:
        return "rate_limited"
    if status in (401, 402, 403, 404):
        return REJECTED
    if names & {"APIConnectionError", "ConnectionError", "ConnectError", "TransportError"} or (
            isinstance(status, int) and status >= 500):
        return "unreachable"
    return "request_error"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("APIConnectionError", "connection error")[:200]  # litellm never cools that name down


def _rejection(error: BaseException | None, pool: str) -> Exception:
    """A fresh exception of the kind a replica's 401/402/403/404 was (classified as systemic by its status)."""
    status = getattr(error, "status_code", 404)
    kind = {401: litellm.AuthenticationError, 403: litellm.PermissionDeniedError}.get(status, litellm.NotFoundError)
    exc = kind(f"every replica of the pool {pool} rejected the call: {_short(error) if error else ''}",
               llm_provider=POOL_PROVIDER, model=pool)
    exc.status_code = status
    return exc


class ReplicaPool:
    """The replicas of one pool, its litellm ``Router`` and what each replica did, per role."""

    def __init__(self, name: str, model: str, replicas: Sequence[Replica], *, model_type: str = "chat",
                 router_settings: dict[str, Any] | None = None, source: str | None = None):
        if not replicas:
            raise ValueError(f"the pool {name} has no replica")
        self.name, self.model, self.model_type, self.source = name, model, model_type, source
        self.replicas = list(replicas)
        self.settings = {**DEFAULT_ROUTER_SETTINGS, "num_retries": len(self.replicas) + 1, **(router_settings or {})}
        self._lock = threading.Lock()
        self._counts: dict[tuple[str | None, int], ReplicaCounts] = {}
        self._last: list[str | None] = [None] * len(self.replicas)  # None: the replica's last call was answered
        self._last_error: list[BaseException | None] = [None] * len(self.replicas)
        self.router = self._make_router()

    def _make_router(self) -> Any:
        from litellm import Router

        model_list = [{"model_name": GROUP, "model_info": {"id": f"{self.name}#{i}"},
                       "litellm_params": {"model": f"{REPLICA_PROVIDER}/{self.name}#{i}", **replica.routing}}
                      for i, replica in enumerate(self.replicas)]
        try:
            router = Router(model_list=model_list, **self.settings)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the pool {self.name}: litellm's Router refused its settings {self.settings}: "
                             f"{exc}") from exc
        weakref.finalize(self, _retire, router)  # a Router registers global litellm callbacks: gone with the pool
        return router

    def signature(self) -> str:
        """What makes two pools the same (replicas, settings, source)."""
        return json.dumps([self.model, self.model_type, self.source, self.settings,
                           [(r.name, r.model, r.params, r.routing) for r in self.replicas]], sort_keys=True,
                          default=str)

    def __deepcopy__(self, memo: dict) -> ReplicaPool:
        return self  # shared by every copy of the pool's LM (a Router is not copied)

    # -- calls -------------------------------------------------------------------------------------------
    def complete(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> ModelResponse:
        """One call through the Router; an error the pool cannot get past is explained (see module docstring)."""
        request = {k: v for k, v in params.items() if k not in ("max_retries", "num_retries")}
        try:
            return self.router.completion(model=GROUP, messages=messages, **request)
        except Exception as exc:
            explained = self._explain(exc)
            if explained is exc:
                raise
            raise explained from exc

    def _explain(self, exc: Exception) -> Exception:
        with self._lock:
            last, errors = list(self._last), list(self._last_error)
        if all(kind in (*UNAVAILABLE, REJECTED) for kind in last) and any(kind in UNAVAILABLE for kind in last):
            return ReplicaPoolExhausted(self.name, {r.name: (kind, _short(error)) for r, kind, error in
                                                    zip(self.replicas, last, errors) if error is not None})
        if all(kind == REJECTED for kind in last) and getattr(exc, "status_code", None) == 429:
            return _rejection(errors[-1], self.name)  # every replica said no: that, not "no deployment available"
        if isinstance(exc, ValueError) and getattr(exc, "status_code", None) == 429:  # every replica cooling down
            return litellm.RateLimitError(f"every replica of the pool {self.name} is cooling down: {_short(exc)}",
                                          llm_provider=POOL_PROVIDER, model=self.name)
        return exc

    def call_replica(self, index: int, messages: list[dict[str, Any]], params: dict[str, Any],
                     timeout: Any = None) -> ModelResponse:
        """One attempt on one replica (the Router chose it), recorded for the calling role."""
        replica, role = self.replicas[index], _ROLE.get()
        request = {k: v for k, v in params.items() if k not in ("max_retries", "num_retries")}
        connection = {**replica.params}
        if timeout is not None and "timeout" not in connection:
            connection["timeout"] = timeout
        try:
            response = litellm.completion(model=replica.model, messages=messages, **connection, **request,
                                          num_retries=0, max_retries=0)
        except Exception as exc:
            kind = failure_kind(exc)
            self._record(role, index, kind, exc)
            if kind in UNAVAILABLE:
                raise ReplicaUnavailable(f"replica {replica.name} of the pool {self.name} is unavailable ({kind}): "
                                         f"{_short(exc)}", llm_provider=REPLICA_PROVIDER, model=replica.model) from exc
            raise
        usage = getattr(response, "usage", None)
        self._record(role, index, None, None, int(getattr(usage, "prompt_tokens", 0) or 0),
                     int(getattr(usage, "completion_tokens", 0) or 0))
        return response

    def _record(self, role: str | None, index: int, kind: str | None, exc: BaseException | None,
                prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            counts = self._counts.setdefault((role, index), ReplicaCounts())
            before = self._last[index]
            if kind is None:
                counts.calls += 1
                counts.prompt_tokens += prompt_tokens
                counts.completion_tokens += completion_tokens
            else:
                counts.failures[kind] += 1
            if kind != "request_error":  # a request's own fault says nothing about the replica
                self._last[index], self._last_error[index] = kind, exc
        name = self.replicas[index].name
        if kind is not None and kind != "request_error" and before is None:
            logger.warning("pool %s: replica %s out of rotation for %ss (%s: %s)", self.name, name,
                           self.settings.get("cooldown_time"), kind, _short(exc) if exc else "")
        elif kind is None and before is not None:
            logger.warning("pool %s: replica %s answers again", self.name, name)

    # -- reporting ---------------------------------------------------------------------------------------
    def stats(self, role: str | None = None) -> dict[str, dict[str, Any]]:
        """Per replica (by name): answered calls, tokens and failures of ``role`` (``None``: every caller)."""
        with self._lock:
            rows = {r.name: ReplicaCounts() for r in self.replicas}
            for (who, index), counts in self._counts.items():
                if role is None or who == role:
                    row = rows[self.replicas[index].name]
                    row.calls += counts.calls
                    row.prompt_tokens += counts.prompt_tokens
                    row.completion_tokens += counts.completion_tokens
                    row.failures.update(counts.failures)
        return {name: row.to_dict() for name, row in rows.items()}

    def healthy(self) -> list[str]:
        """The replicas whose last call was answered (or that were not called yet)."""
        with self._lock:
            return [r.name for r, kind in zip(self.replicas, self._last) if kind is None]

    def describe(self) -> dict[str, Any]:
        """A secret-free description (for config.json, and to rebuild the pool on resume)."""
        return {"model": self.model, "model_type": self.model_type, "router_file": self.source,
                "router_settings": {k: v for k, v in self.settings.items() if isinstance(v, str | int | float)},
                "replicas": [{"name": r.name, "model": r.model, "api_base": public_url(r.params.get("api_base"))}
                             for r in self.replicas]}

    def replica_settings(self) -> list[dict[str, Any]]:
        """Each replica's connection settings (the keys in them are given to the redactor, never written)."""
        return [dict(r.params) for r in self.replicas]


# -- the two litellm providers -----------------------------------------------------------------------------------
class _PoolLLM(CustomLLM):
    """``drpo_pool/<pool>``: the call goes to the pool's Router."""

    def completion(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,
                   **kwargs: Any) -> ModelResponse:
        params = dict(optional_params or {})
        if params.get("stream"):
            raise litellm.BadRequestError("streaming is not supported through a replica pool", model=model,
                                          llm_provider=POOL_PROVIDER)
        return registered_pool(model).complete(messages, params)

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)


class _ReplicaLLM(CustomLLM):
    """``drpo_replica/<pool>#<i>``: one attempt on replica ``i``."""

    def completion(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,
                   timeout: Any = None, **kwargs: Any) -> ModelResponse:
        name, _, index = model.rpartition("#")
        return registered_pool(name).call_replica(int(index), messages, dict(optional_params or {}), timeout)

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)


def registered_pool(name: str) -> ReplicaPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
    if pool is None:
        raise litellm.BadRequestError(f"no replica pool named {name} in this process (build it with "
                                      "replica_pool_lm first)", model=name, llm_provider=POOL_PROVIDER)
    return pool


def replica_pool_lm(replicas: Sequence[Replica], *, model: str, label: str = "pool", model_type: str = "chat",
                    router_settings: dict[str, Any] | None = None, source: str | None = None, cache: bool = True,
                    **lm_kwargs: Any) -> dspy.LM:
    """A ``dspy.LM`` (model ``drpo_pool/<label>/<model>``) that spreads its calls over ``replicas``.

    ``model`` is the replicas' model (prices and reports use it); ``model_type`` theirs (a ``"text"`` pool is
    already routed through ``drpo_text``, so the returned LM is a chat LM); ``lm_kwargs`` the sampling settings
    every call carries (temperature, max_tokens...). A pool built again with the same name and the same replicas
    and settings is reused; with different ones it replaces the old one.
    """
    register_custom_provider(POOL_PROVIDER, _PoolLLM)
    register_custom_provider(REPLICA_PROVIDER, _ReplicaLLM)
    if any(r.model.startswith("drpo_text/") for r in replicas):
        from drpo_dspy.clients.raw_text import register_raw_text_provider

        register_raw_text_provider()
    name = f"{label}/{model}"
    pool = ReplicaPool(name, model, replicas, model_type=model_type, router_settings=router_settings, source=source)
    with _POOLS_LOCK:
        existing = _POOLS.get(name)
        if existing is not None and existing.signature() == pool.signature():
            _retire(pool.router)
            pool = existing
        else:
            _POOLS[name] = pool
            if existing is not None:
                _retire(existing.router)  # replaced: calls by its name now reach the new pool
    lm = dspy.LM(f"{POOL_PROVIDER}/{name}", model_type="chat", engine="litellm", num_retries=0, cache=cache,
                 **lm_kwargs)
    lm.replica_pool = pool  # kept by lm.copy(); read by the meter, the redactor and describe_lm
    return lm


def _retire(router: Any) -> None:
    """Drop a Router's global litellm registrations (its callbacks); it can still answer."""
    try:
        router.retire()
    except Exception:  # an older litellm without retire(): the callbacks stay, harmlessly
        pass


def pool_of(lm: Any) -> ReplicaPool | None:
    """The pool behind a pool LM (or a copy of one), else None."""
    pool = getattr(lm, "replica_pool", None)
    if isinstance(pool, ReplicaPool):
        return pool
    model = str(getattr(lm, "model", lm) or "")
    if model.startswith(f"{POOL_PROVIDER}/"):
        with _POOLS_LOCK:
            return _POOLS.get(model.removeprefix(f"{POOL_PROVIDER}/"))
    return None


def pool_size(lm: Any) -> int:
    """How many replicas serve ``lm`` (1 for a plain LM)."""
    pool = pool_of(lm)
    return len(pool.replicas) if pool is not None else 1


def derived_num_threads(lms: Sequence[Any], floor: int) -> int:
    """A default ``num_threads`` that keeps every replica busy: ``floor`` (the command's own default), or
    ``PER_REPLICA_THREADS`` per replica of the largest pool among ``lms``, at most ``MAX_DERIVED_THREADS``."""
    largest = max((pool_size(lm) for lm in lms if lm is not None), default=1)
    if largest <= 1:
        return floor
    return max(floor, min(MAX_DERIVED_THREADS, PER_REPLICA_THREADS * largest))


def attribute_calls(role: str | None) -> contextvars.Token:
    """Count the replica calls made from here on in this context under ``role`` (the meter sets it per call)."""
    return _ROLE.set(role)


def end_attribution(token: contextvars.Token) -> None:
    try:
        _ROLE.reset(token)
    except ValueError:  # reset from another context: the next call sets its own role anyway
        pass
