"""Raw text-completion route for base models that keeps DRPO's exact prompt layout.

``dspy.LM(model, model_type="text")`` joins the messages with blank lines and appends ``"BEGIN RESPONSE:"``.
``raw_completion_lm(lm)`` returns a chat-type copy of ``lm`` whose model is ``drpo_text/<model>``: the ``drpo_text``
litellm provider concatenates the message contents exactly (``"".join``) and sends that one prompt to the embedded
model without a chat template, or to ``litellm.text_completion`` for any other model. Calls stay inside dspy.LM
(cache, history, callbacks) and litellm, and are recorded in the user's own LM's history. Streaming
(``stream=True``) is real on both: the embedded model's text token by token, the remote one's as it arrives.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy
import litellm
from litellm import CustomLLM, ModelResponse
from litellm.types.utils import GenericStreamingChunk

from drpo_dspy.clients.embedded import EMBEDDED_PROVIDER, complete_embedded, register_embedded_provider, stream_embedded
from drpo_dspy.clients.providers import Sample, message_text, model_response, register_custom_provider
from drpo_dspy.engine.stream import achunks, chunks, text_chunk

RAW_TEXT_PROVIDER = "drpo_text"
# OpenAI text-completion parameters forwarded to litellm.text_completion.
_TEXT_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "n",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
    "logprobs",
    "echo",
    "best_of",
    "suffix",
)


def join_messages(messages: list[dict[str, Any]]) -> str:
    """The prompt: the message contents concatenated exactly, with no separators and no template."""
    return "".join(message_text(m) for m in messages)


def _text_request(
    model: str,
    prompt: str,
    params: dict[str, Any],
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout: Any = None,
    headers: dict[str, Any] | None = None,
    **_: Any,
) -> dict[str, Any]:
    """``litellm.text_completion`` arguments, as DSPy's ``litellm_text_completion`` builds them."""
    provider, _, name = model.partition("/") if "/" in model else ("openai", "", model)
    env = (provider.upper(), provider)
    api_key = api_key or next((os.environ[f"{p}_API_KEY"] for p in env if os.environ.get(f"{p}_API_KEY")), None)
    api_base = api_base or next((os.environ[f"{p}_API_BASE"] for p in env if os.environ.get(f"{p}_API_BASE")), None)
    request = {key: params[key] for key in _TEXT_PARAMS if params.get(key) is not None}
    if params.get("max_completion_tokens") is not None and "max_tokens" not in request:
        request["max_tokens"] = params["max_completion_tokens"]
    if timeout is not None:
        request["timeout"] = timeout
    if headers:
        request["headers"] = headers
    return {"model": f"text-completion-openai/{name}", "prompt": prompt, "api_base": api_base, "api_key": api_key,
            **request}


def _text_completion(model: str, prompt: str, params: dict[str, Any], *, response: ModelResponse | None,
                     **connection: Any) -> ModelResponse:
    """Call ``litellm.text_completion`` and wrap its answer as a chat response."""
    text = litellm.text_completion(**_text_request(model, prompt, params, **connection))
    samples = [Sample(c.text or "", c.finish_reason or "stop", 0) for c in text.choices]
    usage = getattr(text, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    completion_tokens = getattr(usage, "completion_tokens", 0) or 0
    return model_response(f"{RAW_TEXT_PROVIDER}/{model}", samples, prompt_tokens, response, completion_tokens)


class RawTextLLM(CustomLLM):
    """litellm handler for ``drpo_text/<inner model>``: one exactly concatenated prompt, raw completion."""

    def completion(
        self,
        model: str,
        messages: list,
        *args: Any,
        optional_params: dict | None = None,
        model_response: ModelResponse | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: Any = None,
        headers: dict | None = None,
        **kwargs: Any,
    ) -> ModelResponse:
        params = dict(optional_params or {})
        prompt = join_messages(messages)
        if model.startswith(f"{EMBEDDED_PROVIDER}/"):
            return complete_embedded(
                None, params, prompt=prompt, model=f"{RAW_TEXT_PROVIDER}/{model}", response=model_response
            )
        return _text_completion(
            model,
            prompt,
            params,
            api_base=api_base,
            api_key=api_key,
            timeout=timeout,
            headers=headers,
            response=model_response,
        )

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

    def streaming(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,
                  **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        """The raw completion's text as it is generated: the embedded model's token by token
        (``embedded_stream``), any other model's through ``litellm.text_completion(stream=True)``."""
        params, prompt = dict(optional_params or {}), join_messages(messages)
        if model.startswith(f"{EMBEDDED_PROVIDER}/"):
            stream, prompt_tokens = stream_embedded(None, params, prompt=prompt, model=f"{RAW_TEXT_PROVIDER}/{model}")
            return chunks(stream, prompt_tokens)
        text = litellm.text_completion(**_text_request(model, prompt, params, **kwargs), **_stream_args(params))
        return (text_chunk(chunk) for chunk in text)

    async def astreaming(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,
                         **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        params, prompt = dict(optional_params or {}), join_messages(messages)
        if model.startswith(f"{EMBEDDED_PROVIDER}/"):
            stream, prompt_tokens = await asyncio.to_thread(
                stream_embedded, None, params, prompt=prompt, model=f"{RAW_TEXT_PROVIDER}/{model}")
            try:
                async for chunk in achunks(stream, prompt_tokens):
                    yield chunk
            finally:
                stream.cancel()
            return
        text = await litellm.atext_completion(**_text_request(model, prompt, params, **kwargs), **_stream_args(params))
        async for piece in text:
            yield text_chunk(piece)


def _stream_args(params: dict[str, Any]) -> dict[str, Any]:
    options = params.get("stream_options")
    return {"stream": True, **({"stream_options": options} if options else {})}


def register_raw_text_provider() -> None:
    """Register the ``drpo_text`` litellm provider (idempotent, thread-safe)."""
    register_custom_provider(RAW_TEXT_PROVIDER, RawTextLLM)


def raw_completion_lm(lm: dspy.LM) -> dspy.LM:
    """A chat-type copy of ``lm`` (same kwargs: api_base, api_key, temperature, max_tokens, ...) that sends the
    exact concatenation of the message contents as one raw text-completion prompt to ``lm``'s model."""
    if lm.model.startswith(f"{RAW_TEXT_PROVIDER}/"):
        return lm
    if not isinstance(lm.engine, str):
        raise ValueError("raw_completion_lm needs an LM on DSPy's built-in engines, not a custom engine")
    register_raw_text_provider()
    if lm.model.startswith(f"{EMBEDDED_PROVIDER}/"):
        register_embedded_provider()
    raw = lm.copy(model=f"{RAW_TEXT_PROVIDER}/{lm.model}", model_type="chat", engine="litellm")
    raw.history = lm.history  # the calls show in the user's own lm.history and lm.inspect_history()
    return raw
