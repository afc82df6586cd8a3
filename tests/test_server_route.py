"""The OpenAI-compatible server route (what a vLLM deployment speaks), tested against a real server.

The test starts llama-cpp-python's OpenAI-compatible server on the embedded GGUF as a subprocess: it answers
``/v1/chat/completions`` and ``/v1/completions`` exactly as ``vllm serve`` does, so the litellm model strings used
here (``hosted_vllm/<served name>`` with ``api_base``) are the ones a vLLM user writes. Chat models are called
with the DRPO layout as chat messages; ``model_type="text"`` (base models) sends the exact concatenated prompt
through the ``drpo_text`` route to ``/v1/completions``. The replica-pool snippet of docs/vllm.md is executed too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
for _module in SERVER_EXTRAS:
    pytest.importorskip(_module, reason=f'the server route test needs pip install "llama-cpp-python[server]" '
                                        f"({_module} is missing)")

import dspy  # noqa: E402
import litellm  # noqa: E402

from drpo_dspy import DRPO, AlignedResponder  # noqa: E402
from drpo_dspy.adapters.drpo_layout import STOP_SEQUENCES, build_messages, system_part, user_part  # noqa: E402
from drpo_dspy.clients.embedded import gguf_path  # noqa: E402
from drpo_dspy.retrievers.embedders import HashingEmbedder  # noqa: E402

pytestmark = pytest.mark.embedded

SERVED_NAME = "smollm2-135m-server"
READY_TIMEOUT_S = 60.0

# Runs llama-cpp-python's server module after one tweak that local_model.EmbeddedRuntime also makes: no repacked
# (extra) weight buffers, whose AMX kernels fault under VMs that do not grant AMX state. Everything else is the
# stock ``python -m llama_cpp.server`` with the command-line flags given.
LAUNCHER = """
import sys
import llama_cpp.llama_cpp as capi
_default = capi.llama_model_default_params
def _params():
    params = _default()
    params.use_extra_bufts = False
    return params
capi.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
main()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running server: its ``/v1`` base URL and its log (uvicorn writes one access line per request)."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def requests(self, path: str) -> int:
        """How many POST requests the server has answered on ``path`` (from its access log)."""
        return self.log.read_text(encoding="utf-8", errors="replace").count(f'"POST {path} HTTP')

    def log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


@contextlib.contextmanager
def _running_server(log: Path, threads: int = 2):
    """A llama.cpp server on a free port, ready to answer; stopped on exit."""
    try:
        model = gguf_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "--model", str(model), "--model_alias", SERVED_NAME,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
             "--verbose", "False"],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    running = Server(process, f"http://127.0.0.1:{port}/v1", log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode} before it was ready:\n{running.log_tail()}")
            try:
                with urllib.request.urlopen(f"{running.url}/models", timeout=2) as reply:
                    served = [m["id"] for m in json.load(reply)["data"]]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server was not ready after {READY_TIMEOUT_S:.0f}s:\n{running.log_tail()}")
                time.sleep(0.25)
        assert served == [SERVED_NAME]
        yield running
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with _running_server(tmp_path_factory.mktemp("server") / "server.log") as running:
        yield running


@pytest.fixture
def text_completion_calls(monkeypatch):
    """Record every ``litellm.text_completion`` call (arguments and the server's reply), still calling it."""
    calls: list[tuple[dict, object]] = []
    real = litellm.text_completion

    def recording(*args, **kwargs):
        reply = real(*args, **kwargs)
        calls.append((kwargs, reply))
        return reply

    monkeypatch.setattr(litellm, "text_completion", recording)
    return calls


def _server_lm(server: Server, **kwargs) -> dspy.LM:
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 48)
    return dspy.LM(f"hosted_vllm/{SERVED_NAME}", api_base=server.url, api_key="none", **kwargs)


