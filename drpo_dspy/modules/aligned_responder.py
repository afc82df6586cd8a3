"""AlignedResponder: a DSPy module that answers in the DRPO layout with retrieved in-context examples."""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import dspy
from dspy.predict.parameter import Parameter
from dspy.utils.exceptions import AdapterParseError

from drpo_dspy.adapters.drpo_layout import STOP_SEQUENCES, DRPOLayoutAdapter

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
DEFAULT_MAX_TOKENS = 1024  # an explicit answer cap: OpenAI-compatible /v1/completions servers default to 16 tokens
DEFAULT_TEMPERATURE = 0.0  # greedy, as the paper decodes the base model; servers default to sampling at 1.0
_STATE_VERSION = 1


class AlignedAnswer(dspy.Signature):
    """You are a helpful assistant."""

    query: str = dspy.InputField(desc="The user's query.")
    response: str = dspy.OutputField(desc="The assistant's answer.")


def _default_examples() -> list[dict]:
    from drpo_dspy.datasets import load_seed_examples

    return [{"query": e["query"], "answer": e["answer"]} for e in load_seed_examples()]


class ExampleBank(Parameter):
    """The responder's learned in-context state: the example bank and k, saved with the module as JSON."""

    def __init__(self, bank: Any, k: int, fixed: bool = False):
        self.bank = bank
        self.k = k
        self.fixed = fixed

    def reset(self) -> None:  # an optimizer's reset_copy keeps the bank: it is data, not a trace
        pass

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "k": self.k, "fixed": self.fixed, "bank": self.bank.to_state()}

    def load_state(self, state: dict[str, Any]) -> ExampleBank:
        from drpo_dspy.retrievers.bank import AlignmentBank

        if not isinstance(state, dict) or "bank" not in state or "k" not in state:
            raise ValueError("not an AlignedResponder example bank state (expected keys 'k' and 'bank')")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported example bank state version {state.get('version')!r}")
        bank = AlignmentBank.from_state(state["bank"])
        _check_k(state["k"], len(bank))
        self.bank, self.k, self.fixed = bank, state["k"], bool(state.get("fixed", False))
        return self

    def __deepcopy__(self, memo: dict) -> ExampleBank:
        # The bank holds an embedding model and an index: share them, copy only the data.
        return ExampleBank(self.bank.copy() if hasattr(self.bank, "copy") else self.bank, self.k, self.fixed)


class Decoding(Parameter):
    """How the base model is decoded: temperature and answer cap, sent on every call and saved with the module."""

    def __init__(self, temperature: float | None = DEFAULT_TEMPERATURE, max_tokens: int | None = DEFAULT_MAX_TOKENS):
        _check_decoding(temperature, max_tokens)
        self.temperature, self.max_tokens = temperature, max_tokens

    def reset(self) -> None:  # learned settings, not a trace
        pass

    def config(self) -> dict[str, Any]:
        """The per-call settings (a ``None`` setting is left to the LM and its server)."""
        return {k: v for k, v in (("temperature", self.temperature), ("max_tokens", self.max_tokens)) if v is not None}

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def load_state(self, state: dict[str, Any]) -> Decoding:
        if not isinstance(state, dict):
            raise ValueError("not an AlignedResponder decoding state (expected temperature and max_tokens)")
        temperature, max_tokens = state.get("temperature"), state.get("max_tokens")
        _check_decoding(temperature, max_tokens)
        self.temperature, self.max_tokens = temperature, max_tokens
        return self


def _check_decoding(temperature: Any, max_tokens: Any) -> None:
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                                    or not 0 <= temperature <= 2):
        raise ValueError(f"temperature must be a number from 0 to 2 or None, got {temperature!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")


