"""Streaming from the embedded model and the raw-text route: the deltas add up to the non-streamed completion (stops
and grammars included), arrive while the completion is still being generated, and a stream the reader abandons
frees the model for the next request. Text assembly and the remote raw-text route are checked without the model."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drpo_dspy.clients import embedded as lm_mod
from drpo_dspy.clients import raw_text as rt_mod
from drpo_dspy.clients.embedded import EMBEDDED_MODEL, EmbeddedLLM, register_embedded_provider, stream_embedded
from drpo_dspy.clients.raw_text import RAW_TEXT_PROVIDER, register_raw_text_provider
from drpo_dspy.engine import stream as stream_mod
from drpo_dspy.engine.completion_text import CompletionText, Sample
from drpo_dspy.engine.stream import StreamCancelled, TextStream

litellm = lm_mod.litellm

# ---------------------------------------------------------------- without the model

_PIECES = {1: b"Hello", 2: b" world", 3: b" <E", 4: b"ND>", 5: b" caf\xc3", 6: b"\xa9", 7: b" <Eh", 9: b""}


class _Vocab:
    def detokenize(self, tokens: list[int], prev_tokens: list[int] | None = None) -> bytes:
        return b"".join(_PIECES[t] for t in tokens)


def _certain_steps(tokens: list[int], stop: list[str]) -> tuple[list[bytes], Sample]:
    text = CompletionText(_Vocab(), [8], stop=stop, stopping=None, max_tokens=10, is_eog=lambda t: t == 9)
    steps = []
    for token in tokens:
        if text.add(token):
            break
        steps.append(text.certain())
    return steps, text.sample()


def test_certain_text_holds_back_what_may_still_become_a_stop() -> None:
    steps, sample = _certain_steps([1, 2, 3, 4, 1], ["<END>"])
    assert steps == [b"Hello", b"Hello world", b"Hello world "]  # " <E" may begin "<END>": held back
    assert sample == Sample("Hello world ", "stop", 4)
    steps, sample = _certain_steps([1, 3, 7, 9], ["<END>"])
    assert steps == [b"Hello", b"Hello ", b"Hello <E <Eh"]  # "<Eh" cannot become "<END>": released
    assert sample.text == "Hello <E <Eh" and sample.finish_reason == "stop"
    steps, _ = _certain_steps([5, 6, 9], [])
    assert steps == [b"", b" caf\xc3\xa9"]  # a split UTF-8 character defers the checks, and the release


def _produce(stream: TextStream, pieces: list[bytes], final: bytes) -> None:
    sent = b""
    for piece in pieces:
        sent += piece
        stream.offer(sent)
    stream.finish(Sample(final.decode(), "stop", len(pieces)), final)


def test_text_stream_adds_up_to_the_final_text_sync_and_async() -> None:
    pieces, final = [b"Caf\xc3", b"\xa9 au", b" lait"], "Café au lait, merci".encode()
    stream = TextStream()
    _produce(stream, pieces, final)
    deltas = list(stream)
    assert "".join(deltas) == final.decode() and stream.sample is not None and stream.sample.text == final.decode()

    async def read() -> list[str]:
        stream = TextStream()
        producer = threading.Thread(target=_produce, args=(stream, pieces, final))
        producer.start()
        try:
            return [delta async for delta in stream]
        finally:
            producer.join()

    assert "".join(asyncio.run(read())) == final.decode()
    failing = TextStream()
    failing.offer(b"partial")
    failing.fail(ValueError("boom"))
    reader = iter(failing)
    assert next(reader) == "partial"
    with pytest.raises(ValueError, match="boom"):
        next(reader)


def test_closing_a_reader_cancels_the_stream() -> None:
    stream = TextStream()
    stream.offer(b"first")
    reader = iter(stream)
    assert next(reader) == "first" and not stream.cancelled.is_set()
    reader.close()
    assert stream.offer(b"first and more")  # the decoder learns the reader has gone


def test_streaming_providers_and_one_completion_per_stream() -> None:
    from drpo_dspy.serve.upstream import provider_streams

    register_embedded_provider()
    register_raw_text_provider()
    assert provider_streams(EMBEDDED_MODEL) and provider_streams(f"{RAW_TEXT_PROVIDER}/{EMBEDDED_MODEL}")
    with pytest.raises(litellm.BadRequestError, match="n above 1"):
        stream_embedded([{"role": "user", "content": "Hi"}], {"n": 2})


def test_raw_route_streams_a_remote_text_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    pieces = [(" fo", None), ("ur", None), ("", "stop")]

    def chunk(text: str, finish: str | None) -> Any:
        return litellm.TextCompletionResponse(model="davinci-002",
                                              choices=[{"text": text, "index": 0, "finish_reason": finish}])

    def fake_text_completion(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return iter([chunk(*piece) for piece in pieces])

    async def fake_atext_completion(**kwargs: Any) -> Any:
        calls.append(kwargs)

        async def chunks() -> Any:
            for piece in pieces:
                yield chunk(*piece)

        return chunks()

    monkeypatch.setattr(rt_mod.litellm, "text_completion", fake_text_completion)
    monkeypatch.setattr(rt_mod.litellm, "atext_completion", fake_atext_completion)
    register_raw_text_provider()
    request = {"model": f"{RAW_TEXT_PROVIDER}/openai/davinci-002", "api_base": "http://127.0.0.1:9/v1",
               "api_key": "sk-test", "max_tokens": 8, "stop": ["\n"],
               "messages": [{"role": "system", "content": "Q: 2+2?\n"}, {"role": "user", "content": "A:"}]}
    streamed = list(litellm.completion(stream=True, **request))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == " four"
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "stop"

    async def read() -> str:
        response = await litellm.acompletion(stream=True, **request)
        return "".join([c.choices[0].delta.content or "" async for c in response if c.choices])

    assert asyncio.run(read()) == " four"
    for sent in calls:
        assert sent["model"] == "text-completion-openai/davinci-002" and sent["prompt"] == "Q: 2+2?\nA:"
        assert sent["stream"] is True and (sent["max_tokens"], sent["stop"]) == (8, ["\n"])
        assert sent["api_base"] == "http://127.0.0.1:9/v1"


# ---------------------------------------------------------------- on the model

QUESTION = [{"role": "user", "content": "Describe a sunny day at the beach."}]


def _streamed(request: dict[str, Any], use_async: bool) -> tuple[list[str], str | None, Any]:
    """The content deltas, the last finish reason and the usage of a litellm stream."""
    def take(chunks: list[Any]) -> tuple[list[str], str | None, Any]:
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = [c.usage for c in chunks if getattr(c, "usage", None)]
        return deltas, finishes[-1] if finishes else None, usage[-1] if usage else None

    options = {"stream": True, "stream_options": {"include_usage": True}}
    if not use_async:
        return take(list(litellm.completion(**request, **options)))

    async def read() -> list[Any]:
        return [chunk async for chunk in await litellm.acompletion(**request, **options)]

    return take(asyncio.run(read()))


@pytest.fixture(params=[True, False], ids=["parallel", "one-at-a-time"])
def runtime(request: pytest.FixtureRequest, embedded_runtime: lm_mod.EmbeddedRuntime) -> lm_mod.EmbeddedRuntime:
    embedded_runtime.configure(parallel=request.param)
    register_embedded_provider()
    return embedded_runtime


@pytest.mark.embedded
def test_streamed_chat_equals_the_non_streamed_answer(runtime: lm_mod.EmbeddedRuntime) -> None:
    request = {"model": EMBEDDED_MODEL, "messages": QUESTION, "temperature": 0.0, "max_tokens": 16}
    text = litellm.completion(**request).choices[0].message.content
    stop = text.split()[3]  # cut mid-answer: the streamed text holds back what may become the stop, never shows it
    full = litellm.completion(**request, stop=[stop])
    deltas, finish, usage = _streamed({**request, "stop": [stop]}, use_async=runtime.parallel)
    assert len(deltas) >= 3 and "".join(deltas) == full.choices[0].message.content == text[: text.index(stop)]
    assert finish == full.choices[0].finish_reason == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (full.usage.prompt_tokens, full.usage.completion_tokens)


@pytest.mark.embedded
def test_streamed_raw_text_and_json_equal_the_non_streamed(embedded_runtime: lm_mod.EmbeddedRuntime) -> None:
    register_embedded_provider()
    register_raw_text_provider()
    raw = {"model": f"{RAW_TEXT_PROVIDER}/{EMBEDDED_MODEL}", "temperature": 0.0, "max_tokens": 16,
           "messages": [{"role": "system", "content": "Q: What is the capital of France?\n"},
                        {"role": "user", "content": "A:"}]}
    expected = litellm.completion(**raw).choices[0].message.content
    deltas, _, usage = _streamed(raw, use_async=True)
    assert len(deltas) > 1 and "".join(deltas) == expected and usage.completion_tokens > 1
    schema = {"type": "json_object"}
    chat = {"model": EMBEDDED_MODEL, "messages": QUESTION, "temperature": 0.0, "max_tokens": 16,
            "response_format": schema}
    expected = litellm.completion(**chat).choices[0].message.content
    deltas, _, _ = _streamed(chat, use_async=False)
    assert expected.lstrip().startswith("{") and "".join(deltas) == expected


def _hold_after_first_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder waits, after handing over its first text, until the reader has gone (then stops)."""
    original = TextStream.offer

    def offer(self: TextStream, certain: bytes) -> bool:
        original(self, certain)
        if self._sent:
            self.cancelled.wait(30)
        return self.cancelled.is_set()

    monkeypatch.setattr(TextStream, "offer", offer)


