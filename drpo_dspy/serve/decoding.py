"""Client decoding parameters, checked against OpenAI's ranges and the operator's limits.

Supported: temperature, top_p, max_tokens (or max_completion_tokens), stop, seed, n, presence_penalty,
frequency_penalty. Tools, response_format and logprobs are checked in :mod:`drpo_dspy.serve.features`; what the
server cannot honour (logit_bias, audio, predicted outputs, legacy ``functions``) is refused with a 400 rather than
silently ignored; unknown arguments are refused as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.adapters.drpo_layout import STOP_SEQUENCES
from drpo_dspy.primitives.checks import is_real, is_whole
from drpo_dspy.serve.errors import bad_request
from drpo_dspy.serve.settings import ServeSettings

MAX_STOPS = 4  # what OpenAI-compatible servers accept

_COMMON = {"model", "stream", "stream_options", "temperature", "top_p", "max_tokens", "stop", "seed", "n",
           "presence_penalty", "frequency_penalty", "user", "metadata", "store", "service_tier", "logprobs",
           "response_format"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "parallel_tool_calls", "tools", "tool_choice",
                         "top_logprobs"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
_UNSUPPORTED = {
    "functions": "legacy function calling (use 'tools')", "function_call": "legacy function calling (use "
    "'tool_choice')", "logit_bias": "logit_bias", "audio": "audio output", "modalities": "audio output",
    "prediction": "predicted outputs",
}
MAX_CLIENT_STOPS = 4


@dataclass(frozen=True)
class RequestDecoding:
    """What the base model is called with, plus the streaming choice."""

    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False

    @property
    def n(self) -> int:
        return int(self.params.get("n", 1))


def _number(body: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not is_real(value):
        raise bad_request(f"'{name}' must be a number, got {type(value).__name__}", param=name, code="invalid_type")
    if value < low or value > high or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise bad_request(f"'{name}' must be in {bound}, got {value}", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not is_whole(value):
        raise bad_request(f"'{name}' must be an integer, got {value!r}", param=name, code="invalid_type")
    return value


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or a list of non-empty strings", param="stop")
    if len(stops) > MAX_CLIENT_STOPS:
        raise bad_request(f"'stop' accepts at most {MAX_CLIENT_STOPS} sequences, got {len(stops)}", param="stop")
    return stops


def check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    """400 for an argument the OpenAI API does not define here, or one this server cannot honour."""
    for name, value in body.items():
        if name in _UNSUPPORTED and value not in (None, [], {}, ["text"]):
            raise bad_request(f"'{name}': {_UNSUPPORTED[name]} is not supported by an aligned DRPO program",
                              param=name, code="unsupported_parameter")
        if name not in allowed and name not in _UNSUPPORTED:
            raise bad_request(f"Unrecognized request argument supplied: {name}", param=name,
                              code="unrecognized_argument")
    if body.get("echo") or body.get("suffix") or body.get("best_of") not in (None, 1):
        name = next(n for n in ("echo", "suffix", "best_of") if body.get(n) not in (None, False, "", 1))
        raise bad_request(f"'{name}' is not supported by an aligned DRPO program", param=name,
                          code="unsupported_parameter")


def program_defaults(responder: Any) -> dict[str, Any]:
    """The decoding a program sends on its own in Python (its saved temperature and answer cap, where it has them);
    the client's parameters override these, as ``config=`` does in ``responder(query=..., config=...)``."""
    decoding = getattr(responder, "decoding", None)
    if decoding is not None and callable(getattr(decoding, "config", None)):
        return dict(decoding.config())
    cap = getattr(responder, "max_tokens", None)
    return {"max_tokens": cap} if cap else {}


def parse_decoding(body: dict[str, Any], settings: ServeSettings, *, allowed: set[str],
                   defaults: dict[str, Any] | None = None, drpo_stops: bool = True) -> RequestDecoding:
    """Validate the request's decoding parameters; the DRPO end markers follow the client's stops (``drpo_stops``
    False: the client's alone -- the plain layout and structured output have no markers to stop at).

    ``defaults`` (the program's own decoding) fill what the client leaves out; without any ``max_tokens`` the
    server's default applies. A program's cap is held to the server's limit; a client's above it is a 400.
    """
    defaults = dict(defaults or {})
    check_fields(body, allowed)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options", code="invalid_type")
    params: dict[str, Any] = {key: value for key, value in defaults.items() if key != "max_tokens"}
    for name, low, high, low_open in (("temperature", 0, 2, False), ("top_p", 0, 1, True),
                                      ("presence_penalty", -2, 2, False), ("frequency_penalty", -2, 2, False)):
        value = _number(body, name, low, high, low_open=low_open)
        if value is not None:
            params[name] = value
    max_tokens = _integer(body, "max_completion_tokens")
    max_tokens = _integer(body, "max_tokens") if max_tokens is None else max_tokens
    if max_tokens is None:
        max_tokens = min(defaults.get("max_tokens") or settings.default_max_tokens, settings.max_tokens_limit)
    elif max_tokens < 1:
        raise bad_request(f"'max_tokens' must be at least 1, got {max_tokens}", param="max_tokens")
    elif max_tokens > settings.max_tokens_limit:
        raise bad_request(f"'max_tokens' is {max_tokens}, above this server's limit of {settings.max_tokens_limit}",
                          param="max_tokens")
    params["max_tokens"] = max_tokens
    seed = _integer(body, "seed")
    if seed is not None:
        params["seed"] = seed
    n = _integer(body, "n")
    if n is not None:
        if not 1 <= n <= settings.max_n:
            raise bad_request(f"'n' must be between 1 and {settings.max_n}, got {n}", param="n")
        if n > 1:
            params["n"] = n
    # OpenAI-compatible upstreams take at most four stops: the client's first, then ours while there is room (the
    # answer is cut at layout text on our side in any case: extract_answer).
    stops = list(dict.fromkeys([*_stops(body.get("stop")), *(STOP_SEQUENCES if drpo_stops else ())]))[:MAX_STOPS]
    if stops:
        params["stop"] = stops
    return RequestDecoding(params, stream, bool((options or {}).get("include_usage")))
