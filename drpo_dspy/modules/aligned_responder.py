"""AlignedResponder: a DSPy module that answers in the DRPO layout with retrieved in-context examples.

Layout (see :mod:`drpo_dspy.adapters.drpo_layout`): the system message holds the alignment instructions and the
in-context examples; the user message holds the live query opening the answer at ``<START>``.

Conversations: with ``history`` (a ``dspy.History`` of earlier ``{"query", "response"}`` exchanges), the earlier
turns come after the system message as chat turns (user: ``# Query:`` ... ``<START>``; assistant: the answer closed
by ``<END>``) and the last turn, ``query``, is answered. Examples are retrieved for that last user turn (a
conversation example shows its earlier exchanges then its final query in its ``# Query:`` block). A text
(base) model reads the concatenation as one continuous DRPO document. Without history the layout is the
single-turn one, byte for byte.

Demos set on ``responder.respond.demos`` by an outer optimizer or by hand are used as the module's
``demo_mode`` says (see :mod:`drpo_dspy.modules.in_context`): "merge" shows them before the retrieved examples,
"replace" shows them instead.

Composes like a built-in module: ``acall``/``aforward`` (true async through ``dspy.LM.acall``, retrieval in a
worker thread), ``named_predictors()`` (``respond``), ``deepcopy``, ``reset_copy``, ``save``/``load`` (JSON, or
the whole program with ``save_program=True``), ``dspy.streamify`` (the LM's chunks, then the Prediction; DSPy's
field ``StreamListener``s only know its built-in adapters; the raw route of text models does not stream) and
``dspy.inspect_history``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import os
import threading
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from drpo_dspy.adapters.drpo_layout import DEFAULT_LAYOUT, DRPOLayoutAdapter, check_layout, stop_sequences
from drpo_dspy.modules.in_context import demo_pairs, in_context
from drpo_dspy.modules.program_file import PROGRAM_FIX, check_program_file
from drpo_dspy.modules.responder_state import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    Decoding,
    ExampleBank,
    check_decoding,
    check_demo_mode,
    check_k,
)
from drpo_dspy.primitives.fidelity import DEFAULT, Fidelity
from drpo_dspy.primitives.history import conversation_turns

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
_check_decoding = check_decoding  # the name other modules import

__all__ = ["DEFAULT_INSTRUCTIONS", "DEFAULT_MAX_TOKENS", "DEFAULT_TEMPERATURE", "AlignedAnswer", "AlignedResponder",
           "Decoding", "ExampleBank"]


class AlignedAnswer(dspy.Signature):
    """You are a helpful assistant."""

    query: str = dspy.InputField(desc="The user's query.")
    response: str = dspy.OutputField(desc="The assistant's answer.")


def _default_examples() -> list[dict]:
    from drpo_dspy.datasets import load_seed_examples

    return [{"query": e["query"], "answer": e["answer"]} for e in load_seed_examples()]


def _answer(pred: Any, query: str) -> str:
    """The prediction's answer; an empty one is logged (it is a failure: callers count it, never score it)."""
    response = (getattr(pred, "response", None) or "") if pred is not None else ""
    if not response.strip():
        logger.warning("the model gave an empty answer for query %.60r", query)
    return response


