"""Structured output through ``drpo serve``: ``response_format`` reaches the base model in the plain layout, the
JSON comes back whole (streamed and not), bad schemas are 400s before any upstream call, and on the real embedded
model (chat and text routes) llama.cpp's grammar makes every answer parse."""

from __future__ import annotations

import json
import random
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
from drpo_dspy.serve.answer_stream import AnswerStream  # noqa: E402
from drpo_dspy.serve.answers import json_parts, plain_parts  # noqa: E402
from drpo_dspy.serve.errors import APIError  # noqa: E402
from drpo_dspy.serve.features import Route, parse_features  # noqa: E402
from drpo_dspy.serve.plain_layout import plain_system  # noqa: E402

KEY = "sk-serve-structured-test-01234"
INSTRUCTIONS = "You are a careful, honest assistant."
EXAMPLES = [("Tell me about Paris.", "Paris is the capital of France, on the Seine."),
            ("Name a prime number.", "Seven is prime.")]
CITY = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
QUESTION = "Tell me about Paris as JSON."
ANSWER = {"city": "Paris", "population": 2100000}


class Served:
    def __init__(self, tmp_path: Path, base_model: str, name: str = "aligned", **settings: Any):
        path = tmp_path / "program.json"
        AlignedResponder(INSTRUCTIONS, EXAMPLES, k=1, embedder=HashingEmbedder()).save(str(path))
        self.program = AlignedResponder(examples=[], k=0)
        self.program.load(path)
        registry = ProgramRegistry([ProgramSpec(name, path)])
        registry.load_all()
        settings = {"reload_interval": 0, **settings}
        self.server = BackgroundServer(create_app(ServeSettings(base_model=base_model, **settings), registry)).start()
        self.client = openai.OpenAI(base_url=self.server.base_url, api_key=KEY, max_retries=0)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.server.base_url + path, json=body, timeout=60)


@pytest.fixture
def model() -> RecordedModel:
    return recorded_model(lambda messages, params: Reply("\n " + json.dumps(ANSWER) + "\n"))


@pytest.fixture
def served(tmp_path: Path, model: RecordedModel) -> Iterator[Served]:
    s = Served(tmp_path, model.model)
    yield s
    s.server.stop()


def test_json_schema_reaches_the_base_model_in_the_plain_layout(served: Served, model: RecordedModel) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    whole = served.client.chat.completions.create(model="aligned", messages=messages, response_format=CITY_FORMAT)
    chunks = served.client.chat.completions.create(model="aligned", messages=messages, response_format=CITY_FORMAT,
                                                   stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == streamed == json.dumps(ANSWER)  # whole, only the whitespace stripped
    assert json.loads(streamed) == ANSWER
    examples = [(e.shown_query, e.answer) for e in served.program.retrieve(QUESTION)]
    for request in model.requests:
        assert request.params["response_format"] == CITY_FORMAT  # forwarded as sent
        assert "stop" not in request.params  # no DRPO marker may cut the JSON
        assert request.messages == [{"role": "system", "content": plain_system(INSTRUCTIONS, examples)}, *messages]
        assert "Paris is the capital" in request.messages[0]["content"]  # the retrieved example


def test_json_object_on_the_completions_endpoint(served: Served, model: RecordedModel) -> None:
    completion = served.client.completions.create(model="aligned", prompt=QUESTION,
                                                  extra_body={"response_format": {"type": "json_object"}})
    assert json.loads(completion.choices[0].text) == ANSWER
    (request,) = model.requests
    assert request.params["response_format"] == {"type": "json_object"}
    assert request.messages[1:] == [{"role": "user", "content": QUESTION}]


@pytest.mark.parametrize(("response_format", "message"), [
    ("json", "'response_format' must be an object"),
    ({"type": "yaml"}, "'response_format' must be an object with type one of"),
    ({"type": "json_schema"}, "'response_format.json_schema' must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": CITY}}, "json_schema.name' must be 1-64"),
    ({"type": "json_schema", "json_schema": {"name": "city"}}, "json_schema.schema' is required"),
    ({"type": "json_schema", "json_schema": {"name": "city", "schema": [CITY]}}, "must be a JSON Schema object"),
    ({"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "nonsense"}}},
     "is not a valid JSON Schema"),
    ({"type": "json_schema", "json_schema": {"name": "city", "schema": {"properties": {"a": {"type": 7}}}}},
     "is not a valid JSON Schema"),
    ({"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": "yes"}},
     "'response_format.json_schema.strict' must be true or false"),
])
def test_bad_formats_are_400s_before_any_upstream_call(served: Served, model: RecordedModel, response_format: Any,
                                                       message: str) -> None:
    response = served.post("/chat/completions", {"model": "aligned", "response_format": response_format,
                                                  "messages": [{"role": "user", "content": QUESTION}]})
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert response.json()["error"]["param"].startswith("response_format") and not model.requests


def test_which_routes_take_a_response_format() -> None:
    body = {"response_format": CITY_FORMAT}
    embedded_text = parse_features(body, "chat", Route("text", True, "embedded/gemma-3-270m", False))
    assert (embedded_text.layout, embedded_text.shape) == ("drpo", "json")  # the DRPO document, a grammar answer
    assert parse_features(body, "chat", Route("chat", True, "embedded/smollm2-135m", False)).layout == "plain"
    assert parse_features(body, "chat", Route("chat", False, "hosted_vllm/m", True)).params["response_format"]
    with pytest.raises(APIError) as caught:
        parse_features(body, "text", Route("text", False, "hosted_vllm/m", True))
    assert "forwards text parameters only" in caught.value.message and "--base-model-type chat" in caught.value.message