def _end_of(stream: TextStream) -> stream_mod._End:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with stream._cond:
            if stream._items and isinstance(stream._items[-1], stream_mod._End):
                return stream._items[-1]
        time.sleep(0.01)
    raise AssertionError("the decoder did not stop")


@pytest.mark.embedded
def test_an_abandoned_stream_frees_the_model(runtime: lm_mod.EmbeddedRuntime,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    short = {"temperature": 0.0, "max_tokens": 8}
    expected = lm_mod.complete_embedded(QUESTION, short).choices[0].message.content
    generated = runtime.stats.generated_tokens
    with monkeypatch.context() as patch:
        _hold_after_first_text(patch)
        if runtime.parallel:  # the litellm handler's async generator, closed by its reader
            async def first_then_close() -> None:
                chunks = EmbeddedLLM().astreaming("smollm2-135m", QUESTION, optional_params={"max_tokens": 200})
                assert (await chunks.__anext__())["text"]
                await chunks.aclose()

            asyncio.run(first_then_close())
        stream, _ = stream_embedded(QUESTION, {"temperature": 0.0, "max_tokens": 200})
        reader = iter(stream)
        assert next(reader)
        reader.close()
        assert isinstance(_end_of(stream).error, StreamCancelled)
    assert runtime.stats.generated_tokens - generated < 2 * 200 // 4  # both stopped long before 200 tokens
    if not runtime.parallel:
        assert runtime.lock.acquire(timeout=30)
        runtime.lock.release()
    assert lm_mod.complete_embedded(QUESTION, short).choices[0].message.content == expected
    stream, _ = stream_embedded(QUESTION, short)
    assert "".join(stream) == expected


@pytest.mark.embedded
def test_drpo_serve_streams_the_answer_while_it_is_generated(tmp_path: Path, embedded_runtime: lm_mod.EmbeddedRuntime,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from drpo_dspy import AlignedResponder
    from drpo_dspy.serve import BackgroundServer, ProgramRegistry, ProgramSpec, ServeSettings, create_app

    first_seen, seen_before_end = threading.Event(), []
    finish = TextStream.finish

    def finish_after_the_reader_saw_text(self: TextStream, sample: Sample, final: bytes) -> None:
        seen_before_end.append(first_seen.wait(30))  # a non-streaming path would never let the reader see text
        finish(self, sample, final)

    monkeypatch.setattr(TextStream, "finish", finish_after_the_reader_saw_text)
    AlignedResponder("You are a helpful, honest and concise assistant.", [], k=0).save(str(tmp_path / "p.json"))
    registry = ProgramRegistry([ProgramSpec("aligned", tmp_path / "p.json")])
    registry.load_all()
    server = BackgroundServer(create_app(ServeSettings(base_model=EMBEDDED_MODEL, reload_interval=0), registry))
    server.start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-none", max_retries=0)
        deltas = []
        for chunk in client.chat.completions.create(model="aligned", messages=QUESTION, temperature=0,
                                                    max_tokens=32, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
                first_seen.set()
    finally:
        server.stop()
    assert seen_before_end == [True] and len(deltas) >= 3