def test_chat_route_answers_in_the_drpo_layout(server):
    lm = _server_lm(server)
    before = server.requests("/v1/chat/completions")
    responder = AlignedResponder(examples=[], k=0)

    answer = responder(query="Name one fruit that is yellow.", lm=lm).response

    assert isinstance(answer, str) and answer.strip()
    call = lm.history[-1]
    assert call["messages"] == build_messages(responder.instructions, [], "Name one fruit that is yellow.")
    assert call["kwargs"]["stop"] == list(STOP_SEQUENCES)
    assert call["response_model"] == SERVED_NAME  # the model name the server answered with
    assert server.requests("/v1/chat/completions") == before + 1


def test_text_route_sends_the_exact_concatenated_prompt(server, text_completion_calls):
    lm = _server_lm(server, model_type="text")
    instructions = "You are a concise assistant."
    example = ("What is 2 + 2?", "2 + 2 is 4.")
    query = "Name one fruit that is yellow."
    responder = AlignedResponder(instructions, examples=[example], k=1, embedder=HashingEmbedder())
    before_text, before_chat = server.requests("/v1/completions"), server.requests("/v1/chat/completions")

    answer = responder(query=query, lm=lm).response

    assert isinstance(answer, str) and answer.strip()
    expected_prompt = system_part(instructions, [example]) + user_part(query)
    assert expected_prompt == (f"{instructions}\n\n# Query:\n{example[0]}\n\n# Answer:\n{example[1]}"
                               f"\n\n# Query:\n{query}\n\n# Answer:\n")
    (request, _reply), = text_completion_calls
    assert request["model"] == f"text-completion-openai/{SERVED_NAME}" and request["api_base"] == server.url
    assert request["prompt"] == expected_prompt
    assert "\n# Query:" in request["stop"]
    assert server.requests("/v1/completions") == before_text + 1
    assert server.requests("/v1/chat/completions") == before_chat  # no chat template anywhere

    # Server-side proof: with echo the server returns the prompt it received, byte for byte, before the completion.
    responder(query=query, lm=lm, config={"echo": True, "max_tokens": 1})
    request, reply = text_completion_calls[-1]
    assert request["echo"] is True
    assert reply.choices[0].text.startswith(expected_prompt)