def _check_k(k: Any, bank_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if k > bank_size:
        raise ValueError(
            f"k={k} is larger than the example bank ({bank_size} examples): lower k or add examples"
        )


class AlignedResponder(dspy.Module):
    """Answers a query under an alignment system prompt, with the k most similar examples in context.

    Args:
        instructions: The alignment system prompt.
        examples: In-context examples: an ``AlignmentBank``, or ``(query, answer)`` pairs / ``{"query",
            "answer"}`` dicts. ``None`` uses the package's built-in seed examples; ``[]`` means none.
        k: How many examples to retrieve per query (0 disables retrieval).
        embedder: Sentence-transformers model name or path (default all-MiniLM-L6-v2, shipped offline).
        max_tokens: Cap on the answer length, sent on every call (default 1024; ``None`` leaves it to the LM's
            settings and the server, which for ``/v1/completions`` servers is often 16 tokens).
        temperature: Decoding temperature of the answers (default 0: greedy, as the paper; ``None`` leaves it to
            the LM's settings and the server).
        fixed_examples: Use the first ``k`` examples in bank order for every query instead of retrieving the most
            similar ones (a static, URIAL-style prompt).

    Calling ``responder(query=...)`` returns ``dspy.Prediction(response=..., examples=[...])``.
    """

    def __init__(
        self,
        instructions: str = DEFAULT_INSTRUCTIONS,
        examples: Any = None,
        *,
        k: int = 2,
        embedder: Any = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        fixed_examples: bool = False,
        temperature: float | None = DEFAULT_TEMPERATURE,
    ):
        super().__init__()
        from drpo_dspy.retrievers.bank import AlignmentBank

        if not isinstance(instructions, str) or not instructions.strip():
            raise ValueError("instructions must be a non-empty string")
        if examples is None:
            examples = _default_examples()
        bank = examples if isinstance(examples, AlignmentBank) else AlignmentBank(examples, embedder=embedder)
        _check_k(k, len(bank))
        self.decoding = Decoding(temperature, max_tokens)
        self.respond = dspy.Predict(AlignedAnswer.with_instructions(instructions))
        self.examples = ExampleBank(bank, k, fixed=fixed_examples)
        self._raw_lms: dict[int, dspy.LM] = {}
        self._raw_lock = threading.Lock()

    # -- learned state -------------------------------------------------------------------------------
    @property
    def instructions(self) -> str:
        return self.respond.signature.instructions

    @instructions.setter
    def instructions(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instructions must be a non-empty string")
        self.respond.signature = self.respond.signature.with_instructions(text)

    @property
    def bank(self) -> Any:
        return self.examples.bank

    @property
    def max_tokens(self) -> int | None:
        return self.decoding.max_tokens

    @max_tokens.setter
    def max_tokens(self, value: int | None) -> None:
        _check_decoding(self.decoding.temperature, value)
        self.decoding.max_tokens = value

    @property
    def temperature(self) -> float | None:
        return self.decoding.temperature

    @temperature.setter
    def temperature(self, value: float | None) -> None:
        _check_decoding(value, self.decoding.max_tokens)
        self.decoding.temperature = value

    @property
    def k(self) -> int:
        return self.examples.k

    @k.setter
    def k(self, value: int) -> None:
        _check_k(value, len(self.examples.bank))
        self.examples.k = value

    def with_state(self, *, instructions: str | None = None, bank: Any = None, k: int | None = None):
        """A copy of this responder with some of its learned state replaced."""
        new = self.deepcopy()
        if bank is not None:
            new.examples.bank = bank
        if k is not None or bank is not None:
            new.k = self.k if k is None else k
        if instructions is not None:
            new.instructions = instructions
        return new

    # -- inference -----------------------------------------------------------------------------------
    def retrieve(self, query: str, k: int | None = None) -> list[Any]:
        """The k examples whose queries are most similar to ``query``, most similar first."""
        k = self.k if k is None else k
        if k == 0:
            return []
        if self.examples.fixed:
            return self.examples.bank.examples[:k]
        return [example for example, _score in self.examples.bank.search(query, k)]

    def _lm_for_call(self, lm: Any) -> Any:
        lm = lm or self.respond.lm or dspy.settings.lm
        if lm is None:
            raise ValueError("No LM configured: pass lm=..., set responder.set_lm(...) or dspy.configure(lm=...)")
        if getattr(lm, "model_type", "chat") != "text":
            return lm
        from drpo_dspy.clients.raw_text import raw_completion_lm

        with self._raw_lock:  # one raw-prompt route per text model, so its cache and history are shared
            raw = self._raw_lms.get(id(lm))
            if raw is None:
                raw = self._raw_lms[id(lm)] = raw_completion_lm(lm)
        return raw

    def _call(self, query: str, instructions: str | None, lm: Any, config: dict | None,
              paper_layout: bool = False) -> tuple[str, list[Any]]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        examples = self.retrieve(query)
        demos = [{"query": e.query, "response": e.answer} for e in examples]
        call_config: dict[str, Any] = {"stop": list(STOP_SEQUENCES), **self.decoding.config()}
        call_config.update(config or {})
        signature = self.respond.signature
        if instructions is not None:
            signature = signature.with_instructions(instructions)
        with dspy.context(adapter=DRPOLayoutAdapter(paper=paper_layout)):
            try:
                pred = self.respond(query=query, demos=demos, lm=self._lm_for_call(lm), config=call_config,
                                    signature=signature)
                return pred.response or "", examples
            except AdapterParseError:  # the model returned nothing at all
                logger.warning("the model returned an empty completion for query %.60r", query)
                return "", examples

    def forward(self, query: str, lm: Any = None, config: dict | None = None) -> dspy.Prediction:
        response, examples = self._call(query, None, lm, config)
        return dspy.Prediction(response=response, examples=[e.query for e in examples])

    def respond_with(self, instructions: str, query: str, *, lm: Any = None, paper_layout: bool = False) -> str:
        """Answer ``query`` under other ``instructions`` without changing this module (used by the search);
        ``paper_layout`` formats the prompt as the original code does during its search."""
        return self._call(query, instructions, lm, None, paper_layout)[0]

    # -- saving and loading --------------------------------------------------------------------------------
    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """DSPy's state, minus any credential an attached LM holds in its settings (headers included)."""
        from drpo_dspy.runs.secrets import strip_secret_settings

        state = super().dump_state(json_mode=json_mode)
        for value in state.values():
            if isinstance(value, dict) and isinstance(value.get("lm"), dict):
                value["lm"] = strip_secret_settings(value["lm"])
        return state

    def load_state(self, state: dict[str, Any], *, allow_unsafe_lm_state: bool = False) -> AlignedResponder:
        """DSPy's ``load_state``; a program saved before decoding settings were saved keeps this module's."""
        if isinstance(state, dict) and "decoding" not in state:
            state = {**state, "decoding": self.decoding.dump_state()}
        super().load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)
        return self

    def load(self, path: str | os.PathLike, allow_pickle: bool = False, allow_unsafe_lm_state: bool = False):
        """Load a saved program; a missing, corrupt or foreign file raises an error that names the file and the fix."""
        path = Path(path)
        if path.suffix == ".json":
            _check_program_file(path)
        elif not path.is_file():
            raise FileNotFoundError(f"program file {path} does not exist")
        try:
            return super().load(path, allow_pickle=allow_pickle, allow_unsafe_lm_state=allow_unsafe_lm_state)
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path} is not a usable AlignedResponder program ({detail}); re-save it with "
                             "AlignedResponder.save(...) or use the program.json of a finished DRPO run") from exc

    def __deepcopy__(self, memo: dict) -> AlignedResponder:
        new = copy.copy(self)
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name in ("_raw_lms", "_raw_lock"):
                continue
            setattr(new, name, copy.deepcopy(value, memo))
        new._raw_lms, new._raw_lock = {}, threading.Lock()
        return new



_PROGRAM_FIX = "re-save it with AlignedResponder.save(...) or use the program.json of a finished DRPO run"


def _check_program_file(path: Path) -> None:
    """Fail with a clear message when ``path`` cannot be a saved AlignedResponder (before DSPy reads it)."""
    if not path.is_file():
        raise FileNotFoundError(f"program file {path} does not exist")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"program file {path} is empty; {_PROGRAM_FIX}")
    try:
        state = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"program file {path} is not UTF-8 JSON (byte {exc.start}); {_PROGRAM_FIX}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"program file {path} is corrupt or truncated (not valid JSON at line {exc.lineno}, "
                         f"column {exc.colno}: {exc.msg}); {_PROGRAM_FIX}") from None
    if not isinstance(state, dict):
        raise ValueError(f"program file {path} holds a JSON {type(state).__name__}, not a saved AlignedResponder "
                         "(a JSON object with 'respond' and 'examples')")
    missing = [key for key in ("respond", "examples") if key not in state]
    if missing:
        raise ValueError(f"program file {path} is not a saved AlignedResponder: it has no {' or '.join(missing)} "
                         f"entry (saved from another DSPy program?); {_PROGRAM_FIX}")
