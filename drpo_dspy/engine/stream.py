"""Streaming the embedded model's completions: text handed from the decoding thread to the reader as it is made.

A streamed request is one completion (n=1) decoded on a thread of its own (a parallel decoder's worker, or, with
the parallel decoders off, a thread holding the runtime's lock as ``EmbeddedRuntime.generate`` does) by exactly the
steps of the non-streamed path, its text assembled by ``embedded_text.CompletionText``. After each token the
decoder offers ``CompletionText.certain()`` -- the text so far less a tail that could still begin a stop string --
and at the end the finished text: the deltas a reader gets always add up to the non-streamed text, and never show
a stop string. Closing the reader early (or ``cancel()``) stops the decoder at its next token, which then frees
its context or the lock as a finished completion does.

``chunks``/``achunks`` turn a ``TextStream`` into litellm ``GenericStreamingChunk`` dicts for a ``CustomLLM``'s
``streaming``/``astreaming``: text deltas, then a last chunk with the finish reason and the token usage.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from litellm.types.utils import GenericStreamingChunk

from drpo_dspy.engine.completion_text import CompletionText, Sample

logger = logging.getLogger(__name__)


class StreamCancelled(Exception):
    """The reader went away before the completion finished."""


class _End:
    def __init__(self, sample: Sample | None = None, error: BaseException | None = None) -> None:
        self.sample, self.error = sample, error


class TextStream:
    """One streamed completion: the decoder calls ``offer``/``finish``/``fail``; a reader iterates ``str`` deltas
    (sync or async) and then finds the result in ``sample``. ``cancel()`` asks the decoder to stop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[str | _End] = deque()
        self._wake: Callable[[], None] | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._sent = bytearray()  # the bytes whose text has been handed over
        self.cancelled = threading.Event()
        self.sample: Sample | None = None

    # ------------------------------------------------------------------ decoder side

    def _push(self, item: str | _End) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            wake = self._wake
        if wake is not None:
            wake()

    def offer(self, certain: bytes) -> bool:
        """Hand over what ``certain`` (the final text's sure beginning) adds; True when the reader has gone."""
        if len(certain) > len(self._sent):
            fresh = certain[len(self._sent):]
            self._sent += fresh
            text = self._utf8.decode(fresh)  # an incomplete UTF-8 character waits for its other bytes
            if text:
                self._push(text)
        return self.cancelled.is_set()

    def finish(self, sample: Sample, final: bytes) -> None:
        """The completion is over: hand over the rest of its text (``final``, whose text is ``sample.text``)."""
        if not final.startswith(self._sent):  # cannot happen: offered text is always a prefix of the final text
            logger.error("streamed text diverged from the completion; the stream's text is not the completion's")
        rest = self._utf8.decode(final[len(self._sent):], final=True)
        if rest:
            self._push(rest)
        self._push(_End(sample))

    def fail(self, error: BaseException) -> None:
        self._push(_End(error=error))

    # ------------------------------------------------------------------ reader side

    def cancel(self) -> None:
        self.cancelled.set()

    def _take(self) -> str | _End | None:
        """The queued text joined into one delta, or the end; None when nothing is queued."""
        if not self._items:
            return None
        if isinstance(self._items[0], _End):
            return self._items.popleft()
        parts: list[str] = []
        while self._items and isinstance(self._items[0], str):
            parts.append(self._items.popleft())  # type: ignore[arg-type]
        return "".join(parts)

    def _ended(self, end: _End) -> None:
        if end.error is not None:
            raise end.error
        self.sample = end.sample

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                with self._cond:
                    while (item := self._take()) is None:
                        self._cond.wait()
                if isinstance(item, _End):
                    self._ended(item)
                    return
                yield item
        finally:
            self.cancel()  # a no-op once the decoder has finished

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                self.cancel()

        with self._cond:
            self._wake = wake
        try:
            while True:
                with self._cond:
                    item = self._take()
                    if item is None:
                        ready.clear()  # set again by the decoder's next push (scheduled after this)
                if item is None:
                    await ready.wait()
                    continue
                if isinstance(item, _End):
                    self._ended(item)
                    return
                yield item
        finally:
            with self._cond:
                self._wake = None
            self.cancel()


