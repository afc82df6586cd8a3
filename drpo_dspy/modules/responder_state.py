"""The learned state of an AlignedResponder that DSPy saves with it: the example bank and k, and the decoding."""

from __future__ import annotations

import logging
from typing import Any

from dspy.predict.parameter import Parameter

from drpo_dspy.adapters.drpo_layout import DEFAULT_LAYOUT, check_layout
from drpo_dspy.primitives.checks import is_real, is_whole

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024  # an explicit answer cap: OpenAI-compatible /v1/completions servers default to 16 tokens
DEFAULT_TEMPERATURE = 0.0  # greedy, as the paper decodes the base model; servers default to sampling at 1.0
DEMO_MODES = ("merge", "replace")
_STATE_VERSION = 1


class ExampleBank(Parameter):
    """The responder's learned in-context state: the example bank, k, and how predictor demos join them."""

    def __init__(self, bank: Any, k: int, fixed: bool = False, demo_mode: str = "merge",
                 min_similarity: float | None = None):
        check_demo_mode(demo_mode)
        check_min_similarity(min_similarity)
        self.bank = bank
        self.k = k
        self.fixed = fixed
        self.demo_mode = demo_mode
        self.min_similarity = min_similarity

    def reset(self) -> None:  # an optimizer's reset_copy keeps the bank: it is data, not a trace
        pass

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "k": self.k, "fixed": self.fixed, "demo_mode": self.demo_mode,
                "min_similarity": self.min_similarity, "bank": self.bank.to_state()}

    def load_state(self, state: dict[str, Any]) -> ExampleBank:
        from drpo_dspy.retrievers.bank import AlignmentBank

        if not isinstance(state, dict) or "bank" not in state or "k" not in state:
            raise ValueError("not an AlignedResponder example bank state (expected keys 'k' and 'bank')")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported example bank state version {state.get('version')!r}")
        demo_mode = state.get("demo_mode", "merge")
        check_demo_mode(demo_mode)
        bank = AlignmentBank.from_state(state["bank"])
        check_k(state["k"], len(bank))
        check_min_similarity(state.get("min_similarity"))
        self.bank, self.k, self.fixed = bank, state["k"], bool(state.get("fixed", False))
        self.demo_mode, self.min_similarity = demo_mode, state.get("min_similarity")
        return self

    def __deepcopy__(self, memo: dict) -> ExampleBank:
        # The bank holds an embedding model and an index: share them, copy only the data.
        return ExampleBank(self.bank.copy() if hasattr(self.bank, "copy") else self.bank, self.k, self.fixed,
                           self.demo_mode, self.min_similarity)


class Decoding(Parameter):
    """How the base model is prompted and decoded: temperature, answer cap and prompt layout, sent on every call and
    saved with the module."""

    def __init__(self, temperature: float | None = DEFAULT_TEMPERATURE, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 layout: str = DEFAULT_LAYOUT):
        check_decoding(temperature, max_tokens)
        check_layout(layout)
        self.temperature, self.max_tokens, self.layout = temperature, max_tokens, layout

    def reset(self) -> None:  # learned settings, not a trace
        pass

    def config(self) -> dict[str, Any]:
        """The per-call settings (a ``None`` setting is left to the LM and its server)."""
        return {k: v for k, v in (("temperature", self.temperature), ("max_tokens", self.max_tokens)) if v is not None}

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "layout": self.layout}

    def load_state(self, state: dict[str, Any]) -> Decoding:
        """A saved decoding; a program saved without a cap gets the default cap (an answer is never left to a
        server's own default, 16 tokens on ``/v1/completions``), one saved without a layout the default layout."""
        if not isinstance(state, dict):
            raise ValueError("not an AlignedResponder decoding state (expected temperature and max_tokens)")
        temperature, max_tokens = state.get("temperature"), state.get("max_tokens")
        layout = state.get("layout") or DEFAULT_LAYOUT
        check_decoding(temperature, max_tokens)
        check_layout(layout)
        if max_tokens is None:
            logger.info("the saved program has no answer cap: using the default, max_tokens=%d", DEFAULT_MAX_TOKENS)
            max_tokens = DEFAULT_MAX_TOKENS
        self.temperature, self.max_tokens, self.layout = temperature, max_tokens, layout
        return self


def check_decoding(temperature: Any, max_tokens: Any) -> None:
    if temperature is not None and (not is_real(temperature)
                                    or not 0 <= temperature <= 2):
        raise ValueError(f"temperature must be a number from 0 to 2 or None, got {temperature!r}")
    if max_tokens is not None and (not is_whole(max_tokens) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")


def check_k(k: Any, bank_size: int) -> None:
    if not is_whole(k) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k > bank_size:
        raise ValueError(
            f"k={k} is larger than the example bank ({bank_size} examples): lower k or add examples"
        )


def check_min_similarity(value: Any) -> None:
    if value is not None and (not is_real(value) or not -1 <= value <= 1):
        raise ValueError(f"min_similarity must be a cosine from -1 to 1 or None, got {value!r}")


def check_demo_mode(mode: Any) -> None:
    if mode not in DEMO_MODES:
        raise ValueError(f"demo_mode must be 'merge' (predictor demos, then retrieved examples) or 'replace' "
                         f"(predictor demos instead of retrieved examples), got {mode!r}")
