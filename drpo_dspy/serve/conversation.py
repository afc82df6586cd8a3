"""OpenAI chat messages -> a conversation -> the DRPO layout the compiled program answers in.

The layout is the responder's own: :func:`conversation_messages` asks ``AlignedResponder.messages_for`` for exactly
the messages the program sends for the conversation (its retrieval for the last user turn, its demos, its layout),
and :func:`layout_messages` lays out given examples with the same ``build_messages``. System = aligned
instructions + the in-context examples; earlier turns follow as chat turns (the user turn as ``# Query:``, the
assistant turn as the answer closed by ``<END>``), so a text (base) model sees one continuous DRPO document; the
last user turn opens ``<START>``. A client's own system message follows the aligned instructions, before the examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from drpo_dspy.adapters.drpo_layout import build_messages
from drpo_dspy.serve.errors import bad_request

_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Conversation:
    """The client's system text (if any), the finished (user, assistant) turns, and the user turn to answer."""

    query: str
    turns: tuple[tuple[str, str], ...] = ()
    system: str = ""


def content_text(content: Any, index: int) -> str:
    """A message's text: a string, or a list of text parts joined (other parts are a 400)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"messages[{index}].content: only text parts are supported, got {kind!r}",
                                  param=f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise bad_request(f"messages[{index}].content must be a string or a list of text parts",
                      param=f"messages[{index}].content")


def parse_messages(messages: Any, *, max_messages: int) -> Conversation:
    """Validate OpenAI chat ``messages`` and fold them into a :class:`Conversation` (400 errors on bad input).

    Consecutive messages of one role are joined with a blank line; the last message must come from the user.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages",
                          code="invalid_type" if not isinstance(messages, list) else "empty_array")
    if len(messages) > max_messages:
        raise bad_request(f"'messages' has {len(messages)} entries; this server accepts at most {max_messages}",
                          param="messages")
    system: list[str] = []
    blocks: list[tuple[str, list[str]]] = []  # (role, texts) with roles alternating user / assistant
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object with 'role' and 'content'",
                              param=f"messages[{index}]")
        role = message.get("role")
        if message.get("tool_calls") or message.get("function_call"):
            raise bad_request(f"messages[{index}]: tool calls need the plain layout (a request with tools)",
                              param=f"messages[{index}]")
        text = content_text(message.get("content"), index)
        if role in _SYSTEM_ROLES:
            if text.strip():
                system.append(text.strip())
        elif role in ("user", "assistant"):
            if blocks and blocks[-1][0] == role:
                blocks[-1][1].append(text)
            else:
                blocks.append((role, [text]))
        else:
            raise bad_request(f"messages[{index}].role {role!r} is not supported; use system, user or assistant",
                              param=f"messages[{index}].role")
    if not blocks or blocks[-1][0] != "user":
        raise bad_request("the last message must come from the user: it is the turn the program answers",
                          param="messages")
    if blocks[0][0] != "user":
        raise bad_request("an assistant message comes before any user message; a conversation starts with the user",
                          param="messages")
    texts = ["\n\n".join(parts) for _role, parts in blocks]
    query = texts[-1]
    if not query.strip():
        raise bad_request("the last user message is empty", param="messages")
    turns = tuple(zip(texts[:-1:2], texts[1:-1:2]))
    return Conversation(query=query, turns=turns, system="\n\n".join(system))


def parse_prompt(prompt: Any) -> Conversation:
    """A ``/v1/completions`` prompt (a string, or a list holding one string) as a single-turn conversation."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise bad_request("'prompt' must be one string; batched prompts are not supported", param="prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("'prompt' must be a non-empty string", param="prompt")
    return Conversation(query=prompt)


def _with_client_system(instructions: str, conversation: Conversation) -> str:
    return f"{instructions.strip()}\n\n{conversation.system}" if conversation.system else instructions


def conversation_history(conversation: Conversation) -> dspy.History:
    """The conversation's finished turns as a ``dspy.History`` of ``{query, response}`` exchanges."""
    return dspy.History(messages=[{"query": query, "response": answer} for query, answer in conversation.turns])


def conversation_messages(responder: Any, conversation: Conversation) -> list[dict[str, str]]:
    """Exactly what ``responder`` sends for ``conversation`` (``AlignedResponder.messages_for``); it retrieves, so
    call it off the event loop."""
    instructions = _with_client_system(responder.instructions, conversation) if conversation.system else None
    return responder.messages_for(conversation.query, conversation_history(conversation), instructions=instructions)


def layout_messages(instructions: str, examples: Iterable[tuple[str, str]], conversation: Conversation
                    ) -> list[dict[str, str]]:
    """The chat messages in the DRPO layout (for a text model the route concatenates their contents)."""
    return build_messages(_with_client_system(instructions, conversation), examples, conversation.query,
                          history=conversation.turns)


def example_pairs(examples: Sequence[Any]) -> list[tuple[str, str]]:
    """``(query, answer)`` pairs of retrieved bank examples, as the responder puts them in its prompt."""
    return [(str(getattr(example, "shown_query", example.query)), str(example.answer)) for example in examples]