class _Runtime(Protocol):
    """What ``decode_alone`` uses of ``embedded.EmbeddedRuntime``."""

    lock: threading.Lock
    llm: Any

    def begin_prompt(self, tokens: list[int]) -> None: ...

    def end_prompt(self, tokens: list[int], generated: int) -> None: ...


class _Job(Protocol):
    """What ``decode_alone`` uses of ``embedded_workers.Job``."""

    tokens: list[int]
    sampling: dict[str, Any]
    seed: int
    stop: list[str]
    stopping: Any
    max_tokens: int
    stream: TextStream | None


def decode_alone(runtime: _Runtime, job: _Job) -> None:
    """A streamed job on the one-at-a-time path (parallel decoders off), holding the runtime's lock as
    ``EmbeddedRuntime.generate`` does: ``create_completion``'s steps (prompt prefix, seed, sampler chain,
    ``Llama.generate``), its text assembled by ``CompletionText`` and handed over after each token."""
    stream = job.stream
    assert stream is not None
    try:
        with runtime.lock:
            if stream.cancelled.is_set():
                raise StreamCancelled("the stream's reader went away before it started")
            runtime.begin_prompt(job.tokens)
            runtime.llm.set_seed(job.seed)
            text = CompletionText(runtime.llm, job.tokens, stop=job.stop, stopping=job.stopping,
                                  max_tokens=job.max_tokens)
            for token in runtime.llm.generate(job.tokens, stopping_criteria=None, **job.sampling):
                if text.add(token) or stream.offer(text.certain()):
                    break  # the last token taken is not evaluated, as create_completion leaves it
            runtime.end_prompt(job.tokens, len(text.tokens))
        if not text.done:
            raise StreamCancelled("the stream's reader went away")
        stream.finish(text.sample(), text.certain())
    except Exception as exc:
        stream.fail(exc)


def _chunk(text: str, finish_reason: str = "", usage: dict[str, int] | None = None) -> GenericStreamingChunk:
    return GenericStreamingChunk(text=text, tool_use=None, is_finished=bool(finish_reason),
                                 finish_reason=finish_reason, usage=usage, index=0)  # type: ignore[typeddict-item]


def _last(stream: TextStream, prompt_tokens: int) -> GenericStreamingChunk:
    sample = stream.sample or Sample("", "stop", 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": sample.completion_tokens,
             "total_tokens": prompt_tokens + sample.completion_tokens}
    return _chunk("", sample.finish_reason, usage)


def chunks(stream: TextStream, prompt_tokens: int) -> Iterator[GenericStreamingChunk]:
    """litellm streaming chunks of ``stream``: its deltas, then the finish reason with the usage. Closing this
    generator early cancels the stream."""
    try:
        for text in stream:
            yield _chunk(text)
        yield _last(stream, prompt_tokens)
    finally:
        stream.cancel()


async def achunks(stream: TextStream, prompt_tokens: int) -> AsyncIterator[GenericStreamingChunk]:
    """``chunks``, read without blocking the event loop."""
    try:
        async for text in stream:
            yield _chunk(text)
        yield _last(stream, prompt_tokens)
    finally:
        stream.cancel()


def text_chunk(chunk: Any) -> GenericStreamingChunk:
    """A litellm text-completion stream chunk (``choices[0].text``, ``finish_reason``, maybe ``usage``) as a
    ``GenericStreamingChunk``."""
    choices = getattr(chunk, "choices", None) or []
    choice = choices[0] if choices else None
    text = (getattr(choice, "text", None) or "") if choice is not None else ""
    finish = (getattr(choice, "finish_reason", None) or "") if choice is not None else ""
    usage = getattr(chunk, "usage", None)
    numbers = None
    if usage is not None:
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        numbers = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return _chunk(text, finish, numbers)
