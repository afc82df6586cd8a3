"""Scripted replicas: copies of one scripted model at different addresses, which can be killed, slowed or made to
reject calls, for tests and benchmarks of replica pools (``drpo_dspy/clients/replica_pool.py``).

``replicas = ScriptedReplicas(script, n=2)``: ``replicas.lms`` are ``dspy.LM``s of one model
(``scripted_replica/<name>``), each with its own ``api_base`` (``http://replica-<i>.invalid/v1``), ready for
``DRPO(base_lm=replicas.lms)``; ``replicas.urls`` are those addresses, for ``--base-api-base`` lists and router files.
Each answers as :func:`drpo_dspy.testing.scripted_lm` does (``script(messages, params)``), after ``latency`` seconds.

``kill(i)`` makes replica ``i`` refuse connections as a stopped server does (litellm's ``InternalServerError``
"Connection refused"); ``kill(i, after=k)`` once it has answered ``k`` calls; ``kill(i, how="reset")`` raises
litellm's ``APIConnectionError``, ``how="timeout"`` its ``Timeout``. ``revive(i)`` brings it back. ``reject("auth")``
or ``reject("model")`` makes every replica answer 401 or 404. ``answered`` counts answered calls per replica and
``refused`` the calls a dead replica turned away.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

import dspy
import httpx
import litellm
from litellm import CustomLLM, ModelResponse

from drpo_dspy.clients.providers import register_custom_provider
from drpo_dspy.testing.scripted import Script, render_fields

PROVIDER = "scripted_replica"
_GROUPS: dict[str, ScriptedReplicas] = {}
_COUNTER = itertools.count()


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://replica.invalid/v1/chat/completions"))


class ScriptedReplicas:
    """``n`` scripted replicas of one model; see the module docstring."""

    def __init__(self, script: Script, n: int = 2, *, latency: float = 0.0, name: str | None = None,
                 **lm_kwargs: Any):
        register_custom_provider(PROVIDER, _ReplicaHandler)
        self.script, self.latency = script, latency
        self.name = name or f"replicas-{next(_COUNTER)}"
        self.urls = [f"http://replica-{i}.invalid/v1" for i in range(n)]
        self._lock = threading.Lock()
        self.answered: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self._dead: dict[int, tuple[int, str]] = {}  # replica -> (answers before it dies, how)
        self._rejection: str | None = None
        _GROUPS[self.name] = self
        lm_kwargs.setdefault("cache", False)
        self.lm_kwargs = lm_kwargs
        self.lms = [dspy.LM(self.model, engine="litellm", num_retries=0, api_base=url, **lm_kwargs)
                    for url in self.urls]

    @property
    def model(self) -> str:
        return f"{PROVIDER}/{self.name}"

    def kill(self, index: int, *, after: int = 0, how: str = "refused") -> None:
        """Replica ``index`` stops answering once it has answered ``after`` calls (from now on counted)."""
        if how not in ("refused", "reset", "timeout"):
            raise ValueError(f"how must be refused, reset or timeout, got {how!r}")
        with self._lock:
            self._dead[index] = (self.answered[index] + after, how)

    def revive(self, index: int) -> None:
        with self._lock:
            self._dead.pop(index, None)

    def reject(self, kind: str | None) -> None:
        """Every replica answers 401 (``"auth"``) or 404 (``"model"``); ``None`` stops rejecting."""
        if kind not in (None, "auth", "model"):
            raise ValueError(f"kind must be 'auth', 'model' or None, got {kind!r}")
        self._rejection = kind

    def _fail(self, index: int) -> Exception | None:
        if self._rejection == "auth":
            return litellm.AuthenticationError("Incorrect API key provided", llm_provider=PROVIDER, model=self.model,
                                               response=_response(401))
        if self._rejection == "model":
            return litellm.NotFoundError(f"The model `{self.name}` does not exist", llm_provider=PROVIDER,
                                         model=self.model, response=_response(404))
        with self._lock:
            dead = self._dead.get(index)
            if dead is None or self.answered[index] < dead[0]:
                return None
            self.refused[index] += 1
        if dead[1] == "timeout":
            return litellm.Timeout("Request timed out", model=self.model, llm_provider=PROVIDER)
        if dead[1] == "reset":
            return litellm.APIConnectionError("Connection reset by peer", llm_provider=PROVIDER, model=self.model)
        return litellm.InternalServerError(f"{PROVIDER}Exception - [Errno 111] Connection refused",
                                           llm_provider=PROVIDER, model=self.model, response=_response(500))

    def complete(self, api_base: str | None, messages: list[dict[str, Any]], params: dict[str, Any]) -> ModelResponse:
        if api_base not in self.urls:
            raise litellm.InternalServerError(f"no replica at {api_base}: Connection refused", llm_provider=PROVIDER,
                                              model=self.model, response=_response(500))
        index = self.urls.index(api_base)
        failure = self._fail(index)
        if failure is not None:
            raise failure
        if self.latency:
            time.sleep(self.latency)
        texts = []
        for n_index in range(int(params.get("n") or 1)):
            out = self.script(messages, {**params, "n_index": n_index})
            texts.append(out if isinstance(out, str) else render_fields(out, as_json="response_format" in params))
        with self._lock:
            self.answered[index] += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = sum(len(text.split()) for text in texts)
        return ModelResponse(
            model=self.model,
            choices=[{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                     for i, text in enumerate(texts)],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": prompt_tokens + completion_tokens},
        )


class _ReplicaHandler(CustomLLM):
    """litellm handler for ``scripted_replica/<name>``: the replica is chosen by ``api_base``."""

    def completion(self, model: str, messages: list, *args: Any, api_base: str | None = None,
                   optional_params: dict | None = None, **kwargs: Any) -> ModelResponse:
        group = _GROUPS.get(model.split("/", 1)[-1])
        if group is None:
            raise ValueError(f"no scripted replicas registered for {PROVIDER}/{model}")
        params = {k: v for k, v in (optional_params or {}).items() if k not in ("max_retries", "num_retries")}
        return group.complete(api_base, messages, params)

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        import asyncio

        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)