class CityFacts(dspy.Signature):
    """Describe the city."""

    question: str = dspy.InputField()
    city: str = dspy.OutputField()
    population: int = dspy.OutputField()


def test_a_dspy_program_with_a_json_schema(tmp_path: Path, model: RecordedModel) -> None:
    name = "drpo-structured-dspy"  # litellm is told the served model takes JSON schemas (it cannot know the name)
    litellm.register_model({f"openai/{name}": {"litellm_provider": "openai", "mode": "chat",
                                               "supports_response_schema": True, "max_tokens": 1024}})
    s = Served(tmp_path, model.model, name=name)
    try:
        lm = dspy.LM(f"openai/{name}", api_base=s.server.base_url, api_key=KEY, engine="litellm", cache=False)
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            prediction = dspy.Predict(CityFacts)(question=QUESTION)
    finally:
        s.server.stop()
    assert (prediction.city, prediction.population) == ("Paris", 2100000)
    (request,) = model.requests
    sent = request.params["response_format"]
    assert sent["type"] == "json_schema"
    assert set(sent["json_schema"]["schema"]["properties"]) == {"city", "population"}
    assert request.messages[0]["content"].startswith(INSTRUCTIONS + "\n\nExamples of good answers")
    assert "Your input fields are" in request.messages[0]["content"]  # DSPy's own system text follows
    assert QUESTION in request.messages[-1]["content"]


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


@pytest.mark.embedded
@pytest.mark.parametrize("route", ["chat", "text"])
def test_the_embedded_models_answer_always_parses(tmp_path: Path, route: str) -> None:
    needs_llama_cpp()
    s = Served(tmp_path, "embedded/smollm2-135m", base_model_type=route)
    ask = {"model": "aligned", "temperature": 0, "max_tokens": 48, "extra_body": {"response_format": PERSON_FORMAT}}
    try:
        if route == "chat":
            messages = [{"role": "user", "content": "Describe a famous scientist."}]
            answer = s.client.chat.completions.create(messages=messages, **ask).choices[0].message.content
            streamed = "".join(c.choices[0].delta.content or "" for c in s.client.chat.completions.create(
                messages=messages, stream=True, **ask) if c.choices)
        else:  # the raw DRPO document, the answer shaped by the grammar
            answer = s.client.completions.create(prompt="Describe a famous scientist.", **ask).choices[0].text
            streamed = "".join(c.choices[0].text for c in s.client.completions.create(
                prompt="Describe a famous scientist.", stream=True, **ask) if c.choices)
    finally:
        s.server.stop()
    assert streamed == answer  # token by token through the grammar, the same JSON
    person = json.loads(answer)
    assert set(PERSON["required"]) <= set(person)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def _streamed(parts: Any, text: str, cuts: list[int]) -> str:
    stream, out, start = AnswerStream(parts), [], 0
    for cut in [*sorted(cuts), len(text)]:
        out.append(stream.feed(text[start:cut]))
        start = cut
    return "".join(out) + stream.finish()


@pytest.mark.parametrize("text", [
    ' {"a": "line one\nline two", "b": 1}\n', '{"a": "tab\there", "q": "\\"quoted\\"\n"}', '{"a": "<END>"}',
    '{"a": "\x01"}', "  [1, 2]  ",
])
def test_structured_answers_stream_whole_and_parse(text: str) -> None:
    rng = random.Random(text)
    whole = json_parts(text)[0]
    assert json.loads(whole) == json.loads(text, strict=False)  # raw control characters escaped, nothing else
    for cuts in ([], list(range(1, len(text))), *(rng.sample(range(len(text)), 3) for _ in range(20))):
        assert _streamed(json_parts, text, cuts) == whole


@pytest.mark.parametrize(("text", "answer"), [
    ("Sure.<END> more", "Sure."), ("  a < b and <endpoint>  ", "a < b and <endpoint>"), ("Done</end>", "Done"),
    ("x<|im_end|>y", "x"), ("# Answer: kept\n# Query: kept", "# Answer: kept\n# Query: kept"), ("plain", "plain"),
])
def test_plain_answers_stream_as_they_are_cut(text: str, answer: str) -> None:
    whole = plain_parts(text)[0]
    assert whole == answer  # cut at an end marker only; headings are the model's own text here
    for cuts in ([], list(range(1, len(text)))):
        assert _streamed(plain_parts, text, cuts) == whole


def test_a_raw_newline_inside_a_json_string_still_parses(served: Served, model: RecordedModel) -> None:
    model.script = lambda messages, params: Reply('{"city": "Paris\nFrance", "population": 2}')
    body = {"model": "aligned", "messages": [{"role": "user", "content": QUESTION}], "response_format": CITY_FORMAT}
    whole = served.post("/chat/completions", body).json()["choices"][0]["message"]["content"]
    streamed = "".join(c.choices[0].delta.content or "" for c in served.client.chat.completions.create(
        stream=True, **body) if c.choices)
    assert whole == streamed and json.loads(whole) == {"city": "Paris\nFrance", "population": 2}
