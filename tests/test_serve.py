"""``drpo serve`` with the official ``openai`` client against scripted base models (fast, exact, offline)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import litellm
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from litellm import CustomLLM  # noqa: E402
from litellm.types.utils import GenericStreamingChunk  # noqa: E402

from drpo_dspy import AlignedResponder  # noqa: E402
from drpo_dspy.adapters.drpo_layout import extract_answer  # noqa: E402
from drpo_dspy.clients.providers import register_custom_provider  # noqa: E402
from drpo_dspy.retrievers.embedders import HashingEmbedder  # noqa: E402
from drpo_dspy.serve import BackgroundServer, ProgramRegistry, ProgramSpec, ServeSettings, create_app  # noqa: E402
from drpo_dspy.serve.conversation import Conversation, example_pairs, layout_messages  # noqa: E402
from drpo_dspy.serve.decoding import program_defaults  # noqa: E402
from drpo_dspy.serve.programs import content_version  # noqa: E402
from drpo_dspy.testing import last_user_text, scripted_lm, system_text  # noqa: E402
from drpo_dspy.testing.fault_injection import (  # noqa: E402
    always,
    auth_error,
    connection_reset,
    faulty_lm,
    rate_limit,
    server_error,
    timeout,
)

EXAMPLES = [("How do I boil an egg?", "Simmer it for nine minutes."),
            ("Name a prime number.", "Seven is prime."),
            ("How do I stop a Python process?", "Press Ctrl-C, or send it SIGTERM.")]
KEY = "sk-serve-test-0123456789abcdef"


def echo(messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """A base model whose answer names the system prompt, the turn it answers and the conversation length."""
    system = system_text(messages)
    query = last_user_text(messages).split("# Query:\n", 1)[-1].split("\n\n# Answer:")[0]
    head = system.splitlines()[0][:60]
    return f"  <START>\nprompt=[{head}] query=[{query}] turns={len(messages)} t={params.get('temperature')}" \
           "\n<END>\nthis text is after the end marker"


class Gate:
    """A base model that holds every answer until the test opens the gate; ``wait_for(n)`` waits for n callers."""

    def __init__(self) -> None:
        self.arrived = threading.Semaphore(0)
        self.open = threading.Event()

    def script(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        self.arrived.release()
        self.open.wait(timeout=30)
        return echo(messages, params)

    def wait_for(self, callers: int) -> None:
        for _ in range(callers):
            assert self.arrived.acquire(timeout=30), "the request never reached the base model"


def write_program(path: Path, instructions: str = "You are a careful, honest assistant.") -> Path:
    AlignedResponder(instructions, EXAMPLES, k=1, embedder=HashingEmbedder()).save(str(path))
    return path


def load(path: Path) -> AlignedResponder:
    program = AlignedResponder(examples=[], k=0)
    program.load(path)
    return program


class Served:
    """A server on a loopback port and an ``openai`` client for it."""

    def __init__(self, programs: dict[str, Path], base: dspy.LM, **settings: Any):
        self.registry = ProgramRegistry([ProgramSpec(name, path) for name, path in programs.items()])
        self.registry.load_all()
        settings.setdefault("reload_interval", 0)
        self.settings = ServeSettings(base_model=base.model, **settings)
        self.server = BackgroundServer(create_app(self.settings, self.registry)).start()
        self.client = openai.OpenAI(base_url=self.server.base_url, api_key=KEY, max_retries=0)

    def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.server.base_url.removesuffix("/v1") + path, timeout=30, **kwargs)


@pytest.fixture
def program_file(tmp_path: Path) -> Path:
    return write_program(tmp_path / "program.json")


@pytest.fixture
def base() -> dspy.LM:
    return scripted_lm(echo)


@pytest.fixture
def served(program_file: Path, base: dspy.LM) -> Iterator[Served]:
    s = Served({"aligned": program_file}, base)
    yield s
    s.server.stop()


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the server's own loggers wrote (litellm's DEBUG output, which echoes prompts, is litellm's business)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("drpo_dspy", "uvicorn")))


def chat(client: Any, content: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": content}], **kwargs)


def test_chat_answer_is_the_programs_answer(served: Served, program_file: Path, base: dspy.LM) -> None:
    query = "How do I stop a Python process quickly?"
    response = served.client.chat.completions.with_raw_response.create(
        model="aligned", messages=[{"role": "user", "content": query}], temperature=0, max_tokens=40)
    completion = response.parse()
    expected = load(program_file)(query=query, lm=base, config={"temperature": 0.0, "max_tokens": 40}).response
    assert completion.choices[0].message.content == expected
    assert "query=[How do I stop a Python process quickly?]" in expected and "after the end" not in expected
    program = served.registry.get("aligned")
    assert completion.system_fingerprint == program.version == response.headers["x-drpo-program-version"]
    assert response.headers["x-drpo-program"] == "aligned" and completion.model == "aligned"
    assert completion.choices[0].finish_reason == "stop" and completion.usage.total_tokens > 0


def test_the_server_sends_exactly_the_programs_messages(program_file: Path) -> None:
    seen: list[list[dict[str, Any]]] = []
    base = scripted_lm(lambda messages, params: seen.append(messages) or "ok\n<END>")
    s = Served({"aligned": program_file}, base)
    try:
        chat(s.client, "Name a prime number, please.", temperature=0)
    finally:
        s.server.stop()
    load(program_file)(query="Name a prime number, please.", lm=base)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0][0]["content"].startswith("You are a careful, honest assistant.\n\n# Query:\nName a prime number.")


def test_streaming_gives_the_same_answer(served: Served, program_file: Path, base: dspy.LM) -> None:
    query = "How do I boil an egg well?"
    chunks = list(chat(served.client, query, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == load(program_file)(query=query, lm=base, config={"temperature": 0.0}).response
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert {c.system_fingerprint for c in chunks} == {served.registry.get("aligned").version}


class PieceByPiece(CustomLLM):
    """A streaming provider: the scripted completion arrives in small pieces that split the markers."""

    text = "<STA", "RT>\n Seven", " is prime", ".  ", "<EN", "D> and more", " after"

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        return litellm.ModelResponse(choices=[{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "".join(self.text)}}])

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        return self.completion()

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        for i, piece in enumerate(self.text):
            last = i == len(self.text) - 1
            yield {"text": piece, "is_finished": last, "finish_reason": "stop" if last else "", "usage": None,
                   "index": 0, "tool_use": None}


def test_a_streaming_upstream_is_cut_at_the_end_marker(program_file: Path) -> None:
    register_custom_provider("piecewise", PieceByPiece)
    s = Served({"aligned": program_file}, dspy.LM("piecewise/m"))
    try:
        assert s.settings.base_model == "piecewise/m"
        pieces = [c.choices[0].delta.content for c in chat(s.client, "Name a prime.", stream=True) if c.choices]
        whole = chat(s.client, "Name a prime.").choices[0].message.content
    finally:
        s.server.stop()
    streamed = "".join(p or "" for p in pieces)
    assert streamed == whole == extract_answer("".join(PieceByPiece.text)) == "Seven is prime."
    assert len([p for p in pieces if p]) > 1  # really streamed, not one block


def test_multi_turn_lays_earlier_turns_out_as_query_answer_pairs(program_file: Path) -> None:
    seen: list[list[dict[str, Any]]] = []
    base = scripted_lm(lambda messages, params: seen.append(messages) or echo(messages, params))
    s = Served({"aligned": program_file}, base)
    conversation = [{"role": "system", "content": "Answer in one sentence."},
                    {"role": "user", "content": "Name a prime number."},
                    {"role": "assistant", "content": "Seven."},
                    {"role": "user", "content": "How do I boil an egg?"}]
    try:
        answer = s.client.chat.completions.create(model="aligned", messages=conversation, temperature=0)
    finally:
        s.server.stop()
    sent = seen[-1]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"].startswith("You are a careful, honest assistant.\n\nAnswer in one sentence.\n\n"
                                         "# Query:\nHow do I boil an egg?")  # examples follow the last turn
    assert sent[1]["content"] == "# Query:\nName a prime number.\n\n# Answer:\n"
    assert sent[2]["content"] == "Seven.\n\n"
    assert sent[3]["content"] == "# Query:\nHow do I boil an egg?\n\n# Answer:\n"
    # The same program in Python: its retrieval, the same layout, the same base model.
    program = load(program_file)
    turns = Conversation("How do I boil an egg?", (("Name a prime number.", "Seven."),), "Answer in one sentence.")
    messages = layout_messages(program.instructions, example_pairs(program.retrieve(turns.query)), turns)
    expected = extract_answer(base.copy(temperature=0.0)(messages=messages)[0])
    assert answer.choices[0].message.content == expected and "turns=4" in expected


def test_text_completion_endpoint_answers_the_prompt_as_a_query(served: Served, program_file: Path,
                                                                 base: dspy.LM) -> None:
    completion = served.client.completions.create(model="aligned", prompt="Name a prime number.", temperature=0,
                                                  max_tokens=30)
    expected = load(program_file)(query="Name a prime number.", lm=base, config={"temperature": 0.0}).response
    assert completion.choices[0].text == expected and completion.object == "text_completion"
    assert completion.system_fingerprint == served.registry.get("aligned").version
    streamed = served.client.completions.create(model="aligned", prompt="Name a prime number.", temperature=0,
                                                stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected


def test_decoding_parameters_reach_the_base_model_within_limits(program_file: Path) -> None:
    seen: list[dict[str, Any]] = []
    base = scripted_lm(lambda messages, params: seen.append(params) or "fine\n<END>")
    s = Served({"aligned": program_file}, base, default_max_tokens=64, max_tokens_limit=100)
    try:
        chat(s.client, "Hi", temperature=0.7, top_p=0.9, seed=3, max_tokens=99, stop=["STOP"], presence_penalty=0.5)
        chat(s.client, "Hi")
        with pytest.raises(openai.BadRequestError, match="above this server's limit of 100"):
            chat(s.client, "Hi", max_tokens=101)
        two = chat(s.client, "Hi", n=2)
    finally:
        s.server.stop()
    first, default = seen[0], seen[1]
    assert first["temperature"] == 0.7 and first["top_p"] == 0.9 and first["seed"] == 3
    assert first["max_tokens"] == 99 and first["presence_penalty"] == 0.5
    assert first["stop"] == ["STOP", "<END", "\n# Query:", "\n# Answer:"]  # at most four: the client's first
    own = program_defaults(load(program_file))  # what the program sends in Python when the caller sets nothing
    assert default["max_tokens"] == min(own.get("max_tokens") or 64, 100)
    assert default.get("temperature") == own.get("temperature")
    assert [c.message.content for c in two.choices] == ["fine", "fine"]


ONE_TURN = {"model": "aligned", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "aligned"}, "'messages' must be a non-empty list"),
    ({"model": "aligned", "messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "x"}]}, "'model' is required"),
    ({"model": "aligned", "messages": [{"role": "assistant", "content": "x"}]}, "last message must come from the user"),
    ({"model": "aligned", "messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}]},
     "a tool message needs the 'tool_call_id' of a tool call made by an earlier assistant message"),
    ({"model": "aligned", "messages": [{"role": "critic", "content": "x"}, {"role": "user", "content": "y"}]},
     "role 'critic' is not supported"),
    ({"model": "aligned", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "only text parts are supported"),
    ({**ONE_TURN, "temperature": 3}, "'temperature' must be in"),
    ({**ONE_TURN, "temperature": "hot"}, "must be a number"),
    ({**ONE_TURN, "max_tokens": 0}, "at least 1"),
    ({**ONE_TURN, "tools": [{"type": "function"}]},
     "tools[0].function must be an object"),
    ({**ONE_TURN, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "'response_format.json_schema.schema' is required"),
    ({**ONE_TURN, "functions": [{"name": "f"}]}, "legacy function calling"),
    ({**ONE_TURN, "logit_bias": {"1": 5}}, "'logit_bias': logit_bias is not supported"),
    ({**ONE_TURN, "frobnicate": 1},
     "Unrecognized request argument supplied: frobnicate"),
    ({**ONE_TURN, "stop": ["a", "b", "c", "d", "e"]},
     "at most 4"),
])
def test_bad_requests_get_openai_style_400s(served: Served, body: dict[str, Any], message: str) -> None:
    response = served.http("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_bad_request_through_the_openai_client(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(served.client, "Hi", temperature=-1)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "temperature"
    broken = served.http("POST", "/v1/chat/completions", content=b"{not json",
                         headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    assert served.http("POST", "/v1/completions", json={"model": "aligned", "prompt": ["a", "b"]}).status_code == 400
    deep = served.http("POST", "/v1/chat/completions", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]


def test_request_size_is_limited(program_file: Path, base: dspy.LM) -> None:
    s = Served({"aligned": program_file}, base, max_request_bytes=2000)
    try:
        response = s.http("POST", "/v1/chat/completions",
                          json={"model": "aligned", "messages": [{"role": "user", "content": "x" * 3000}]})
        too_many = s.http("POST", "/v1/chat/completions", json={"model": "aligned", "messages": [
            {"role": "user", "content": "x"}] * 201})
    finally:
        s.server.stop()
    assert response.status_code == 413 and "2000 bytes" in response.json()["error"]["message"]
    assert too_many.status_code in (400, 413)


def test_unknown_model_is_a_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 404 and "served models: aligned" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("gpt-4o")
    assert served.http("GET", "/v1/nothing-here").json()["error"]["code"] == "not_found"


def test_api_keys(program_file: Path, base: dspy.LM, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = Served({"aligned": program_file}, base, api_keys=frozenset({KEY}))
    try:
        assert chat(s.client, "Hi").choices[0].message.content  # the right key
        for key in ("sk-wrong-key-999999", ""):
            client = openai.OpenAI(base_url=s.server.base_url, api_key=key or "unused", max_retries=0)
            headers = {"Authorization": ""} if not key else {}
            with pytest.raises(openai.AuthenticationError) as caught:
                client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": "Hi"}],
                                               extra_headers=headers)
            assert caught.value.status_code == 401 and "Bearer" in caught.value.body["message"]
        assert s.http("GET", "/v1/models").status_code == 401
        assert s.http("GET", "/health").json()["status"] == "ok"  # health needs no key
        assert [m.id for m in s.client.models.list()] == ["aligned"]
    finally:
        s.server.stop()
    logged = server_log(caplog)
    assert "POST /v1/chat/completions 401" in logged and "POST /v1/chat/completions 200" in logged
    assert KEY not in logged and "sk-wrong-key" not in logged


def test_access_logs_carry_no_prompt_unless_asked(program_file: Path, base: dspy.LM,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_query = "my private question about zebras"
    for log_prompts in (False, True):
        caplog.clear()
        s = Served({"aligned": program_file}, base, log_prompts=log_prompts)
        try:
            chat(s.client, secret_query)
        finally:
            s.server.stop()
        logged = server_log(caplog)
        assert "POST /v1/chat/completions 200" in logged
        assert (secret_query in logged) is log_prompts


@pytest.mark.parametrize(("fault", "status", "retry_after"), [
    (rate_limit(retry_after=7), 503, "7"),
    (server_error(503), 503, "1"),
    (server_error(500), 502, "1"),
    (timeout(), 504, "1"),
    (connection_reset(), 502, "1"),
    (auth_error(), 502, None),
])
def test_upstream_failures_map_to_5xx_with_retry_hints(program_file: Path, fault: Any, status: int,
                                                       retry_after: str | None) -> None:
    base = faulty_lm(echo, faults=always(fault))
    s = Served({"aligned": program_file}, base, base_api_key="sk-upstream-secret-abcdef123456")
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            chat(s.client, "Hi")
        streamed = s.http("POST", "/v1/chat/completions", json={
            "model": "aligned", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    finally:
        s.server.stop()
    assert caught.value.status_code == status == streamed.status_code
    assert caught.value.response.headers.get("retry-after") == retry_after
    assert "The base model failed" in caught.value.body["message"]
    assert "sk-upstream-secret" not in caught.value.response.text  # auth_error echoes the key it was sent


def test_the_python_program_fails_on_the_same_upstream(program_file: Path) -> None:
    base = faulty_lm(echo, faults=always(server_error(503)), num_retries=0)
    with pytest.raises(Exception, match="ServiceUnavailableError"):  # DSPy wraps litellm's error in its own
        load(program_file)(query="Hi", lm=base)


def test_several_programs_one_model_name_each(tmp_path: Path, base: dspy.LM) -> None:
    kind = write_program(tmp_path / "kind.json", "You are kind.")
    terse = write_program(tmp_path / "terse.json", "You are terse.")
    s = Served({"kind": kind, "terse": terse}, base)
    try:
        answers = {name: s.client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])
                   for name in ("kind", "terse")}
        models = {m.id for m in s.client.models.list()}
        health = s.http("GET", "/health").json()
    finally:
        s.server.stop()
    assert "prompt=[You are kind." in answers["kind"].choices[0].message.content
    assert "prompt=[You are terse." in answers["terse"].choices[0].message.content
    assert answers["kind"].system_fingerprint != answers["terse"].system_fingerprint
    assert models == {"kind", "terse"} and set(health["programs"]) == {"kind", "terse"}


def test_hot_reload_swaps_without_dropping_a_request_in_flight(tmp_path: Path) -> None:
    path = write_program(tmp_path / "program.json", "You are version one.")
    gate = Gate()
    s = Served({"aligned": path}, scripted_lm(gate.script))
    results: dict[str, Any] = {}

    def slow_request() -> None:
        results["in_flight"] = chat(s.client, "Hi")

    try:
        old = s.registry.get("aligned").version
        worker = threading.Thread(target=slow_request)
        worker.start()
        gate.wait_for(1)  # the request has its program and is waiting on the base model
        write_program(tmp_path / "next.json", "You are version two.").replace(path)
        assert s.registry.reload_changed() == ["aligned"]
        gate.open.set()
        worker.join(timeout=30)
        after = chat(s.client, "Hi")
    finally:
        s.server.stop()
    assert results["in_flight"].system_fingerprint == old
    assert "version one" in results["in_flight"].choices[0].message.content
    assert after.system_fingerprint != old and "version two" in after.choices[0].message.content


def test_a_broken_program_file_keeps_the_served_version(tmp_path: Path, base: dspy.LM,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = write_program(tmp_path / "program.json")
    s = Served({"aligned": path}, base)
    try:
        old = s.registry.get("aligned").version
        path.write_text('{"respond": {"truncated')
        assert s.registry.reload_changed() == [] and s.registry.reload_changed() == []
        assert chat(s.client, "Hi").system_fingerprint == old
        write_program(path, "You are fixed now.")
        assert s.registry.reload_changed() == ["aligned"]
    finally:
        s.server.stop()
    warnings = [r for r in caplog.records if "did not load" in r.getMessage()]
    assert len(warnings) == 1  # reported once, not at every check


def test_the_watcher_reloads_in_the_background(tmp_path: Path, base: dspy.LM) -> None:
    path = write_program(tmp_path / "program.json")
    s = Served({"aligned": path}, base, reload_interval=0.05)
    try:
        old = s.http("GET", "/health").json()["programs"]["aligned"]
        write_program(path, "You are reloaded.")
        deadline, current = time.monotonic() + 20, old
        while current == old and time.monotonic() < deadline:
            time.sleep(0.05)
            current = s.http("GET", "/health").json()["programs"]["aligned"]
        answer = chat(s.client, "Hi")
    finally:
        s.server.stop()
    assert current != old and answer.system_fingerprint == current
    assert "prompt=[You are reloaded." in answer.choices[0].message.content


def test_serve_command(tmp_path: Path, program_file: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    import argparse

    from drpo_dspy.cli import serve as command

    parser = argparse.ArgumentParser(prog="drpo")
    command.add_parser(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("DRPO_SERVE_API_KEYS", "k-one-123456, k-two-123456")
    args = parser.parse_args(["serve", str(program_file), "--program", f"other={program_file}", "--port", "9",
                              "--api-key", "k-three-123456", "--base-model-type", "text", "--max-tokens-limit", "64",
                              "--default-max-tokens", "32"])
    settings, specs = command.settings_from_args(args)
    assert [(s.name, s.path) for s in specs] == [("drpo-aligned", program_file), ("other", program_file)]
    assert settings.host == "127.0.0.1" and settings.port == 9 and settings.base_model_type == "text"
    assert settings.api_keys == {"k-one-123456", "k-two-123456", "k-three-123456"}
    assert "k-one" not in repr(settings)
    missing = parser.parse_args(["serve", str(tmp_path / "nope.json")])
    assert args.func is command.run and command.run(missing) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--program", "no-equals-sign"])
    assert command.run(parser.parse_args(["serve"])) == 2  # nothing to serve
    unknown = parser.parse_args(["serve", str(program_file), "--base-model", "nonsense-provider/model"])
    assert command.run(unknown) == 2 and "names no litellm provider" in capsys.readouterr().err


def test_models_and_health(served: Served) -> None:
    models = served.client.models.list()
    card = served.client.models.retrieve("aligned")
    health = served.http("GET", "/health").json()
    version = served.registry.get("aligned").version
    assert [m.id for m in models] == ["aligned"] and card.owned_by == "drpo"
    assert health == {"status": "ok", "base_model_type": "chat", "programs": {"aligned": version}}
    assert json.loads(json.dumps(health))  # plain JSON


def test_a_base_model_server_that_is_down_is_a_502(program_file: Path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"http://127.0.0.1:{port}/v1"
    s = Served({"aligned": program_file}, dspy.LM("openai/some-model"), base_api_base=down,
               base_api_key="sk-down-test-0000000000", upstream_timeout=10)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            chat(s.client, "Hi")
    finally:
        s.server.stop()
    assert caught.value.status_code == 502 and caught.value.response.headers["retry-after"] == "1"
    assert "Connection error" in caught.value.body["message"] and "sk-down-test" not in caught.value.response.text
    python_lm = dspy.LM("openai/some-model", api_base=down, api_key="sk-down-test-0000000000", num_retries=0)
    with pytest.raises(Exception, match="Connection"):
        load(program_file)(query="Hi", lm=python_lm)


def test_an_internal_failure_is_an_openai_500_with_a_redacted_log(served: Served, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def broken(name: str) -> None:
        raise RuntimeError(f"lookup failed near {KEY}")

    monkeypatch.setattr(served.registry, "get", broken)
    response = served.http("POST", "/v1/chat/completions", json=ONE_TURN)
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert KEY not in response.text
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "unhandled RuntimeError" in logged and KEY not in logged


def test_the_programs_own_answer_cap_applies_when_the_client_sets_none(tmp_path: Path) -> None:
    path = tmp_path / "capped.json"
    AlignedResponder("Be brief.", EXAMPLES, k=1, embedder=HashingEmbedder(), max_tokens=48).save(str(path))
    seen: list[dict[str, Any]] = []
    base = scripted_lm(lambda messages, params: seen.append(params) or "ok\n<END>")
    s = Served({"capped": path}, base, max_tokens_limit=40, default_max_tokens=32)
    try:
        s.client.chat.completions.create(model="capped", messages=[{"role": "user", "content": "Hi"}])
        s.client.chat.completions.create(model="capped", messages=[{"role": "user", "content": "Hi"}], max_tokens=7)
    finally:
        s.server.stop()
    load(path)(query="Hi", lm=base)
    assert [p["max_tokens"] for p in seen] == [40, 7, 48]  # the program's 48, held to the server's limit of 40


def test_requests_under_load_survive_repeated_swaps(tmp_path: Path) -> None:
    path = write_program(tmp_path / "program.json", "You are version 0.")
    s = Served({"aligned": path}, scripted_lm(echo, latency=0.01))
    versions = {s.registry.get("aligned").version}
    answers: list[Any] = []
    failures: list[BaseException] = []

    def client_loop() -> None:
        try:
            answers.extend(chat(s.client, "Hi") for _ in range(15))
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    try:
        workers = [threading.Thread(target=client_loop) for _ in range(4)]
        for worker in workers:
            worker.start()
        for version in range(1, 5):
            write_program(tmp_path / "next.json", f"You are version {version}.").replace(path)
            s.registry.reload_changed()
            versions.add(s.registry.get("aligned").version)
            time.sleep(0.05)
        for worker in workers:
            worker.join(timeout=60)
    finally:
        s.server.stop()
    assert not failures and len(answers) == 60 and len(versions) == 5
    for answer in answers:  # every answer is whole and consistent with the version it names
        assert answer.system_fingerprint in versions
        number = answer.choices[0].message.content.split("You are version ")[1][0]
        assert answer.system_fingerprint == content_version(write_bytes(tmp_path, int(number)))


def write_bytes(tmp_path: Path, version: int) -> bytes:
    return write_program(tmp_path / f"check-{version}.json", f"You are version {version}.").read_bytes()


def test_requests_beyond_the_concurrency_limit_get_a_503(program_file: Path) -> None:
    gate = Gate()
    s = Served({"aligned": program_file}, scripted_lm(gate.script), max_concurrent=2)
    results: list[Any] = []

    def slow(stream: bool) -> None:
        if stream:
            results.append("".join(c.choices[0].delta.content or "" for c in chat(s.client, "Hi", stream=True)
                                   if c.choices))
        else:
            results.append(chat(s.client, "Hi").choices[0].message.content)

    try:
        workers = [threading.Thread(target=slow, args=(stream,)) for stream in (False, True)]
        for worker in workers:
            worker.start()
        gate.wait_for(2)  # both are waiting on the base model
        with pytest.raises(openai.APIStatusError) as caught:
            chat(s.client, "Hi")
        gate.open.set()
        for worker in workers:
            worker.join(timeout=30)
        abandoned = s.client.chat.completions.create(model="aligned", stream=True,
                                                     messages=[{"role": "user", "content": "Hi"}])
        next(iter(abandoned))
        abandoned.close()  # a client that hangs up mid-stream frees its slot too
        admission = s.server.app.state.admission
        deadline = time.monotonic() + 10
        while admission.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admission.active == 0
        after = [chat(s.client, "Hi").choices[0].message.content for _ in range(2)]
    finally:
        s.server.stop()
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["type"] == "server_busy" and len(results) == 2 and results[0] == results[1]
    assert after == results


def test_the_server_holds_a_slow_base_model_to_its_timeout(program_file: Path) -> None:
    s = Served({"aligned": program_file}, scripted_lm(echo, latency=1.5), upstream_timeout=0.2)
    try:
        with pytest.raises(openai.APIStatusError) as caught:  # the model would answer (200), but too late
            chat(s.client, "Hi")
        streamed = s.http("POST", "/v1/chat/completions", json={**ONE_TURN, "stream": True})
    finally:
        s.server.stop()
    assert caught.value.status_code == 504 == streamed.status_code
    assert caught.value.response.headers["retry-after"] == "1"
    assert "timeout" in caught.value.body["message"]


def test_drpo_serve_is_a_drpo_command(program_file: Path) -> None:
    from drpo_dspy.cli import build_parser
    from drpo_dspy.cli import serve as command

    args = build_parser().parse_args(["serve", str(program_file), "--port", "8123"])
    settings, specs = command.settings_from_args(args)
    assert settings.port == 8123 and specs[0].path == program_file
