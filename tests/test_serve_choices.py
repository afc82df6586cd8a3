"""Logprobs and ``n > 1`` through ``drpo serve`` (against an OpenAI-compatible HTTP upstream that streams token by
token, and custom providers that cannot stream several choices), the routes that refuse logprobs, and base model
names checked at startup, before the server binds."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from serve_upstreams import FakeOpenAI, Reply, needs_llama_cpp, recorded_model  # noqa: E402

from drpo_dspy import AlignedResponder  # noqa: E402
from drpo_dspy.retrievers.embedders import HashingEmbedder  # noqa: E402
from drpo_dspy.serve import BackgroundServer, ProgramRegistry, ProgramSpec, ServeSettings, create_app  # noqa: E402
from drpo_dspy.serve.errors import APIError  # noqa: E402
from drpo_dspy.serve.features import Route, parse_features  # noqa: E402

KEY = "sk-serve-choices-test-012345"
HI = [{"role": "user", "content": "Say hello."}]


def tokens(choice: int) -> list[str]:
    """The DRPO-layout completion of choice ``choice``: markers around the answer, text after the end marker."""
    return ["<START>", "\n", "Hel", "lo", " there", f" #{choice}", ".", "\n", "<END>", " junk"]


ANSWER_TOKENS = ["Hel", "lo", " there", " #0", "."]  # the tokens of the returned text "Hello there #0."


def serve(tmp_path: Path, base_model: str, **settings: Any) -> BackgroundServer:
    path = tmp_path / "program.json"
    AlignedResponder("Be kind.", [("Greet me.", "Hello!")], k=1, embedder=HashingEmbedder()).save(str(path))
    registry = ProgramRegistry([ProgramSpec("aligned", path)])
    registry.load_all()
    return BackgroundServer(create_app(ServeSettings(base_model=base_model, reload_interval=0, **settings),
                                       registry)).start()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(tokens)
    yield fake
    fake.stop()


@pytest.fixture
def client(tmp_path: Path, upstream: FakeOpenAI) -> Iterator[Any]:
    server = serve(tmp_path, "openai/fake-upstream", base_api_base=upstream.api_base, base_api_key="sk-fake-up-000")
    yield openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    server.stop()


def test_logprobs_are_those_of_the_returned_text(client: Any, upstream: FakeOpenAI) -> None:
    whole = client.chat.completions.create(model="aligned", messages=HI, logprobs=True, top_logprobs=1)
    chunks = list(client.chat.completions.create(model="aligned", messages=HI, logprobs=True, top_logprobs=1,
                                                 stream=True))
    choice = whole.choices[0]
    assert choice.message.content == "Hello there #0."
    assert [e.token for e in choice.logprobs.content] == ANSWER_TOKENS  # <START>, <END>, newlines, junk dropped
    assert [e.top_logprobs[0].token for e in choice.logprobs.content] == ANSWER_TOKENS
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in choice.logprobs.content]
    assert [(r["logprobs"], r["top_logprobs"], r.get("stream", False)) for r in upstream.requests[-2:]] == [
        (True, 1, False), (True, 1, True)]


def test_text_completions_get_the_legacy_logprobs_shape(client: Any, upstream: FakeOpenAI) -> None:
    completion = client.completions.create(model="aligned", prompt="Say hello.", logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert completion.choices[0].text == "Hello there #0."
    assert logprobs.tokens == ANSWER_TOKENS and logprobs.text_offset == [0, 3, 5, 11, 14]
    assert len(logprobs.token_logprobs) == 5 and logprobs.top_logprobs[0] == {"Hel": logprobs.token_logprobs[0]}
    assert (upstream.requests[-1]["logprobs"], upstream.requests[-1]["top_logprobs"]) == (True, 2)


def test_n_choices_are_streamed_by_index(client: Any, upstream: FakeOpenAI) -> None:
    whole = client.chat.completions.create(model="aligned", messages=HI, n=2)
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in client.chat.completions.create(model="aligned", messages=HI, n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert texts == {i: c.message.content for i, c in enumerate(whole.choices)}
    assert texts == {0: "Hello there #0.", 1: "Hello there #1."}  # each choice cut at its own end marker
    assert finished == {0: "stop", 1: "stop"}
    assert (upstream.requests[-1]["n"], upstream.requests[-1]["stream"]) == (2, True)


def test_n_streamed_from_a_custom_provider_is_one_call(tmp_path: Path) -> None:
    model = recorded_model(lambda messages, params: Reply("Hi there.<END> and more"))
    server = serve(tmp_path, model.model)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        texts: dict[int, str] = {}
        for chunk in client.chat.completions.create(model="aligned", messages=HI, n=3, stream=True):
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    finally:
        server.stop()
    assert texts == {0: "Hi there.", 1: "Hi there.", 2: "Hi there."}
    (request,) = model.requests  # litellm's custom-provider stream carries one choice: one whole call instead
    assert request.params["n"] == 3 and request.stream is False


@pytest.mark.parametrize(("route", "body", "message"), [
    (Route("chat", True, "embedded/smollm2-135m", False), {"logprobs": True}, "returns no log probabilities"),
    (Route("text", False, "hosted_vllm/m", True), {"logprobs": True}, "the drpo_text route returns text only"),
    (Route("chat", False, "openai/m", True), {"logprobs": True, "top_logprobs": 21}, "from 0 to 20"),
    (Route("chat", False, "openai/m", True), {"top_logprobs": 2}, "needs 'logprobs': true"),
    (Route("chat", False, "openai/m", True), {"logprobs": 1}, "must be true or false"),
])
def test_logprobs_refusals_name_why(route: Route, body: dict[str, Any], message: str) -> None:
    with pytest.raises(APIError) as caught:
        parse_features(body, "chat", route)
    assert caught.value.status == 400 and message in caught.value.message


def test_completions_logprobs_are_a_count() -> None:
    chat = Route("chat", False, "openai/m", True)
    assert parse_features({"logprobs": 3}, "text", chat).params == {"logprobs": True, "top_logprobs": 3}
    with pytest.raises(APIError, match="integer from 0 to 5"):
        parse_features({"logprobs": 6}, "text", chat)


@pytest.mark.parametrize(("base_model", "message"), [
    ("embedded/typo", "unknown embedded model 'embedded/typo'"),
    ("nonsense-provider/model", "names no litellm provider"),
])
def test_a_bad_base_model_exits_2_before_the_server_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture, base_model: str,
                                                          message: str) -> None:
    import uvicorn

    from drpo_dspy.cli import serve as command

    needs_llama_cpp()
    path = tmp_path / "program.json"
    AlignedResponder("Be kind.", [("Greet me.", "Hello!")], k=1, embedder=HashingEmbedder()).save(str(path))
    bound: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: bound.append(args))
    parser = argparse.ArgumentParser(prog="drpo")
    command.add_parser(parser.add_subparsers(dest="command"))
    assert command.run(parser.parse_args(["serve", str(path), "--base-model", base_model, "--port", "0"])) == 2
    assert message in capsys.readouterr().err and bound == []
