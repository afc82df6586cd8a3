"""In-context examples: a (query, answer) pair with the provenance of how its answer came to be.

Answers are stored without the ``<START>``/``<END>`` markers; the DRPO prompt layout adds them.

An example may be a conversation: ``history`` holds its earlier ``(user, assistant)`` turns and ``query`` its last
user turn. It is retrieved by that last user turn (the live query is a conversation's last user turn too, so
like is compared with like), identified by its transcript (``shown_query``: the earlier exchanges, then the final
query), and shown in the DRPO layout with that transcript in the example's ``# Query:`` block. Without history an
example is what it always was, in memory, on disk and in the prompt.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.adapters.drpo_layout import END, START
from drpo_dspy.primitives.conversation_query import Turn, transcript, turns_of


def strip_answer_markers(text: str) -> str:
    """Remove a leading ``<START>`` and a trailing ``<END>`` (and surrounding whitespace) from a published answer.

    Text without markers is returned stripped; one marker alone, or a marker anywhere else, is a ValueError.
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}")
    body = text.strip()
    has_start, has_end = body.startswith(START), body.endswith(END)
    if has_start != has_end:
        present, absent = (START, END) if has_start else (END, START)
        raise ValueError(f"answer has {present} but no {absent}; expected '{START}...{END}' or no markers at all")
    if has_start:
        body = body[len(START) : len(body) - len(END)].strip()
    if START in body or END in body:
        raise ValueError(f"answer contains {START}/{END} in the middle of the text; only a leading {START} "
                         f"and a trailing {END} are allowed")
    return body


def normalize_query(query: str) -> str:
    """The duplicate-detection key of a query: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


@dataclass
class ICLExample:
    """One in-context example: a query, its aligned answer (no markers) and where it came from."""

    query: str
    answer: str
    provenance: list[dict] = field(default_factory=list)
    history: tuple[Turn, ...] = ()  # earlier (user, assistant) turns of a conversation example

    def __post_init__(self) -> None:
        self.history = turns_of(self.history) if self.history else ()
        for name in ("query", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"ICLExample.{name} must be a str, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"ICLExample.{name} must not be empty (query: {self.query!r})")
        body = self.answer.strip()
        if body.startswith(START) or body.endswith(END):
            raise ValueError(f"answer for query {self.query!r} still has {START}/{END} markers; answers are stored "
                             "without them: use strip_answer_markers(answer)")
        if not isinstance(self.provenance, list) or not all(isinstance(p, dict) for p in self.provenance):
            raise TypeError(f"ICLExample.provenance must be a list of dicts (query: {self.query!r})")

    @property
    def shown_query(self) -> str:
        """The query as the prompt shows it: the query, or a conversation's earlier exchanges then its last turn."""
        return transcript(self.history, self.query)

    @property
    def key(self) -> str:
        """The duplicate-detection key: the normalised ``shown_query``."""
        return normalize_query(self.shown_query)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with keys query, answer, provenance (and history, for a conversation)."""
        data = {"query": self.query, "answer": self.answer, "provenance": [dict(p) for p in self.provenance]}
        if self.history:
            data["history"] = [{"query": q, "response": a} for q, a in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ICLExample:
        """Inverse of ``to_dict``; missing or unknown keys are a ValueError."""
        if not isinstance(data, Mapping):
            raise TypeError(f"an ICL example must be a mapping, got {type(data).__name__}")
        missing = [key for key in ("query", "answer") if key not in data]
        unknown = sorted(set(data) - {"query", "answer", "provenance", "history"})
        if missing or unknown:
            raise ValueError(f"ICL example has missing keys {missing} / unknown keys {unknown}: {dict(data)!r:.200}")
        provenance = data.get("provenance")
        return cls(data["query"], data["answer"], [] if provenance is None else list(provenance),
                   data.get("history") or ())

    def copy(self) -> ICLExample:
        """An independent copy (provenance dicts copied too)."""
        return ICLExample(self.query, self.answer, [dict(p) for p in self.provenance], self.history)


def to_example(item: Any, position: int) -> ICLExample:
    """An ICLExample from an ICLExample (copied), a dict or a (query, answer) pair; errors name the position."""
    try:
        if isinstance(item, ICLExample):
            return item.copy()
        if isinstance(item, Mapping):
            return ICLExample.from_dict(item)
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return ICLExample(item[0], item[1])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"example #{position}: {exc}") from exc
    raise TypeError(f"example #{position} must be an ICLExample, a dict or a (query, answer) pair, "
                    f"got {type(item).__name__}")


def coerce_example(item: Any, index: int = 0) -> ICLExample:
    """An example from a user's file or list, tolerantly: like :func:`to_example`, but a published answer may keep
    its ``<START>``/``<END>`` markers and a record may carry keys of its own (an id, a category), which are ignored.
    Every error is a ValueError naming the position."""
    if isinstance(item, Mapping):
        if "query" not in item or "answer" not in item:
            raise ValueError(f"example #{index}: a dict example needs 'query' and 'answer' keys")
        item = {key: item[key] for key in ("query", "answer", "provenance", "history") if item.get(key) is not None}
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        item = {"query": item[0], "answer": item[1]}
    if isinstance(item, dict) and isinstance(item.get("answer"), str):
        try:
            item["answer"] = strip_answer_markers(item["answer"])
        except ValueError as exc:
            raise ValueError(f"example #{index}: {exc}") from exc
    try:
        return to_example(item, index)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
