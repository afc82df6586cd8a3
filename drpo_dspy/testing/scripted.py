"""Scripted LMs for tests, examples and benchmarks: a litellm custom provider driven by Python functions.

``scripted_lm(fn)`` returns a real ``dspy.LM`` (model ``scripted/<name>``) whose every completion is
``fn(messages, params)``. The function returns the completion text, or a dict of output fields which is
rendered the way the calling DSPy adapter expects (JSON when a ``response_format`` was requested,
``[[ ## field ## ]]`` sections otherwise). An optional ``latency`` simulates a remote API.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import dspy
from litellm import CustomLLM, ModelResponse

from drpo_dspy.clients.providers import register_custom_provider

Script = Callable[[list[dict[str, Any]], dict[str, Any]], "str | dict[str, Any]"]

_SCRIPTS: dict[str, tuple[Script, float]] = {}
_COUNTER = itertools.count()


def render_fields(fields: dict[str, Any], *, as_json: bool) -> str:
    """Render output fields as JSON or in DSPy's chat-adapter section format."""
    if as_json:
        return json.dumps(fields)
    parts = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


class _ScriptedHandler(CustomLLM):
    """litellm handler for ``scripted/<name>``: every completion comes from the registered script."""

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        params = dict(kwargs.get("optional_params") or {})
        name = model.split("/", 1)[-1]
        if name not in _SCRIPTS:
            raise ValueError(f"no script registered for scripted/{name}")
        script, latency = _SCRIPTS[name]
        if latency:
            time.sleep(latency)
        texts = []
        for index in range(int(params.get("n") or 1)):  # n samples: the script sees n_index 0..n-1
            out = script(messages, {**params, "n_index": index})
            texts.append(out if isinstance(out, str) else render_fields(out, as_json="response_format" in params))
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = sum(len(text.split()) for text in texts)
        return ModelResponse(
            model=f"scripted/{name}",
            choices=[{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                     for i, text in enumerate(texts)],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": prompt_tokens + completion_tokens},
        )

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        import asyncio

        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)


def scripted_lm(script: Script, *, name: str | None = None, latency: float = 0.0, **lm_kwargs: Any) -> dspy.LM:
    """A ``dspy.LM`` answered by ``script``; uncached by default so every call reaches the script."""
    register_custom_provider("scripted", _ScriptedHandler)
    name = name or f"script-{next(_COUNTER)}"
    _SCRIPTS[name] = (script, latency)
    lm_kwargs.setdefault("cache", False)
    return dspy.LM(f"scripted/{name}", engine="litellm", num_retries=0, **lm_kwargs)


def system_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return str(users[-1].get("content", "")) if users else ""
