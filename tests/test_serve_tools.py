"""Tools through ``drpo serve``: the aligned program answers, the tools reach the base model, tool calls come back in
OpenAI's shape (whole and streamed), and follow-up turns with tool results work -- with the official ``openai``
client, litellm and a DSPy program, each checked against exactly what the scripted base model received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import litellm
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from serve_upstreams import RecordedModel, Reply, needs_llama_cpp, recorded_model  # noqa: E402

from drpo_dspy import AlignedResponder  # noqa: E402
from drpo_dspy.retrievers.embedders import HashingEmbedder  # noqa: E402
from drpo_dspy.serve import BackgroundServer, ProgramRegistry, ProgramSpec, ServeSettings, create_app  # noqa: E402
from drpo_dspy.serve.errors import APIError  # noqa: E402
from drpo_dspy.serve.features import Route, parse_features  # noqa: E402
from drpo_dspy.serve.plain_layout import plain_system  # noqa: E402

KEY = "sk-serve-tools-test-0123456789"
INSTRUCTIONS = "You are a careful, honest assistant."
EXAMPLES = [("What is the weather like in Rome today?", "I would check a current forecast for Rome."),
            ("Name a prime number.", "Seven is prime."),
            ("How do I boil an egg?", "Simmer it for nine minutes.")]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = "What is the weather in Paris right now?"


def weather(messages: list[dict[str, Any]], params: dict[str, Any]) -> Reply:
    """Calls get_weather for a question; answers from the tool result (and writes past an end marker)."""
    if messages[-1]["role"] == "tool":
        sky = json.loads(messages[-1]["content"])["sky"]
        return Reply(f"It is {sky} in Paris.\n<END>\nnot part of the answer")
    return Reply(calls=[("get_weather", {"city": "Paris"})])


class Served:
    def __init__(self, tmp_path: Path, model: RecordedModel | str, name: str = "aligned", **settings: Any):
        path = tmp_path / "program.json"
        AlignedResponder(INSTRUCTIONS, EXAMPLES, k=1, embedder=HashingEmbedder()).save(str(path))
        self.program = AlignedResponder(examples=[], k=0)
        self.program.load(path)
        self.registry = ProgramRegistry([ProgramSpec(name, path)])
        self.registry.load_all()
        base = model.model if isinstance(model, RecordedModel) else model
        self.server = BackgroundServer(create_app(ServeSettings(base_model=base, reload_interval=0, **settings),
                                                  self.registry)).start()
        self.client = openai.OpenAI(base_url=self.server.base_url, api_key=KEY, max_retries=0)

    def expected_system(self, query: str, client_system: str = "") -> str:
        examples = [(e.shown_query, e.answer) for e in self.program.retrieve(query)]
        return plain_system(INSTRUCTIONS, examples, client_system)

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.server.base_url + "/chat/completions", json=body, timeout=30)


@pytest.fixture
def model() -> RecordedModel:
    return recorded_model(weather)


@pytest.fixture
def served(tmp_path: Path, model: RecordedModel) -> Iterator[Served]:
    s = Served(tmp_path, model)
    yield s
    s.server.stop()


def _set(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without their null fields (litellm drops an assistant's ``content: null`` next to tool calls)."""
    return [{key: value for key, value in m.items() if value is not None} for m in messages]


