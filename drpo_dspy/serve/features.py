"""What a request asks beyond text -- tools, structured output, logprobs -- checked against what the route can do.

Routes: a **chat** upstream (any litellm chat model: a hosted provider, an OpenAI-compatible vLLM or llama.cpp
server, Ollama), the **text** route (``--base-model-type text``: one raw prompt to a text-completion endpoint), and
the **embedded** model (in-process llama.cpp; chat or text route).

- Tools and tool messages need a chat upstream that is not the embedded model. A model litellm's catalogue knows
  as unable to call tools (and reached at its provider's own address) is refused; any other model is asked, and
  its own refusal comes back as a 400 (an OpenAI-compatible server's model name says nothing about its tool
  parser, so the catalogue's silence is not a refusal).
- ``response_format`` goes to any chat upstream, the embedded model included (llama.cpp enforces it as a grammar,
  on both of its routes). The text route to a remote server cannot carry it (the ``drpo_text`` route forwards text
  parameters only), so it is refused there.
- ``logprobs`` need a chat upstream other than the embedded model (which returns none); the text route returns
  text only.

A request with tools or tool messages, or a structured request on a chat upstream, uses the plain layout
(:mod:`drpo_dspy.serve.plain_layout`); a structured request on the text route keeps the DRPO document (a base
model reads it best) and the grammar shapes the answer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.primitives.checks import is_whole
from drpo_dspy.serve.errors import bad_request
from drpo_dspy.serve.settings import ServeSettings
from drpo_dspy.serve.structured import parse_response_format
from drpo_dspy.serve.tools import parse_tool_choice, parse_tools

EMBEDDED_PREFIX = "embedded/"
TOOL_UPSTREAMS = ("a chat base model that supports tools: an OpenAI-compatible vLLM server (--enable-auto-tool-choice)"
                  " or llama.cpp server (--jinja) as --base-model hosted_vllm/<model> --base-api-base URL, or a "
                  "hosted provider such as openai/gpt-4o-mini")
MAX_TOP_LOGPROBS = {"chat": 20, "text": 5}


@dataclass(frozen=True)
class Route:
    """The base model as the server reaches it."""

    kind: str  # "chat" or "text"
    embedded: bool
    model: str
    own_server: bool  # --base-api-base: an OpenAI-compatible server of the operator's, whatever the model's name

    @classmethod
    def of(cls, settings: ServeSettings) -> Route:
        return cls(settings.base_model_type, settings.base_model.startswith(EMBEDDED_PREFIX), settings.base_model,
                   bool(settings.base_api_base))

    def describe(self) -> str:
        if self.embedded:
            return f"the embedded model ({self.model})"
        return f"the text route (--base-model-type text, {self.model})" if self.kind == "text" else self.model


@functools.lru_cache(maxsize=32)
def known_without_tools(model: str) -> bool:
    """True only when litellm's catalogue knows ``model`` and says it cannot call tools (or is not a chat model)."""
    import litellm

    try:
        info = litellm.get_model_info(model)
    except Exception:  # unknown to the catalogue: the model itself decides
        return False
    return info.get("supports_function_calling") is False or info.get("mode") not in (None, "chat", "responses")


@dataclass(frozen=True)
class Features:
    """The checked extras of a request and how it is laid out and read."""

    params: dict[str, Any] = field(default_factory=dict)  # forwarded to the base model as they are
    layout: str = "drpo"  # "drpo" or "plain"
    shape: str = "layout"  # how the answer is read: "layout", "plain" or "json" (drpo_dspy.serve.answers.PARTS)
    logprobs: bool = False  # the client asked for logprobs
    top_logprobs: int = 0

    @property
    def drpo_stops(self) -> bool:
        """Whether the DRPO end markers go as stop sequences (only where the answer is read in the DRPO layout)."""
        return self.shape == "layout"


def _refuse(what: str, route: Route, reason: str, param: str, hint: str = "") -> None:
    raise bad_request(f"{what} cannot be served over {route.describe()}: {reason}" + (f"; {hint}" if hint else ""),
                      param=param, code="unsupported_parameter")


def _check_tool_route(route: Route, param: str) -> None:
    if route.embedded:
        _refuse("Tool calling", route, "the embedded model cannot call tools", param, f"serve {TOOL_UPSTREAMS}")
    if route.kind == "text":
        _refuse("Tool calling", route, "a text-completion endpoint has no tools", param,
                f"serve {TOOL_UPSTREAMS}, with --base-model-type chat")
    if not route.own_server and known_without_tools(route.model):
        _refuse("Tool calling", route, "litellm's model catalogue says this model cannot call tools", param,
                f"serve {TOOL_UPSTREAMS}")


def _logprobs(body: dict[str, Any], kind: str) -> tuple[bool, int]:
    """``(asked, top)`` from the chat form (``logprobs: bool``, ``top_logprobs: int``) or the completions form
    (``logprobs: int``, the number of alternatives)."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    limit = MAX_TOP_LOGPROBS[kind]
    if kind == "text":
        if value is None:
            return False, 0
        if not is_whole(value) or not 0 <= value <= limit:
            raise bad_request(f"'logprobs' must be an integer from 0 to {limit}, got {value!r}", param="logprobs")
        return True, value
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"'logprobs' must be true or false, got {value!r}", param="logprobs", code="invalid_type")
    if top is not None:
        if not is_whole(top) or not 0 <= top <= limit:
            raise bad_request(f"'top_logprobs' must be an integer from 0 to {limit}, got {top!r}",
                              param="top_logprobs")
        if not value:
            raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return bool(value), int(top or 0)


def parse_features(body: dict[str, Any], kind: str, route: Route, *, tool_messages: bool = False) -> Features:
    """Check the request's tools, response format and logprobs against ``route`` (400s before any upstream call).

    ``kind`` is the endpoint ("chat" or "text"); ``tool_messages``: the conversation holds tool calls or results.
    """
    tools = parse_tools(body.get("tools"))
    tool_choice = parse_tool_choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be true or false", param="parallel_tool_calls")
    params: dict[str, Any] = {}
    if tools or tool_messages:
        _check_tool_route(route, "tools" if tools else "messages")
    if tools:
        params["tools"] = tools
        params.update({key: value for key, value in (("tool_choice", tool_choice), ("parallel_tool_calls", parallel))
                       if value is not None})
    response_format = parse_response_format(body.get("response_format"))
    if response_format is not None:
        if route.kind == "text" and not route.embedded:
            _refuse("'response_format'", route, "the text-completion route forwards text parameters only",
                    "response_format", "serve the model with --base-model-type chat (vLLM's chat endpoint enforces "
                    "json_schema), or use the embedded model, whose grammar enforces it on either route")
        params["response_format"] = response_format
    asked, top = _logprobs(body, kind)
    if asked:
        if route.embedded:
            _refuse("'logprobs'", route, "the embedded model returns no log probabilities", "logprobs")
        if route.kind == "text":
            _refuse("'logprobs'", route, "the drpo_text route returns text only", "logprobs",
                    "serve the model with --base-model-type chat")
        params["logprobs"] = True
        if top:
            params["top_logprobs"] = top
    tooled = bool(tools) or tool_messages
    shape = "json" if response_format else "plain" if tooled else "layout"
    layout = "plain" if tooled or (response_format and route.kind == "chat") else "drpo"
    return Features(params, layout, shape, asked, top)
