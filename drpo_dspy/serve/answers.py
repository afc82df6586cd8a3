"""What a completion's answer is, per layout, and the log probabilities of the returned text.

Three shapes of answer:

- ``layout``: the DRPO layout's answer (:func:`~drpo_dspy.adapters.drpo_layout.answer_parts`): cut at an end marker
  or a ``# Query:``/``# Answer:`` heading, without a leading ``<START>`` or ``# Answer:``, stripped;
- ``plain`` (tool requests and tool conversations, in the plain layout): the text as the model wrote it, stripped,
  cut only at an end marker (``<END>`` in any spelling, or a leaked chat-template end token) should one appear;
- ``json`` (structured output): the text stripped and nothing cut, so the JSON the client asked for stays whole;
  a raw control character inside a JSON string (which llama-cpp-python's schema grammar lets through, e.g. a
  newline) is written as its escape (``\\n``), so the answer parses; nothing else changes.

Log probabilities are trimmed to the returned text: the token entries whose characters overlap the answer, in order
(token spans are the running sum of the entries' ``token`` lengths, placed where the answer starts in the raw
completion). The first and last kept tokens may carry a few characters the server removed (a leading space, the
start of a marker); tokens wholly outside the answer (``<START>``, ``<END>`` and after, stripped whitespace) are
dropped. Streamed and non-streamed answers keep the same entries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drpo_dspy.adapters.drpo_layout import answer_parts

Parts = Callable[[str], tuple[str, bool]]
# An end marker with its closing bracket ("<END>", "<end>", "</End>", "< END >") or a chat template's end token.
_END_MARKER = re.compile(r"<\s*/?\s*end\s*>|<\|(?:eot_id|im_end|endoftext)\|>|<end_of_turn>", re.IGNORECASE)


def plain_parts(completion: str) -> tuple[str, bool]:
    """``(answer, ended)`` for the plain layout: the text before an end marker (if any), stripped."""
    text = completion or ""
    end = _END_MARKER.search(text)
    return (text if end is None else text[: end.start()]).strip(), end is not None


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def escape_string_controls(text: str) -> str:
    """``text`` with each raw control character inside a JSON string literal escaped (left to right, so the
    escaped text of a prefix is a prefix of the escaped whole: it can be streamed)."""
    if not any(ord(char) < 0x20 for char in text):
        return text
    out, inside, escaped = [], False, False
    for char in text:
        if inside and not escaped and ord(char) < 0x20:
            out.append(_ESCAPES.get(char, f"\\u{ord(char):04x}"))
            continue
        out.append(char)
        if inside and not escaped and char == "\\":
            escaped = True
            continue
        if char == '"' and not escaped:
            inside = not inside
        escaped = False
    return "".join(out)


def json_parts(completion: str) -> tuple[str, bool]:
    """``(answer, ended)`` for structured output: the whole text, stripped (a cut would break the JSON), raw
    control characters inside its strings escaped."""
    return escape_string_controls(completion or "").strip(), False


PARTS: dict[str, Parts] = {"layout": answer_parts, "plain": plain_parts, "json": json_parts}

Logprob = tuple[dict[str, Any], int]  # (token entry, its offset from the start of the returned text)


def answer_start(raw: str, answer: str) -> int:
    """Where ``answer`` (or the answer so far) starts in the raw completion."""
    if not answer:
        return 0
    at = raw.find(answer)
    return at if at >= 0 else max(0, raw.find(answer[:1]))


class LogprobTrack:
    """Token entries of one completion as they arrive, handed out once their token overlaps the returned text."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.spans: list[tuple[int, int]] = []
        self.length = 0
        self.handed = 0

    def add(self, entries: list[dict[str, Any]] | None) -> None:
        for entry in entries or ():
            size = len(str(entry.get("token") or ""))
            self.entries.append(entry)
            self.spans.append((self.length, self.length + size))
            self.length += size

    def take(self, raw: str, answer: str) -> list[Logprob]:
        """The entries not handed out yet whose token starts before the end of ``answer`` (the returned text so
        far); those wholly before it are skipped. Call with the whole answer at the end."""
        if not answer:
            return []
        start = answer_start(raw, answer)
        end = start + len(answer)
        taken: list[Logprob] = []
        while self.handed < len(self.entries) and self.spans[self.handed][0] < end:
            first, last = self.spans[self.handed]
            if last > start:
                taken.append((self.entries[self.handed], first - start))
            self.handed += 1
        return taken


def trim_logprobs(raw: str, answer: str, entries: list[dict[str, Any]] | None) -> list[Logprob]:
    """The entries of the tokens that overlap ``answer`` in ``raw`` (see the module docstring)."""
    track = LogprobTrack()
    track.add(entries)
    return track.take(raw, answer)


@dataclass(frozen=True)
class Answer:
    """One choice as the client gets it: the answer text, why it ended, tool calls, trimmed logprobs."""

    text: str
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[Logprob] | None = None  # None: not asked for


def answer_of(choice: Any, shape: str, logprobs: bool) -> Answer:
    """The :class:`Answer` of one upstream choice (``upstream.Choice``)."""
    text = PARTS[shape](choice.text)[0]
    trimmed = trim_logprobs(choice.text, text, choice.logprobs) if logprobs else None
    return Answer(text, choice.finish_reason, choice.tool_calls or None, trimmed)