def _turn(client: Any, messages: list[dict[str, Any]], stream: bool) -> tuple[str | None, list[dict], str, list]:
    """One request: (content, tool calls as dicts, finish_reason, the tool-call pieces as streamed)."""
    response = client.chat.completions.create(model="aligned", messages=messages, tools=[WEATHER],
                                              tool_choice="auto", parallel_tool_calls=False, stream=stream)
    if not stream:
        message = response.choices[0].message
        calls = [call.model_dump(exclude_none=True) for call in message.tool_calls or ()]
        return message.content, calls, response.choices[0].finish_reason, []
    text, calls, pieces, finish = "", {}, [], None
    for chunk in response:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or ():
                pieces.append(piece.model_dump(exclude_none=True))
                call = calls.setdefault(piece.index, {"id": "", "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
                call["id"] += piece.id or ""
                call["function"]["name"] += piece.function.name or ""
                call["function"]["arguments"] += piece.function.arguments or ""
    return text or None, [calls[i] for i in sorted(calls)], finish, pieces


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tool_call_round_trip_with_the_openai_client(served: Served, model: RecordedModel, stream: bool) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Answer briefly."},
                                      {"role": "user", "content": QUESTION}]
    content, calls, finish, pieces = _turn(served.client, messages, stream)
    assert finish == "tool_calls" and not content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    if stream:  # OpenAI's chunk shape: the first piece names the call, the next ones carry arguments only
        assert pieces[0].keys() == {"index", "id", "type", "function"} and pieces[0]["function"]["name"]
        assert all(p.keys() == {"index", "function"} and p["function"].keys() == {"arguments"} for p in pieces[1:])
    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": json.dumps({"sky": "sunny"})}]
    content, calls, finish, _ = _turn(served.client, messages, stream)
    assert (content, calls, finish) == ("It is sunny in Paris.", [], "stop")

    first, second = model.requests
    assert first.stream is second.stream is stream
    for request in (first, second):  # the tools and the client's choices reached the base model as sent
        assert request.params["tools"] == [WEATHER]
        assert request.params["tool_choice"] == "auto" and request.params["parallel_tool_calls"] is False
        assert "stop" not in request.params  # no DRPO markers to stop at in the plain layout
        # the aligned prompt, the example retrieved for the user's question (not the tool result), the client's
        # system text: one system message, then the client's own messages verbatim
        assert request.messages[0] == {"role": "system", "content": served.expected_system(QUESTION,
                                                                                           "Answer briefly.")}
        assert "Rome" in request.messages[0]["content"] and "# Query:" not in request.messages[0]["content"]
    assert first.messages[1:] == [messages[1]]
    assert _set(second.messages[1:]) == _set(messages[1:])  # the assistant's tool call and the tool result arrived
    assert second.messages[-1] == {"role": "tool", "tool_call_id": messages[2]["tool_calls"][0]["id"],
                                   "content": '{"sky": "sunny"}'}


def test_litellm_as_the_client(served: Served, model: RecordedModel) -> None:
    options = {"model": "openai/aligned", "api_base": served.server.base_url, "api_key": KEY, "tools": [WEATHER]}
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    whole = litellm.completion(messages=messages, **options).choices[0].message
    chunks = list(litellm.completion(messages=messages, stream=True, **options))
    built = litellm.stream_chunk_builder(chunks, messages=messages).choices[0].message
    for message in (whole, built):
        assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
            ("get_weather", {"city": "Paris"})]
    messages += [{"role": "assistant", "content": None, "tool_calls": [whole.tool_calls[0].model_dump()]},
                 {"role": "tool", "tool_call_id": whole.tool_calls[0].id, "content": '{"sky": "grey"}'}]
    final = litellm.completion(messages=messages, **options)
    assert final.choices[0].message.content == "It is grey in Paris."
    assert [r.params["tools"] for r in model.requests] == [[WEATHER]] * 3
    tool_result = model.requests[-1].messages[-1]
    assert tool_result["role"] == "tool" and tool_result["tool_call_id"] == whole.tool_calls[0].id
    assert model.requests[-1].messages[0]["content"] == served.expected_system(QUESTION)


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"sunny in {city}"


class WeatherQuestion(dspy.Signature):
    """Answer the question; call a tool when it needs current data."""

    question: str = dspy.InputField()
    tools: list[dspy.Tool] = dspy.InputField()
    answer: str = dspy.OutputField()
    calls: dspy.ToolCalls = dspy.OutputField()


def test_a_dspy_program_with_native_function_calling(tmp_path: Path, model: RecordedModel) -> None:
    name = "drpo-tools-dspy"  # litellm is told the served model can call tools (it cannot know a custom name)
    litellm.register_model({f"openai/{name}": {"litellm_provider": "openai", "mode": "chat",
                                               "supports_function_calling": True, "max_tokens": 1024}})
    s = Served(tmp_path, model, name=name)
    try:
        lm = dspy.LM(f"openai/{name}", api_base=s.server.base_url, api_key=KEY, engine="litellm", cache=False)
        tool = dspy.Tool(get_weather)
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_native_function_calling=True)):
            prediction = dspy.Predict(WeatherQuestion)(question=QUESTION, tools=[tool])
    finally:
        s.server.stop()
    call = prediction.calls.tool_calls[0]
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    assert call.execute(functions=[tool]) == "sunny in Paris"
    (request,) = model.requests
    sent = request.params["tools"]
    assert [t["function"]["name"] for t in sent] == ["get_weather"]
    assert sent[0]["function"]["parameters"]["properties"]["city"]["type"] == "string"
    system = request.messages[0]["content"]
    assert system.startswith(INSTRUCTIONS + "\n\nExamples of good answers") and "Rome" in system
    assert "Your input fields are" in system  # DSPy's own system message follows the aligned prompt
    assert QUESTION in request.messages[-1]["content"] and request.messages[-1]["role"] == "user"


