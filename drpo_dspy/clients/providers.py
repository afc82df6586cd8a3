"""Shared by the custom litellm providers (embedded model, raw-text route, scripted and faulty test LMs):
registering a provider once, and building chat responses."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import litellm
from litellm import CustomLLM, ModelResponse
from litellm.types.utils import Choices, Message, Usage

from drpo_dspy.engine.completion_text import Sample

_register_lock = threading.Lock()


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def model_response(
    model: str,
    samples: Sequence[Sample],
    prompt_tokens: int,
    response: ModelResponse | None = None,
    completion_tokens: int | None = None,
) -> ModelResponse:
    """A chat-style ``litellm.ModelResponse`` with one choice per sample and token usage."""
    response = response if response is not None else ModelResponse()
    response.id = f"chatcmpl-{uuid.uuid4().hex}"
    response.created = int(time.time())
    response.model = model
    response.object = "chat.completion"
    response.choices = [
        Choices(index=i, finish_reason=s.finish_reason, message=Message(content=s.text, role="assistant"))
        for i, s in enumerate(samples)
    ]
    completion = sum(s.completion_tokens for s in samples) if completion_tokens is None else completion_tokens
    response.usage = Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
    )
    return response


def register_custom_provider(provider: str, handler_factory: Callable[[], CustomLLM]) -> None:
    """Add ``provider`` to ``litellm.custom_provider_map`` once (thread-safe) and refresh litellm's provider list."""
    with _register_lock:
        if not any(item.get("provider") == provider for item in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": provider, "custom_handler": handler_factory()})
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
