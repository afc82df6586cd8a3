"""Conversations as DRPO training queries and bank examples.

A :class:`ConversationQuery` is a ``str`` whose text is a readable transcript of the conversation (the earlier
turns, then the last user turn); it also carries the structured turns. The judge, the aspect selector and the
optimizer read the transcript, so every cache, key and record keyed by query text works unchanged; the base model
answers the last user turn with the earlier turns as ``history``, in the DRPO layout. A conversation without
earlier turns is just its last user turn, a plain ``str``: single-turn runs are byte for byte as before.

Accepted forms (:func:`parse_conversation`): a string; a ``dspy.Example``/dict with ``query`` (or
``instruction``) and an optional ``history`` (``dspy.History``, ``{"query", "response"}`` exchanges, or
OpenAI-style messages); a dict ``{"messages": [...]}``; or a list of OpenAI-style ``{"role", "content"}``
messages alternating user and assistant and ending with a user turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dspy

from drpo_dspy.primitives.history import Turn, conversation_turns

EARLIER_HEADER = "Earlier turns of the conversation:"
LAST_HEADER = "Last user turn (the one to answer):"

__all__ = ["ConversationQuery", "live_query", "parse_conversation", "query_record", "transcript", "turns_of"]


def transcript(turns: Sequence[Turn], query: str) -> str:
    """The readable text of a conversation: the earlier exchanges, then the last user turn (``query`` alone
    when there are no earlier turns)."""
    if not turns:
        return query
    lines = [EARLIER_HEADER]
    for user, assistant in turns:
        lines += [f"User: {user.strip()}", f"Assistant: {assistant.strip()}"]
    return "\n".join(lines) + f"\n\n{LAST_HEADER}\n{query}"


def turns_of(history: Any) -> tuple[Turn, ...]:
    """Earlier turns from ``history`` (anything ``AlignedResponder`` takes, or ``(user, assistant)`` pairs)."""
    if isinstance(history, Sequence) and not isinstance(history, str | bytes) and history and all(
            isinstance(t, tuple | list) and len(t) == 2 for t in history):
        for i, (user, assistant) in enumerate(history):
            if not isinstance(user, str) or not isinstance(assistant, str):
                raise ValueError(f"history turn {i} must be a pair of strings")
        return tuple((u, a) for u, a in history)
    return conversation_turns(history)


class ConversationQuery(str):
    """A conversation to answer: ``str(self)`` is its transcript; ``query`` the last user turn, ``turns`` the
    earlier ``(user, assistant)`` exchanges, ``history`` the same as a ``dspy.History``. Immutable; JSON form:
    :func:`query_record`."""

    query: str
    turns: tuple[Turn, ...]

    def __new__(cls, query: str, history: Any = None) -> ConversationQuery:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("a conversation's last user turn must be a non-empty string")
        turns = turns_of(history)
        for i, (user, assistant) in enumerate(turns):
            if not user.strip() or not assistant.strip():
                role = "user" if not user.strip() else "assistant"
                raise ValueError(f"turn {i} of the conversation has an empty {role} message")
        self = super().__new__(cls, transcript(turns, query))
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "turns", turns)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ConversationQuery is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.query, self.turns)

    def __deepcopy__(self, memo: dict) -> ConversationQuery:
        return self

    def __repr__(self) -> str:
        return f"ConversationQuery(query={self.query!r}, turns={len(self.turns)})"

    @property
    def history(self) -> dspy.History:
        return dspy.History(messages=[{"query": u, "response": a} for u, a in self.turns])

    def messages(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style messages, ending with the last user turn."""
        out = []
        for user, assistant in self.turns:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return [*out, {"role": "user", "content": self.query}]


def live_query(query: str) -> str:
    """The text the base model answers and retrieval searches with: the last user turn."""
    return query.query if isinstance(query, ConversationQuery) else query


def query_record(query: str) -> str | dict[str, Any]:
    """JSON form of a query: the string itself, or ``{"messages": [...]}`` for a conversation (round-trips through
    :func:`parse_conversation`)."""
    return {"messages": query.messages()} if isinstance(query, ConversationQuery) and query.turns else str(query)


def _from_messages(messages: Any, where: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: a conversation needs a non-empty list of {{role, content}} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: message {i} must be a {{role, content}} object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role == "system":
            raise ValueError(f"{where}: message {i} is a system message; DRPO writes the system prompt itself, so "
                             "training conversations hold only user and assistant turns")
        if role not in ("user", "assistant"):
            raise ValueError(f"{where}: message {i} has an unknown role {role!r} (expected 'user' or 'assistant')")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {i} content must be a string, got {type(content).__name__}")
    if messages[-1]["role"] != "user":
        raise ValueError(f"{where}: the last message must be a user turn (the one the model answers), got "
                         f"{messages[-1]['role']!r}")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"{where}: message {i} is a {message['role']} turn where a {expected} turn was "
                             "expected; a conversation alternates user and assistant turns, starting with the user")
    pairs = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages) - 1, 2)]
    return _build(messages[-1]["content"], pairs, where)


def _build(query: Any, history: Any, where: str) -> str:
    if not isinstance(query, str):
        raise ValueError(f"{where}: the last user turn must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError(f"{where} is an empty query")
    try:
        turns = turns_of(history)
        return ConversationQuery(query, turns) if turns else query
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_conversation(item: Any, where: str) -> Any:
    """A plain query string or a :class:`ConversationQuery` from one trainset item; anything else is returned as
    it is (the caller reports it). Bad conversations raise a ValueError naming ``where``."""
    if isinstance(item, ConversationQuery):
        return item
    if isinstance(item, list):
        return _from_messages(item, where)
    if isinstance(item, dspy.Example | dict):
        if "messages" in item:
            if item.get("query") is not None or item.get("history") is not None:
                raise ValueError(f"{where}: give either 'messages' or 'query' (with 'history'), not both")
            return _from_messages(item["messages"], where)
        query = item.get("query", item.get("instruction"))
        history = item.get("history")
        if history is not None and isinstance(query, str):
            return _build(query, history, where)
        return query
    return item
