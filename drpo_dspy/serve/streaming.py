"""A streamed answer: upstream deltas -> OpenAI chunks, one answer-extraction stream per choice.

Each choice (``n > 1``: by index) has its own :class:`~drpo_dspy.serve.answer_stream.AnswerStream`, so its
concatenated text deltas equal the non-streamed answer; its token logprobs are sent with the text they belong to
(:class:`~drpo_dspy.serve.answers.LogprobTrack`); tool-call pieces pass through as they come. In the DRPO layout
the upstream stream is closed once every choice has reached its end marker; in the plain layout it is read to the
end (tool calls may follow the text) and text after a marker is dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.serve.answer_stream import AnswerStream
from drpo_dspy.serve.answers import PARTS, LogprobTrack
from drpo_dspy.serve.payloads import ChunkWriter
from drpo_dspy.serve.upstream import Delta


@dataclass
class ChoiceState:
    """One choice of a stream: its answer so far, its logprobs, whether it made tool calls, how it ended."""

    answer: AnswerStream
    track: LogprobTrack = field(default_factory=LogprobTrack)
    finish: str | None = None
    called: bool = False


@dataclass
class StreamResult:
    """What the stream sent, for the prompt log once it ends."""

    answers: dict[int, str] = field(default_factory=dict)
    tokens: tuple[int, int] = (0, 0)


async def answer_chunks(writer: ChunkWriter, deltas: AsyncIterator[Delta], *, n: int, shape: str, logprobs: bool,
                        include_usage: bool, result: StreamResult) -> AsyncIterator[str]:
    """The chunks of a streamed answer, the final (finish_reason) chunk of every choice, and the usage chunk."""
    parts = PARTS[shape]
    states: dict[int, ChoiceState] = {}

    def state(index: int) -> ChoiceState:
        if index not in states:
            states[index] = ChoiceState(AnswerStream(parts))
        return states[index]

    for index in range(n):  # every choice gets its final chunk, even one the upstream never wrote to
        state(index)
        if writer.kind == "chat":
            yield writer.chunk(None, role=True, index=index)
    async for delta in deltas:
        result.tokens = delta.usage or result.tokens
        choice = state(delta.index)
        choice.track.add(delta.logprobs if logprobs else None)
        text = choice.answer.feed(delta.text)
        taken = choice.track.take(choice.answer.raw, choice.answer.sent) if logprobs else None
        if text or taken:
            yield writer.chunk(text, index=delta.index, logprobs=taken)
        if delta.tool_calls:
            choice.called = True
            yield writer.chunk(None, index=delta.index, tool_calls=delta.tool_calls)
        choice.finish = delta.finish_reason or choice.finish
        if shape == "layout" and len(states) >= n and all(s.answer.stopped for s in states.values()):
            break
    for index, choice in sorted(states.items()):
        rest = choice.answer.finish()
        taken = choice.track.take(choice.answer.raw, choice.answer.sent) if logprobs else None
        if rest or taken:
            yield writer.chunk(rest, index=index, logprobs=taken)
        yield writer.chunk(None, _finish_reason(choice, shape), index=index)
        result.answers[index] = choice.answer.sent
    if include_usage:
        yield writer.usage_chunk(result.tokens)


def _finish_reason(choice: ChoiceState, shape: str) -> str:
    if shape == "layout" and choice.answer.stopped:
        return "stop"  # the answer ended at its marker, whatever the upstream went on to do
    return choice.finish or ("tool_calls" if choice.called else "stop")


def answers_text(result: StreamResult) -> list[Any]:
    return [result.answers[index] for index in sorted(result.answers)]
