"""Greedy decoding under a JSON-schema grammar, checking the grammar on the best token first.

llama-cpp-python samples a grammar-constrained greedy completion with the chain penalties -> grammar -> greedy:
the grammar is matched against all 49k vocabulary entries at every step, which makes each generated token about
three times slower on SmolLM2-135M. ``GreedyGrammarSampler`` applies the same penalties, takes the best token and
asks the grammar about that one token; only when the grammar rejects it are all candidates filtered (llama.cpp's
own ``common_sampler`` does the same). The grammar treats each candidate independently and greedy takes the first
best one, so the token is exactly the chain's: outputs are bit-identical.

Switch: ``$DRPO_EMBEDDED_FAST_GRAMMAR=0`` keeps llama-cpp-python's chain (``options.py``).
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
from typing import Any

import litellm
import numpy as np

from drpo_dspy.engine.models import DEFAULT_MODEL, EMBEDDED_PROVIDER
from drpo_dspy.primitives.checks import is_whole

logger = logging.getLogger(__name__)

# Mode -> llama.cpp's own defaults for what the caller leaves out (create_chat_completion / create_completion).
_DEFAULTS = {
    "chat": {"temperature": 0.2, "top_p": 0.95, "repeat_penalty": 1.1},
    "text": {"temperature": 0.8, "top_p": 0.95, "repeat_penalty": 1.0},
}
_EXTRA_SAMPLING = ("top_k", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty")
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class GreedyGrammarSampler:
    """Drop-in for ``llama_cpp._internals.LlamaSampler`` (``sample(ctx, idx)``) in greedy grammar decoding."""

    def __init__(self, llm: Any, grammar: Any, *, repeat_penalty: float, frequency_penalty: float,
                 presence_penalty: float) -> None:
        from llama_cpp import _internals

        self.n_vocab = llm.n_vocab()
        self.penalties = _internals.LlamaSampler()
        self.penalties.add_penalties(n_vocab=self.n_vocab, penalty_last_n=llm.last_n_tokens_size,
                                     penalty_repeat=repeat_penalty, penalty_freq=frequency_penalty,
                                     penalty_present=presence_penalty)
        self.grammar = _internals.LlamaSampler()
        self.grammar.add_grammar(llm._model, grammar)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._all = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self.checked_one = 0  # tokens the grammar accepted at first sight
        self.filtered_all = 0  # tokens that needed the whole vocabulary filtered

    def sample(self, ctx: Any, idx: int = -1) -> int:
        import llama_cpp

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        candidates = self._all
        candidates["id"] = self._ids
        candidates["logit"] = logits
        candidates["p"] = 0.0
        _apply(self.penalties, candidates)
        token = int(np.argmax(candidates["logit"]))  # the first best, as llama.cpp's greedy sampler takes it
        self._one[0] = candidates[token]
        _apply(self.grammar, self._one)
        if np.isneginf(self._one["logit"][0]):
            _apply(self.grammar, candidates)
            token = int(np.argmax(candidates["logit"]))
            self.filtered_all += 1
        else:
            self.checked_one += 1
        llama_cpp.llama_sampler_accept(self.penalties.sampler, token)
        llama_cpp.llama_sampler_accept(self.grammar.sampler, token)
        return token

    def close(self) -> None:
        self.penalties.close()
        self.grammar.close()


def _apply(sampler: Any, candidates: np.ndarray) -> None:
    import llama_cpp

    array = llama_cpp.llama_token_data_array(
        data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(candidates), selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(sampler.sampler, ctypes.byref(array))


def install_fast_grammar(llm: Any, enabled: Any) -> None:
    """Make ``llm`` build a ``GreedyGrammarSampler`` for greedy grammar decoding while ``enabled()`` is true."""
    original = llm._init_sampler

    def init_sampler(*args: Any, **kwargs: Any) -> Any:
        plain = not kwargs.get("mirostat_mode") and kwargs.get("logits_processor") is None
        if args or kwargs.get("temp") != 0.0 or not plain or kwargs.get("grammar") is None or not enabled():
            return original(*args, **kwargs)
        return GreedyGrammarSampler(llm, kwargs["grammar"], repeat_penalty=kwargs.get("repeat_penalty", 1.0),
                                    frequency_penalty=kwargs.get("frequency_penalty", 0.0),
                                    presence_penalty=kwargs.get("presence_penalty", 0.0))

    llm._init_sampler = init_sampler


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str | None) -> Any:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_json is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as exc:  # an unsupported schema still gets well-formed JSON
        logger.warning("JSON schema not convertible to a grammar (%s); constraining to plain JSON", exc)
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def grammar_for(response_format: Any) -> Any:
    """llama.cpp grammar for an OpenAI ``response_format`` (json_schema / json_object), or None for text."""
    if response_format is None:
        return None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return _grammar(json.dumps(response_format.model_json_schema()))
    if not isinstance(response_format, dict):
        raise litellm.BadRequestError(
            f"unsupported response_format {response_format!r}", model="embedded", llm_provider="embedded"
        )
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return _grammar(json.dumps(schema) if schema else None)
    if kind == "json_object":
        schema = response_format.get("schema")
        return _grammar(json.dumps(schema) if schema else None)
    return None  # "text"


def sampling_options(params: dict[str, Any], mode: str, model: str = DEFAULT_MODEL.model) -> dict[str, Any]:
    """Map OpenAI-style optional params to ``EmbeddedRuntime.generate`` keyword arguments (all but the grammar:
    ``grammar_for(params["response_format"])``)."""
    n = params.get("n") or 1
    if not is_whole(n) or n < 1:
        raise litellm.BadRequestError(
            f"n must be a positive integer, got {n!r}", model=model, llm_provider=EMBEDDED_PROVIDER
        )
    stop = params.get("stop") or []
    options: dict[str, Any] = {
        "n": n,
        "seed": params.get("seed"),
        "stop": [stop] if isinstance(stop, str) else list(stop),
        "max_tokens": params.get("max_tokens") or params.get("max_completion_tokens"),
    }
    for key, default in _DEFAULTS[mode].items():
        options[key] = params[key] if params.get(key) is not None else default
    options.update({key: params[key] for key in _EXTRA_SAMPLING if params.get(key) is not None})
    return options
