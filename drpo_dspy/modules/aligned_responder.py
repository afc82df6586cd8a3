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
        max_tokens: Optional cap on the answer length, passed to the LM.
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
        max_tokens: int | None = None,
        fixed_examples: bool = False,
    ):
        super().__init__()
        from drpo_dspy.retrievers.bank import AlignmentBank

        if not isinstance(instructions, str) or not instructions.strip():
            raise ValueError("instructions must be a non-empty string")
        if examples is None:
            examples = _default_examples()
        bank = examples if isinstance(examples, AlignmentBank) else AlignmentBank(examples, embedder=embedder)
        _check_k(k, len(bank))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        self.respond = dspy.Predict(AlignedAnswer.with_instructions(instructions))
        self.examples = ExampleBank(bank, k, fixed=fixed_examples)
        self.max_tokens = max_tokens
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

    def _call(self, query: str, instructions: str | None, lm: Any, config: dict | None) -> tuple[str, list[Any]]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        examples = self.retrieve(query)
        demos = [{"query": e.query, "response": e.answer} for e in examples]
        call_config: dict[str, Any] = {"stop": list(STOP_SEQUENCES)}
        if self.max_tokens is not None:
            call_config["max_tokens"] = self.max_tokens
        call_config.update(config or {})
        signature = self.respond.signature
        if instructions is not None:
            signature = signature.with_instructions(instructions)
        with dspy.context(adapter=DRPOLayoutAdapter()):
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

    def respond_with(self, instructions: str, query: str, *, lm: Any = None) -> str:
        """Answer ``query`` under other ``instructions`` without changing this module (used by the search)."""
        return self._call(query, instructions, lm, None)[0]

    # -- saving and loading --------------------------------------------------------------------------------
    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """DSPy's state, minus any credential an attached LM holds in its settings (headers included)."""
        from drpo_dspy.runs.secrets import strip_secret_settings

        state = super().dump_state(json_mode=json_mode)
        for value in state.values():
            if isinstance(value, dict) and isinstance(value.get("lm"), dict):
                value["lm"] = strip_secret_settings(value["lm"])
        return state

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
