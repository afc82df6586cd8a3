"""Scripted base models for the ``drpo serve`` feature tests, each recording exactly the request it received.

- ``recorded_model(script)``: a litellm custom provider (``recorded/<name>``) that answers with text and tool calls,
  whole or streamed (text in small pieces, each tool call's arguments in two pieces, as OpenAI streams them);
- ``FakeOpenAI``: an OpenAI-compatible HTTP server on a loopback port (``openai/<name>`` with ``api_base``), for
  what litellm's custom-provider stream cannot carry: token logprobs, and ``n > 1`` streams by choice index.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm import CustomLLM

from drpo_dspy.clients.providers import register_custom_provider


@dataclass
class Reply:
    """What the scripted model answers: text, and tool calls as ``(name, arguments dict)``."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else "stop"

    def tool_calls(self, turn: int) -> list[dict[str, Any]]:
        return [{"id": f"call_{turn}_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(self.calls)]


Script = Callable[[list[dict[str, Any]], dict[str, Any]], Reply]


@dataclass
class Recorded:
    """One request as the base model received it."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool

    @property
    def system(self) -> str:
        return "\n".join(str(m.get("content") or "") for m in self.messages if m["role"] == "system")


class RecordedModel:
    def __init__(self, name: str, script: Script):
        self.name, self.script = name, script
        self.requests: list[Recorded] = []

    @property
    def model(self) -> str:
        return f"recorded/{self.name}"

    def answer(self, messages: list, kwargs: dict[str, Any], stream: bool) -> tuple[Reply, int]:
        params = dict(kwargs.get("optional_params") or {})
        params.pop("stream", None)
        self.requests.append(Recorded([dict(m) for m in messages], params, stream))
        return self.script(messages, params), len(self.requests)


_MODELS: dict[str, RecordedModel] = {}
_COUNTER = itertools.count()


class _Handler(CustomLLM):
    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        reply, turn = _MODELS[model.split("/", 1)[-1]].answer(messages, kwargs, stream=False)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.calls:
            message["tool_calls"] = reply.tool_calls(turn)
        n = int((kwargs.get("optional_params") or {}).get("n") or 1)  # n choices, the same reply
        return litellm.ModelResponse(choices=[{"index": i, "finish_reason": reply.finish_reason, "message": message}
                                              for i in range(n)],
                                     usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        return self.completion(model, messages, *args, **kwargs)

    async def astreaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        reply, turn = _MODELS[model.split("/", 1)[-1]].answer(messages, kwargs, stream=True)
        pieces: list[dict[str, Any]] = []
        text = reply.text
        while text:
            pieces.append({"text": text[:4], "tool_use": None})
            text = text[4:]
        for index, call in enumerate(reply.tool_calls(turn)):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            pieces.append({"text": "", "tool_use": {"id": call["id"], "type": "function", "index": index,
                                                     "function": {"name": call["function"]["name"],
                                                                  "arguments": arguments[:half]}}})
            pieces.append({"text": "", "tool_use": {"id": None, "type": "function", "index": index,
                                                     "function": {"name": None, "arguments": arguments[half:]}}})
        for piece in pieces:
            yield {**piece, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
        yield {"text": "", "tool_use": None, "is_finished": True, "finish_reason": reply.finish_reason,
               "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}, "index": 0}


def recorded_model(script: Script) -> RecordedModel:
    """A fresh scripted model; give ``.model`` to the server as its base model."""
    register_custom_provider("recorded", _Handler)
    model = RecordedModel(f"m{next(_COUNTER)}", script)
    _MODELS[model.name] = model
    return model


def logprob(token: str, value: float) -> dict[str, Any]:
    return {"token": token, "logprob": value, "bytes": list(token.encode()),
            "top_logprobs": [{"token": token, "logprob": value, "bytes": list(token.encode())}]}


class FakeOpenAI:
    """An OpenAI-compatible chat endpoint: choice ``i`` is ``tokens(i)`` (token by token when streamed, with a
    logprob per token when asked); records every request body."""

    def __init__(self, tokens: Callable[[int], list[str]]):
        from starlette.applications import Starlette
        from starlette.routing import Route

        from drpo_dspy.serve import BackgroundServer

        self.tokens, self.requests = tokens, []
        self.server = BackgroundServer(Starlette(routes=[Route("/v1/chat/completions", self._chat,
                                                               methods=["POST"])])).start()

    @property
    def api_base(self) -> str:
        return self.server.base_url

    def stop(self) -> None:
        self.server.stop()

    async def _chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        body = await request.json()
        self.requests.append(body)
        n, want = body.get("n", 1), body.get("logprobs")
        envelope = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}

        def probs(tokens: list[str], start: int) -> dict[str, Any] | None:
            return {"content": [logprob(t, -0.1 * (start + i + 1)) for i, t in enumerate(tokens)]} if want else None

        if not body.get("stream"):
            choices = [{"index": i, "finish_reason": "stop", "logprobs": probs(self.tokens(i), 0),
                        "message": {"role": "assistant", "content": "".join(self.tokens(i))}} for i in range(n)]
            return JSONResponse({**envelope, "object": "chat.completion", "choices": choices,
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})

        async def events() -> AsyncIterator[str]:
            chunk = {**envelope, "object": "chat.completion.chunk"}
            for position in range(max(len(self.tokens(i)) for i in range(n))):
                for i in range(n):  # the choices interleaved, token by token
                    if position < len(self.tokens(i)):
                        token = self.tokens(i)[position]
                        yield "data: " + json.dumps({**chunk, "choices": [{
                            "index": i, "delta": {"content": token}, "logprobs": probs([token], position),
                            "finish_reason": None}]}) + "\n\n"
            for i in range(n):
                yield "data: " + json.dumps({**chunk, "choices": [{"index": i, "delta": {},
                                                                   "finish_reason": "stop"}]}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def needs_llama_cpp() -> None:
    """Skip unless llama-cpp-python is installed, without importing it: llama.cpp must first load when the embedded
    runtime loads it, after it has set how its threads wait (``engine/threads.py``); loaded earlier, its
    threads spin and generation on a busy machine slows several-fold."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