def test_compile_with_the_base_model_on_the_server(server, text_completion_calls, tmp_path):
    from world import World

    base = _server_lm(server, model_type="text", max_tokens=48)
    helpers = World(lambda p, q: [3, 3])  # scripted helper roles: only the base model's calls cost time here
    queries = ["How do I make a cup of green tea?", "Write a limerick about a cat."]
    before = server.requests("/v1/completions")
    drpo = DRPO(base_lm=base, metrics_lm=helpers.metrics_lm, judge_lm=helpers.judge_lm,
                optimizer_lm=helpers.optimizer_lm, beam_size=1, n_actions=1, depth=2, max_depth_increase=0, k=0,
                log_dir=tmp_path / "run", progress=False, num_threads=1)
    student = AlignedResponder(examples=[], k=0)

    program = drpo.compile(student, trainset=queries)

    run = tmp_path / "run"
    levels = json.loads((run / "levels.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert list(levels) == ["level 1", "level 2"] and levels["level 1"]["Prompt"] == student.instructions
    assert summary["usage"]["base"]["lm_calls"] == 2 and summary["usage"]["base"]["prompt_tokens"] > 0
    # Each level's answer came from the server as one raw completion of the DRPO prompt, one query per level.
    prompts = [request["prompt"] for request, _reply in text_completion_calls]
    assert len(prompts) == 2 and server.requests("/v1/completions") == before + 2
    assert prompts[0] == system_part(student.instructions, []) + user_part(queries[0])
    assert prompts[1] == system_part(levels["level 2"]["Prompt"], []) + user_part(queries[1])
    config = json.loads((run / "config.json").read_text())
    assert SERVED_NAME in json.dumps(config["roles"]["base"]) and "none" not in json.dumps(config["roles"]["base"])

    answer = program(query="Give me one tip for better sleep.", lm=base).response
    assert isinstance(answer, str) and answer.strip()
    assert server.requests("/v1/completions") == before + 3


def test_the_pool_snippet_of_the_docs_routes_both_pools(server, text_completion_calls):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "vllm.md").read_text(encoding="utf-8")
    marker = "<!-- the snippet below is executed by tests/test_server_route.py"
    assert marker in doc
    snippet = doc.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    replicas = 'REPLICAS = ["http://gpu-a:8000/v1", "http://gpu-b:8000/v1"]'
    model = 'MODEL = "mistral-7b-base"'
    assert replicas in snippet and model in snippet
    # Both "replicas" are the one test server here; in production they are different machines.
    snippet = snippet.replace(replicas, f'REPLICAS = ["{server.url}", "{server.url}"]')
    snippet = snippet.replace(model, f'MODEL = "{SERVED_NAME}"')
    namespace: dict = {}
    exec(compile(snippet, "docs/vllm.md", "exec"), namespace)
    base, chat = namespace["base"].copy(max_tokens=24), namespace["chat"].copy(max_tokens=24)
    assert namespace["drpo"].base_lm.model == namespace["base"].model  # DRPO(base_lm=[...]) is the same pool
    responder = AlignedResponder("You are a concise assistant.", examples=[], k=0)
    query = "Name one animal that lives in the sea."
    before_text, before_chat = server.requests("/v1/completions"), server.requests("/v1/chat/completions")

    from_base = responder(query=query, lm=base).response
    from_chat = responder(query=query, lm=chat).response

    assert from_base.strip() and from_chat.strip()
    (request, _reply), = text_completion_calls  # the base pool: one raw completion with the exact prompt
    assert request["prompt"] == system_part(responder.instructions, []) + user_part(query)
    assert request["api_base"] == server.url and "\n# Query:" in request["stop"]
    assert server.requests("/v1/completions") == before_text + 1
    assert server.requests("/v1/chat/completions") == before_chat + 1


def test_the_readme_configuration_gets_full_length_greedy_answers(server, text_completion_calls):
    """No max_tokens on the dspy.LM (as the README writes it): the responder still sends its cap and temperature 0,
    so the server's defaults (16 tokens, sampling) never apply; the calls show in the user's own history."""
    query = "Explain in detail how photosynthesis works."
    for model_type in ("text", "chat"):
        lm = dspy.LM(f"hosted_vllm/{SERVED_NAME}", api_base=server.url, api_key="none", model_type=model_type,
                     cache=False)
        responder = AlignedResponder(examples=[], k=0, max_tokens=96)
        answer = responder(query=query, lm=lm).response
        assert len(answer.split()) > 30, (model_type, answer)  # far past the server's 16-token default
        assert len(lm.history) == 1 and lm.history[0]["kwargs"].get("max_tokens") == 96
        assert lm.history[0]["kwargs"].get("temperature") == 0.0
    sent = text_completion_calls[-1][0]
    assert sent["max_tokens"] == 96 and sent["temperature"] == 0.0


def test_a_pool_of_two_servers_survives_one_being_killed_mid_run(server, tmp_path):
    """Two real servers behind one pool: both answer; one is killed; every later call is answered by the other."""
    from concurrent.futures import ThreadPoolExecutor

    from drpo_dspy import replica_pool
    from drpo_dspy.clients.replica_pool import pool_of

    with _running_server(tmp_path / "second.log", threads=1) as second:
        lm = replica_pool([_server_lm(server, cache=False, max_tokens=8), _server_lm(second, cache=False,
                                                                                     max_tokens=8)], name="kill")
        responder = AlignedResponder(examples=[], k=0, max_tokens=8)
        queries = [f"Name a colour, number {i}." for i in range(6)]
        with ThreadPoolExecutor(2) as workers:  # two at once: least-busy gives each server one
            first = list(workers.map(lambda q: responder(query=q, lm=lm).response, queries[:2]))
            _stop(second.process)
            after = list(workers.map(lambda q: responder(query=q, lm=lm).response, queries[2:]))
        stats = pool_of(lm).stats()
    assert all(answer.strip() for answer in first + after)
    assert stats[second.url]["calls"] >= 1 and set(stats[second.url]["failures"]) == {"unreachable"}
    assert stats[second.url]["failures"]["unreachable"] <= 2  # the calls in flight when it died, then cooled down
    assert stats[server.url]["calls"] == 6 - stats[second.url]["calls"]