def test_an_end_marker_still_cuts_a_plain_answer(served: Served, model: RecordedModel) -> None:
    model.script = lambda messages, params: Reply("  Sure, no tool needed.<End> and then more")
    body = {"model": "aligned", "messages": [{"role": "user", "content": "Hi!"}], "tools": [WEATHER]}
    whole = served.post(body).json()["choices"][0]
    streamed = "".join(c.choices[0].delta.content or "" for c in served.client.chat.completions.create(
        stream=True, **body) if c.choices)
    assert whole["message"]["content"] == streamed == "Sure, no tool needed."
    assert whole["finish_reason"] == "stop" and "tool_calls" not in whole["message"]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
USER = {"role": "user", "content": QUESTION}


@pytest.mark.parametrize(("extra", "message"), [
    ({"tools": WEATHER}, "'tools' must be a list"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "function.name must be 1-64"),
    ({"tools": [WEATHER, WEATHER]}, "is given twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
     "tools[0].function.parameters is not a valid JSON Schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
     "not among 'tools'"),
    ({"tool_choice": "auto"}, "only allowed when 'tools' are given"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "'tool_choice' must be one of"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "must be true or false"),
    ({"messages": [USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]}, "'tool_call_id' of a tool"),
    ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}]},
     "the last message must come from the user or be a tool result"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
                   {"role": "tool", "tool_call_id": "c", "content": "x"}]}, "tool_calls[0] must be"),
    ({"messages": [USER, {"role": "function", "name": "f", "content": "x"}]}, "legacy function calling"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "x"}]}, "no user message has text"),
])
def test_bad_tool_requests_are_400s_before_any_upstream_call(served: Served, model: RecordedModel,
                                                             extra: dict[str, Any], message: str) -> None:
    response = served.post({"model": "aligned", "messages": [USER], **extra})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"] and not model.requests


@pytest.mark.parametrize(("route", "refusal"), [
    (Route("chat", True, "embedded/smollm2-135m", False), "the embedded model cannot call tools"),
    (Route("text", True, "embedded/smollm2-135m", False), "the embedded model cannot call tools"),
    (Route("text", False, "hosted_vllm/mistral", True), "a text-completion endpoint has no tools"),
    (Route("chat", False, "gpt-3.5-turbo-instruct", False), "catalogue says this model cannot call tools"),
    (Route("chat", False, "hosted_vllm/any-model", True), None),  # an operator's own server decides
    (Route("chat", False, "gpt-3.5-turbo-instruct", True), None),
    (Route("chat", False, "ollama_chat/llama3", False), None),  # unknown to the catalogue: asked, not refused
])
def test_which_routes_take_tools(route: Route, refusal: str | None) -> None:
    for body, messages in (({"tools": [WEATHER]}, False), ({}, True)):
        if refusal is None:
            assert parse_features(body, "chat", route, tool_messages=messages).layout == "plain"
            continue
        with pytest.raises(APIError) as caught:
            parse_features(body, "chat", route, tool_messages=messages)
        assert caught.value.status == 400 and refusal in caught.value.message
        assert "hosted_vllm/<model>" in caught.value.message  # names what can serve tools


def test_the_embedded_base_refuses_tools_with_a_clear_400(tmp_path: Path) -> None:
    needs_llama_cpp()
    s = Served(tmp_path, "embedded/smollm2-135m")
    try:
        with pytest.raises(openai.BadRequestError) as tools:
            s.client.chat.completions.create(model="aligned", messages=[USER], tools=[WEATHER])
        with pytest.raises(openai.BadRequestError) as history:
            s.client.chat.completions.create(model="aligned", messages=[
                USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    finally:
        s.server.stop()
    for caught in (tools, history):
        assert "the embedded model cannot call tools" in caught.value.body["message"]
        assert caught.value.body["code"] == "unsupported_parameter"


def test_tools_on_the_completions_endpoint_are_an_unknown_argument(served: Served, model: RecordedModel) -> None:
    response = httpx.post(served.server.base_url + "/completions", timeout=30,
                          json={"model": "aligned", "prompt": QUESTION, "tools": [WEATHER]})
    assert response.status_code == 400 and not model.requests
    assert response.json()["error"]["message"] == "Unrecognized request argument supplied: tools"
