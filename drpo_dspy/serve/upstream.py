"""The base model behind the server, called through litellm (any provider string, the embedded model included).

Chat base models get the DRPO-layout messages; text (base) models get them through the ``drpo_text`` route, which
concatenates the contents into one raw prompt exactly as ``AlignedResponder`` does for ``model_type="text"``.
Providers that stream (built-in ones, the embedded model, the raw-text route over either) deliver token by token;
a custom provider that cannot (scripted test providers) is called once and its answer streamed as it arrives from
that call; so are ``n > 1`` streams from custom providers (litellm's custom-provider stream carries one choice).
Tool calls and token logprobs come back with each choice or delta.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import litellm
from litellm import CustomLLM

from drpo_dspy.clients.embedded import EMBEDDED_PROVIDER, ensure_embedded_runtime, register_embedded_provider
from drpo_dspy.clients.raw_text import RAW_TEXT_PROVIDER, register_raw_text_provider
from drpo_dspy.serve.settings import ServeSettings
from drpo_dspy.serve.tools import tool_call, tool_call_piece


@dataclass(frozen=True)
class Choice:
    """One completion from the base model: the raw text (markers included), why it ended, its tool calls and its
    token logprobs (chat ``logprobs.content`` entries) when asked."""

    text: str
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Completion:
    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed completion; ``finish_reason`` is set on the last piece."""

    text: str
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens, when the provider reports them
    index: int = 0  # the choice it belongs to (n > 1)
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI tool-call pieces (index, id, function name/arguments)
    logprobs: list[dict[str, Any]] | None = None


def provider_streams(model: str) -> bool:
    """Whether litellm can stream ``model``: built-in providers can; a custom provider only if it implements it."""
    provider = model.split("/", 1)[0]
    for entry in litellm.custom_provider_map:
        if entry.get("provider") == provider:
            handler = entry.get("custom_handler")
            return type(handler).astreaming is not CustomLLM.astreaming
    return True


def custom_provider(model: str) -> bool:
    """Whether ``model`` is served by a litellm custom provider (the embedded model, the text route, test ones)."""
    provider = model.split("/", 1)[0]
    return any(entry.get("provider") == provider for entry in litellm.custom_provider_map)


def _logprob_entries(logprobs: Any) -> list[dict[str, Any]] | None:
    """Chat logprob entries (``{token, logprob, bytes, top_logprobs}``) of a choice or delta, as plain dicts."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else getattr(logprobs, "content", None)
    if not content:
        return None
    return [entry if isinstance(entry, dict) else entry.model_dump() for entry in content]


def _usage_numbers(response: Any) -> tuple[int, int]:
    usage = getattr(response, "usage", None)
    return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


class Upstream:
    """Sends DRPO-layout messages to the base model with the client's (already validated) decoding parameters."""

    def __init__(self, settings: ServeSettings):
        self.model = settings.base_model
        if self.model.startswith(f"{EMBEDDED_PROVIDER}/"):
            # UnknownEmbeddedModel (exit 2) or ImportError with the pip command, at startup rather than per request
            self.model = ensure_embedded_runtime(self.model).model
            register_embedded_provider(self.model)
        try:
            litellm.get_llm_provider(self.model)
        except Exception:
            raise ValueError(f"--base-model {self.model!r} names no litellm provider; use a litellm model string such "
                             "as openai/gpt-4o-mini, hosted_vllm/<model>, ollama_chat/<model> or "
                             "embedded/smollm2-135m") from None
        if settings.base_model_type == "text":
            register_raw_text_provider()
            self.route = f"{RAW_TEXT_PROVIDER}/{self.model}"
        else:
            self.route = self.model
        self.timeout = settings.upstream_timeout
        self.options: dict[str, Any] = {"timeout": settings.upstream_timeout,
                                        "num_retries": settings.upstream_retries}
        if settings.base_api_base:
            self.options["api_base"] = settings.base_api_base
        if settings.base_api_key:
            self.options["api_key"] = settings.base_api_key
        self.streams = provider_streams(self.route)
        self.custom = custom_provider(self.route)

    async def _call(self, **request: Any) -> Any:
        """One litellm call, held to the timeout even where a provider ignores it (in-process and custom ones):
        past it the caller gets ``TimeoutError`` (the provider's work, if any, finishes unobserved)."""
        budget = self.timeout * (1 + self.options["num_retries"])
        return await asyncio.wait_for(litellm.acompletion(model=self.route, **self.options, **request), budget)

    async def complete(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> Completion:
        response = await self._call(messages=messages, **params)
        choices = [Choice(choice.message.content or "", choice.finish_reason or "stop",
                          [tool_call(call) for call in getattr(choice.message, "tool_calls", None) or ()] or None,
                          _logprob_entries(getattr(choice, "logprobs", None)))
                   for choice in response.choices]
        return Completion(choices, *_usage_numbers(response))

    async def stream(self, messages: list[dict[str, Any]], params: dict[str, Any], include_usage: bool = False
                     ) -> AsyncIterator[Delta]:
        """Open a stream. Failures to reach the model raise here, before the caller has answered anything."""
        if not self.streams or (self.custom and params.get("n", 1) > 1):
            completion = await self.complete(messages, params)
            return _single(completion)
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}
        response = await self._call(messages=messages, stream=True, **params, **extra)
        chunks = response.__aiter__()
        try:
            first = await asyncio.wait_for(chunks.__anext__(), self.timeout)
        except StopAsyncIteration:
            return _single(Completion([Choice("", "stop")]))
        return _deltas(first, chunks)


async def _single(completion: Completion) -> AsyncIterator[Delta]:
    """A whole completion as one delta per choice (tool calls whole, with their indices); usage on the last."""
    last = len(completion.choices) - 1
    for index, choice in enumerate(completion.choices):
        calls = [{"index": number, **call} for number, call in enumerate(choice.tool_calls or ())] or None
        usage = (completion.prompt_tokens, completion.completion_tokens) if index == last else None
        yield Delta(choice.text, choice.finish_reason, usage, index, calls, choice.logprobs)


def _deltas_of(chunk: Any) -> list[Delta]:
    usage = _usage_numbers(chunk) if getattr(chunk, "usage", None) else None
    if not chunk.choices:
        return [Delta("", None, usage)]
    deltas = []
    for choice in chunk.choices:
        calls = getattr(choice.delta, "tool_calls", None)
        deltas.append(Delta(getattr(choice.delta, "content", None) or "", choice.finish_reason, None,
                            getattr(choice, "index", 0) or 0, [tool_call_piece(call) for call in calls] if calls
                            else None, _logprob_entries(getattr(choice, "logprobs", None))))
    return [*deltas[:-1], Delta(**{**deltas[-1].__dict__, "usage": usage})]


async def _deltas(first: Any, chunks: AsyncIterator[Any]) -> AsyncIterator[Delta]:
    for delta in _deltas_of(first):
        yield delta
    async for chunk in chunks:
        for delta in _deltas_of(chunk):
            yield delta