def _check_query(query: Any) -> None:
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")


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
        fixed_examples: Use the first ``k`` examples in bank order for every query instead of retrieving the most
            similar ones (a static, URIAL-style prompt).
        temperature: Decoding temperature of the answers (default 0: greedy, as the paper; ``None`` leaves it to
            the LM's settings and the server).
        demo_mode: How demos on ``respond.demos`` (set by BootstrapFewShot, KNNFewShot, ... or by hand) join the
            retrieved examples: "merge" (default: the demos first, then the retrieved examples) or "replace" (the
            demos instead of the retrieved examples, when there are any).
        layout: The prompt layout (see :mod:`drpo_dspy.adapters.drpo_layout`): "plain" (default: the live turn ends
            at ``# Answer:``, no ``<START>``/``<END>`` markers), "open" (markers around the examples' answers) or
            "marked" (the live turn ends at ``<START>``, as the original). Saved with the program.
        min_similarity: A floor on the cosine similarity of a retrieved example's query to the live query: examples
            below it are not shown (fewer than ``k``, or none). Small models copy unrelated examples into their
            answers; ``None`` (default) always shows ``k``. Saved with the program.

    Calling ``responder(query=..., history=None)`` returns ``dspy.Prediction(response=..., examples=[...])``,
    ``examples`` being the queries of the in-context examples in prompt order.
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
        demo_mode: str = "merge",
        layout: str = DEFAULT_LAYOUT,
        min_similarity: float | None = None,
    ):
        super().__init__()
        from drpo_dspy.retrievers.bank import AlignmentBank

        if not isinstance(instructions, str) or not instructions.strip():
            raise ValueError("instructions must be a non-empty string")
        check_demo_mode(demo_mode)
        check_layout(layout)
        if examples is None:
            examples = _default_examples()
        bank = examples if isinstance(examples, AlignmentBank) else AlignmentBank(examples, embedder=embedder)
        check_k(k, len(bank))
        self.decoding = Decoding(temperature, max_tokens, layout)
        self.respond = dspy.Predict(AlignedAnswer.with_instructions(instructions))
        self.examples = ExampleBank(bank, k, fixed=fixed_examples, demo_mode=demo_mode, min_similarity=min_similarity)
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
        check_decoding(self.decoding.temperature, value)
        self.decoding.max_tokens = value

    @property
    def temperature(self) -> float | None:
        return self.decoding.temperature

    @temperature.setter
    def temperature(self, value: float | None) -> None:
        check_decoding(value, self.decoding.max_tokens)
        self.decoding.temperature = value

    @property
    def layout(self) -> str:
        return self.decoding.layout

    @layout.setter
    def layout(self, value: str) -> None:
        check_layout(value)
        self.decoding.layout = value

    @property
    def k(self) -> int:
        return self.examples.k

    @k.setter
    def k(self, value: int) -> None:
        check_k(value, len(self.examples.bank))
        self.examples.k = value

    @property
    def demo_mode(self) -> str:
        return self.examples.demo_mode

    @demo_mode.setter
    def demo_mode(self, mode: str) -> None:
        check_demo_mode(mode)
        self.examples.demo_mode = mode

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
            return list(itertools.islice(self.examples.bank, k))  # the first k, without copying the whole bank
        floor = self.examples.min_similarity
        return [example for example, score in self.examples.bank.search(query, k) if floor is None or score >= floor]

    def _needs_retrieval(self, demos: list[tuple[str, str]]) -> bool:
        return bool(self.k) and not (self.demo_mode == "replace" and demos)

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

    def _request(self, query: str, turns: tuple, demos: list, retrieved: list, instructions: str | None,
                 fidelity: Fidelity) -> tuple[DRPOLayoutAdapter, dict[str, Any], list[tuple[str, str]]]:
        """The adapter and the predictor's arguments for one call (no LM chosen yet), and the examples shown."""
        shown = in_context(demos, [(e.shown_query, e.answer) for e in retrieved], self.demo_mode)
        signature = self.respond.signature
        if instructions is not None:
            signature = signature.with_instructions(instructions)
        arguments = {"query": query, "demos": [{"query": q, "response": a} for q, a in shown], "signature": signature}
        return DRPOLayoutAdapter(paper=fidelity.original_layout, history=turns, layout=self.layout), arguments, shown

    def request_settings(self, lm: Any = None, config: dict | None = None) -> dict[str, Any]:
        """What a call sends besides the prompt (stops, temperature, answer cap), as :meth:`forward` sends it."""
        return self._config(config, lm or self.respond.lm or dspy.settings.lm)

    def _config(self, config: dict | None, lm: Any, fidelity: Fidelity = DEFAULT) -> dict[str, Any]:
        """The call's settings: stops, then the saved decoding, then ``config``; an answer cap is always sent
        (the LM's own when this module has none, else the default), never left to a server's default."""
        merged = {"stop": stop_sequences(fidelity.original_layout), **self.decoding.config(), **(config or {})}
        if merged.get("max_tokens") is None and merged.get("max_completion_tokens") is None:
            own = getattr(lm, "kwargs", {}) or {}
            merged["max_tokens"] = own.get("max_tokens") or own.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        return merged

    def _prepare(self, query: str, history: Any, instructions: str | None, fidelity: Fidelity = DEFAULT
                 ) -> tuple[tuple, list]:
        """Validate the call's inputs before any retrieval or LM call."""
        _check_query(query)
        if instructions is not None and (not isinstance(instructions, str) or not instructions.strip()):
            raise ValueError("instructions must be a non-empty string")
        turns = conversation_turns(history)
        if turns and fidelity.original_layout:
            raise ValueError("the paper layout is single-turn: it has no place for a conversation's earlier turns")
        return turns, demo_pairs(self.respond.demos)

    def messages_for(self, query: str, history: Any = None, *, instructions: str | None = None,
                     fidelity: Fidelity = DEFAULT) -> list[dict[str, str]]:
        """Exactly the chat messages a call with these inputs sends (a text model gets their contents joined).

        ``instructions`` lays the call out under other instructions, as :meth:`respond_with` answers.
        """
        turns, demos = self._prepare(query, history, instructions, fidelity)
        retrieved = self.retrieve(query) if self._needs_retrieval(demos) else []
        adapter, arguments, _ = self._request(query, turns, demos, retrieved, instructions, fidelity)
        return adapter.format(arguments["signature"], arguments["demos"], {"query": query})

    def _call(self, query: str, history: Any, instructions: str | None, lm: Any, config: dict | None,
              fidelity: Fidelity = DEFAULT) -> tuple[str, list[tuple[str, str]]]:
        turns, demos = self._prepare(query, history, instructions, fidelity)
        retrieved = self.retrieve(query) if self._needs_retrieval(demos) else []
        adapter, arguments, shown = self._request(query, turns, demos, retrieved, instructions, fidelity)
        lm = self._lm_for_call(lm)
        with dspy.context(adapter=adapter):
            try:
                pred = self.respond(**arguments, lm=lm, config=self._config(config, lm, fidelity))
            except AdapterParseError:  # the model returned nothing at all
                pred = None
        return _answer(pred, query), shown

    async def _acall(self, query: str, history: Any, instructions: str | None, lm: Any, config: dict | None,
                     fidelity: Fidelity = DEFAULT) -> tuple[str, list[tuple[str, str]]]:
        turns, demos = self._prepare(query, history, instructions, fidelity)
        retrieved = await asyncio.to_thread(self.retrieve, query) if self._needs_retrieval(demos) else []
        adapter, arguments, shown = self._request(query, turns, demos, retrieved, instructions, fidelity)
        lm = self._lm_for_call(lm)
        with dspy.context(adapter=adapter):
            try:
                pred = await self.respond.acall(**arguments, lm=lm, config=self._config(config, lm, fidelity))
            except AdapterParseError:
                pred = None
        return _answer(pred, query), shown

    def forward(self, query: str, history: Any = None, lm: Any = None, config: dict | None = None
                ) -> dspy.Prediction:
        response, shown = self._call(query, history, None, lm, config)
        return dspy.Prediction(response=response, examples=[q for q, _ in shown])

    async def aforward(self, query: str, history: Any = None, lm: Any = None, config: dict | None = None
                       ) -> dspy.Prediction:
        response, shown = await self._acall(query, history, None, lm, config)
        return dspy.Prediction(response=response, examples=[q for q, _ in shown])

    def batch(self, examples: list[Any], *args: Any, **kwargs: Any) -> Any:
        """``dspy.Module.batch``, with the queries embedded first in one batched call (the bank's query-vector
        cache), instead of once per answer in each thread."""
        bank = self.examples.bank
        if self._needs_retrieval(demo_pairs(self.respond.demos)) and not self.examples.fixed and len(bank):
            queries = [q for q in dict.fromkeys(ex.get("query") for ex in examples) if isinstance(q, str) and q.strip()]
            try:
                if queries and bank.query_cache.maxsize:
                    bank.embed_queries(queries[: bank.query_cache.maxsize])
            except Exception:  # each answer embeds its own query again and reports what fails
                logger.debug("batched query embedding failed; answering without it", exc_info=True)
        return super().batch(examples, *args, **kwargs)

    def respond_with(self, instructions: str, query: str, *, lm: Any = None, fidelity: Fidelity = DEFAULT,
                     history: Any = None) -> str:
        """Answer ``query`` under other ``instructions`` without changing this module (used by the search);
        ``fidelity=PAPER`` formats the prompt as the original code does during its search."""
        return self._call(query, history, instructions, lm, None, fidelity)[0]

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
            check_program_file(path)
        elif not path.is_file():
            raise FileNotFoundError(f"program file {path} does not exist")
        try:
            return super().load(path, allow_pickle=allow_pickle, allow_unsafe_lm_state=allow_unsafe_lm_state)
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path} is not a usable AlignedResponder program ({detail}); {PROGRAM_FIX}") from exc

    def __deepcopy__(self, memo: dict) -> AlignedResponder:
        new = copy.copy(self)
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name in ("_raw_lms", "_raw_lock"):
                continue
            setattr(new, name, copy.deepcopy(value, memo))
        new._raw_lms, new._raw_lock = {}, threading.Lock()
        return new

    def __getstate__(self) -> dict[str, Any]:  # pickling (save_program=True): the raw-route cache is rebuilt
        state = super().__getstate__()
        state.pop("_raw_lms", None)
        state.pop("_raw_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._raw_lms, self._raw_lock = {}, threading.Lock()
