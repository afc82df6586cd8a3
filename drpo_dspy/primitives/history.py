"""A conversation's earlier turns, as the responder lays them out: ``(user, assistant)`` text pairs.

``dspy.History`` messages follow DSPy's convention, one dict per exchange keyed by the signature's fields:
``{"query": ..., "response": ...}`` (``"answer"`` is accepted for ``"response"``). OpenAI-style
``{"role", "content"}`` messages are accepted too, alternating user and assistant and starting with the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

Turn = tuple[str, str]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"history {where} must be a string, got {type(value).__name__}")
    return value


def _role_turns(messages: Sequence[dict[str, Any]]) -> list[Turn]:
    if len(messages) % 2:
        raise ValueError("history in {role, content} form must alternate user and assistant messages and end with "
                         "an assistant message (the live turn is the query argument)")
    turns = []
    for i in range(0, len(messages), 2):
        user, assistant = messages[i], messages[i + 1]
        if user.get("role") != "user" or assistant.get("role") != "assistant":
            raise ValueError(f"history messages {i} and {i + 1} must be a user then an assistant message, got "
                             f"{user.get('role')!r} then {assistant.get('role')!r}")
        turns.append((_text(user.get("content"), f"message {i} content"),
                      _text(assistant.get("content"), f"message {i + 1} content")))
    return turns


def conversation_turns(history: Any) -> tuple[Turn, ...]:
    """The earlier ``(user, assistant)`` turns of ``history`` (``None``: a single-turn call), validated."""
    if history is None:
        return ()
    messages = history.messages if isinstance(history, dspy.History) else history
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ValueError(f"history must be a dspy.History or a list of messages, got {type(history).__name__}")
    if not all(isinstance(m, dict) for m in messages):
        raise ValueError("history messages must be dicts such as {'query': ..., 'response': ...}")
    if messages and all("role" in m for m in messages):
        return tuple(_role_turns(messages))
    turns = []
    for i, message in enumerate(messages):
        answer_key = "response" if "response" in message else "answer"
        if "query" not in message or answer_key not in message:
            raise ValueError(f"history message {i} needs 'query' and 'response' keys (an earlier exchange), got "
                             f"{sorted(message)}")
        turns.append((_text(message["query"], f"message {i} query"),
                      _text(message[answer_key], f"message {i} {answer_key}")))
    return tuple(turns)
