"""The plain layout, for requests the DRPO ``# Query:``/``# Answer:`` layout cannot carry: tools and tool
conversations, and structured output on a chat base model.

One system message holds the program's aligned instructions, then its in-context examples written as plain text
(``User:`` / ``Assistant:``, no markers), then the client's own system text (often an output format, so it stays
nearest the conversation). The client's messages follow verbatim: user turns, assistant turns with ``tool_calls``,
``tool`` results. The examples are the ones the program shows for the last *user* message's text (its demos and
its retrieval, as ``AlignedResponder`` chooses them), never for a tool result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drpo_dspy.modules.in_context import demo_pairs, in_context
from drpo_dspy.serve.conversation import content_text, example_pairs
from drpo_dspy.serve.errors import bad_request

_SYSTEM_ROLES = ("system", "developer")
_KEPT = {"user": ("role", "content", "name"), "assistant": ("role", "content", "name", "tool_calls"),
         "tool": ("role", "content", "tool_call_id")}
EXAMPLES_HEADER = ("Examples of good answers (they show how to answer; they are not part of this "
                   "conversation):")


@dataclass(frozen=True)
class PlainConversation:
    """The client's system text, its other messages as sent, and the last user text (what examples are for)."""

    query: str
    messages: tuple[dict[str, Any], ...]
    system: str = ""


def has_tool_messages(messages: Any) -> bool:
    """Whether a chat request's messages hold tool calls or tool results (such a request uses the plain layout)."""
    if not isinstance(messages, list):
        return False
    return any(isinstance(m, dict) and (m.get("role") in ("tool", "function") or m.get("tool_calls")
                                        or m.get("function_call")) for m in messages)


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list) or not calls:
        raise bad_request(f"{where} must be a non-empty list", param=where)
    checked = []
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call, dict) or not isinstance(call.get("id"), str) or not call["id"]
                or call.get("type", "function") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str)):
            raise bad_request(f"{where}[{number}] must be {{id, type: 'function', function: {{name, arguments}}}} "
                              "with string id, name and arguments", param=f"{where}[{number}]")
        checked.append({"id": call["id"], "type": "function",
                        "function": {"name": function["name"], "arguments": function["arguments"]}})
    return checked


def _kept(message: dict[str, Any]) -> dict[str, Any]:
    """The message as forwarded: its OpenAI fields, without the empty ones clients echo back (refusal, audio)."""
    kept = {key: message[key] for key in _KEPT[message["role"]] if message.get(key) is not None}
    if message["role"] == "assistant":
        kept.setdefault("content", None if kept.get("tool_calls") else "")
    return kept


def parse_plain_messages(messages: Any, *, max_messages: int) -> PlainConversation:
    """Validate chat ``messages`` that may hold tool calls and tool results (400s naming the message).

    Every ``tool`` message answers a tool call of an earlier assistant message; the conversation ends with a user
    message or a tool result; some user message has text (the examples are retrieved for the last one).
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages",
                          code="invalid_type" if not isinstance(messages, list) else "empty_array")
    if len(messages) > max_messages:
        raise bad_request(f"'messages' has {len(messages)} entries; this server accepts at most {max_messages}",
                          param="messages")
    system: list[str] = []
    kept: list[dict[str, Any]] = []
    query, called = "", set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object with 'role' and 'content'",
                              param=f"messages[{index}]")
        role = message.get("role")
        if role == "function" or message.get("function_call"):
            raise bad_request(f"messages[{index}]: legacy function calling is not supported; use tools, "
                              "tool_calls and role 'tool'", param=f"messages[{index}]")
        text = content_text(message.get("content"), index)
        if role in _SYSTEM_ROLES:
            if text.strip():
                system.append(text.strip())
            continue
        if role not in ("user", "assistant", "tool"):
            raise bad_request(f"messages[{index}].role {role!r} is not supported; use system, user, assistant "
                              "or tool", param=f"messages[{index}].role")
        entry = _kept(message)
        if role == "user":
            query = text
        elif role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = _tool_calls(message["tool_calls"], index)
            called |= {call["id"] for call in entry["tool_calls"]}
        elif role == "assistant" and message.get("tool_calls") is not None:
            entry.pop("tool_calls", None)  # an empty list, as some clients send
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in called:
                raise bad_request(f"messages[{index}]: a tool message needs the 'tool_call_id' of a tool call made "
                                  "by an earlier assistant message", param=f"messages[{index}].tool_call_id")
        kept.append(entry)
    if not kept or kept[-1]["role"] not in ("user", "tool"):
        raise bad_request("the last message must come from the user or be a tool result: it is the turn the "
                          "program answers", param="messages")
    if not query.strip():
        raise bad_request("no user message has text: the program's examples are chosen for the last user "
                          "message", param="messages")
    return PlainConversation(query=query, messages=tuple(kept), system="\n\n".join(system))


def prompt_conversation(prompt: str) -> PlainConversation:
    """A ``/v1/completions`` prompt as a one-message plain conversation."""
    return PlainConversation(query=prompt, messages=({"role": "user", "content": prompt},))


def shown_examples(responder: Any, query: str) -> list[tuple[str, str]]:
    """The examples the program shows for ``query``: its demos and retrieved examples, as its ``demo_mode`` says
    (what ``AlignedResponder`` puts in its prompt). It retrieves, so call it off the event loop."""
    demos = demo_pairs(responder.respond.demos)
    retrieve = bool(responder.k) and not (responder.demo_mode == "replace" and demos)
    retrieved = example_pairs(responder.retrieve(query)) if retrieve else []
    return in_context(demos, retrieved, responder.demo_mode)


def plain_system(instructions: str, examples: Iterable[tuple[str, str]], client_system: str = "") -> str:
    """The one system message of the plain layout."""
    parts = [instructions.strip()]
    shown = [f"Example {number}\nUser: {query.strip()}\nAssistant: {answer.strip()}"
             for number, (query, answer) in enumerate(examples, 1)]
    if shown:
        parts.append("\n\n".join([EXAMPLES_HEADER, *shown]))
    if client_system.strip():
        parts.append(client_system.strip())
    return "\n\n".join(parts)


def plain_messages(responder: Any, conversation: PlainConversation) -> list[dict[str, Any]]:
    """The messages sent for ``conversation``: the plain system message, then the client's messages."""
    system = plain_system(responder.instructions, shown_examples(responder, conversation.query), conversation.system)
    return [{"role": "system", "content": system}, *(dict(m) for m in conversation.messages)]

