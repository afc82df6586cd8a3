"""Tests for the embedded local model provider and the raw text-completion route (offline)."""

from __future__ import annotations

import asyncio
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
import pytest

from drpo_dspy.clients import embedded as lm_mod
from drpo_dspy.clients import raw_text as rt_mod
from drpo_dspy.clients.embedded import (
    EMBEDDED_MODEL,
    Sample,
    embedded_lm,
    ensure_embedded_runtime,
    register_embedded_provider,
)
from drpo_dspy.clients.raw_text import RAW_TEXT_PROVIDER, join_messages, raw_completion_lm

litellm = lm_mod.litellm  # imported through drpo_dspy, after its offline defaults


def _lm(**kwargs: Any) -> dspy.LM:
    register_embedded_provider()
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 24)
    return dspy.LM(EMBEDDED_MODEL, cache=False, **kwargs)


def _messages_call(lm: dspy.LM, messages: list[dict[str, str]], **kwargs: Any) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # messages= is deprecated in DSPy 3.4, still supported
        return lm(messages=messages, **kwargs)


class _FakeRuntime:
    """Stands in for llama.cpp: records generate() calls and answers with the seed used."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def chat_prompt(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str], None]:
        return [1, 2, 3], ["<|im_end|>"], None

    def text_prompt(self, prompt: str) -> list[int]:
        return list(range(len(prompt)))

    def generate(self, tokens: list[int], **kwargs: Any) -> list[Sample]:
        self.calls.append({"tokens": tokens, **kwargs})
        seed = kwargs["seed"]
        return [Sample(f"seed={None if seed is None else seed + i}", "stop", 2) for i in range(kwargs["n"])]


# ---------------------------------------------------------------- without the model


def test_registration_is_idempotent_and_thread_safe() -> None:
    threads = [threading.Thread(target=register_embedded_provider) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    providers = [item["provider"] for item in litellm.custom_provider_map]
    assert providers.count("embedded") == 1
    assert "embedded" in litellm.provider_list and "embedded" in litellm._custom_providers


def test_dspy_routes_embedded_to_litellm_with_response_schema() -> None:
    lm = _lm()
    assert lm.supports_response_schema
    assert {"response_format", "stop", "seed", "n"} <= lm.supported_params


def test_embedded_lm_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_mod, "ensure_embedded_runtime", lambda *a: lm_mod.resolve_embedded(lm_mod.EMBEDDED_MODEL))
    lm = embedded_lm(max_tokens=16)
    assert (lm.model, lm.engine, lm.kwargs["temperature"], lm.kwargs["max_tokens"]) == (
        EMBEDDED_MODEL,
        "litellm",
        0.0,
        16,
    )


def test_param_mapping_usage_and_n_with_fake_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeRuntime()
    monkeypatch.setattr(lm_mod, "get_runtime", lambda *a: fake)
    lm = _lm(max_tokens=7)
    assert lm("hi", stop="END", seed=5, n=2, temperature=0.5, top_p=0.9) == ["seed=5", "seed=6"]
    call = fake.calls[-1]
    assert call["stop"] == ["END", "<|im_end|>"] and call["max_tokens"] == 7 and call["n"] == 2
    assert call["temperature"] == 0.5 and call["top_p"] == 0.9 and call["grammar"] is None
    usage = lm.history[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 4, 7)
    assert lm.history[-1]["response"].choices[1].finish_reason == "stop"


def test_missing_runtime_raises_import_error_with_pip_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lm_mod.GGUF_ENV_VAR, raising=False)
    from drpo_dspy.engine import models as embedded_models

    real = embedded_models.importlib.util.find_spec
    monkeypatch.setattr(embedded_models.importlib.util, "find_spec",
                        lambda name: None if name == "llama_cpp" else real(name))
    with pytest.raises(ImportError, match=r'pip install "drpo-dspy\[local\]"'):
        ensure_embedded_runtime()
    monkeypatch.setattr(embedded_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r'pip install "drpo-dspy\[local\]"'):
        lm_mod.gguf_path()


def test_raw_route_copy_keeps_kwargs() -> None:
    base = dspy.LM(
        "openai/davinci-002",
        model_type="text",
        api_base="http://127.0.0.1:9/v1",
        api_key="sk-test",
        temperature=0.3,
        max_tokens=8,
        cache=False,
    )
    raw = raw_completion_lm(base)
    assert raw.model == f"{RAW_TEXT_PROVIDER}/openai/davinci-002" and raw.model_type == "chat"
    assert raw.kwargs == base.kwargs and raw.engine == "litellm"
    assert raw_completion_lm(raw) is raw
    assert not hasattr(lm_mod, "raw_completion_lm")  # one home: drpo_dspy.clients.raw_text (no import circle)
    assert base.model == "openai/davinci-002" and base.model_type == "text"


def test_raw_route_remote_calls_litellm_text_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_text_completion(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return litellm.TextCompletionResponse(
            model="davinci-002",
            choices=[{"text": " four", "index": 0, "finish_reason": "stop"}],
            usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        )

    monkeypatch.setattr(rt_mod.litellm, "text_completion", fake_text_completion)
    raw = raw_completion_lm(
        dspy.LM(
            "openai/davinci-002",
            model_type="text",
            api_base="http://127.0.0.1:9/v1",
            api_key="sk-test",
            temperature=0.3,
            max_tokens=8,
            cache=False,
        )
    )
    messages = [{"role": "system", "content": "Q: 2+2?\n"}, {"role": "user", "content": "A:"}]
    assert _messages_call(raw, messages, stop=["\n"], seed=1) == [" four"]
    sent = calls[-1]
    assert sent["model"] == "text-completion-openai/davinci-002" and sent["prompt"] == "Q: 2+2?\nA:"
    assert sent["api_base"] == "http://127.0.0.1:9/v1" and sent["api_key"] == "sk-test"
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["seed"]) == (0.3, 8, ["\n"], 1)
    assert raw.history[-1]["usage"]["total_tokens"] == 6
    assert "api_key" not in raw.history[-1]["kwargs"]


def test_join_messages_is_exact() -> None:
    messages = [
        {"role": "system", "content": "a\n"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": " c"},
    ]
    assert join_messages(messages) == "a\nb c"


# ---------------------------------------------------------------- with the real embedded model


@pytest.fixture()
def runtime(embedded_runtime: lm_mod.EmbeddedRuntime) -> lm_mod.EmbeddedRuntime:
    return embedded_runtime


@pytest.mark.embedded
def test_chat_returns_text_and_usage(runtime: lm_mod.EmbeddedRuntime) -> None:
    lm = _lm()
    out = lm("What is the capital of France?")
    assert len(out) == 1 and out[0].strip()
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert lm.history[-1]["response"].choices[0].finish_reason in {"stop", "length"}


@pytest.mark.embedded
def test_default_auto_engine_and_async(runtime: lm_mod.EmbeddedRuntime) -> None:
    lm = _lm(max_tokens=8)
    assert lm.engine == "auto"
    assert asyncio.run(lm.acall("Say hello.")) == lm("Say hello.")


@pytest.mark.embedded
def test_stop_and_max_tokens(runtime: lm_mod.EmbeddedRuntime) -> None:
    lm = _lm(max_tokens=32)
    prompt = "Describe a sunny day at the beach."
    full = lm(prompt)[0]
    words = full.split()
    assert len(words) >= 5, full
    stop = words[3]
    stopped = lm(prompt, stop=stop)[0]  # a plain string is accepted as well as a list
    assert stopped == full[: full.index(stop)]
    assert lm.history[-1]["response"].choices[0].finish_reason == "stop"
    short = lm(prompt, max_tokens=5)[0]
    assert lm.history[-1]["usage"]["completion_tokens"] == 5 and full.startswith(short)
    assert lm.history[-1]["response"].choices[0].finish_reason == "length"


@pytest.mark.embedded
def test_temperature_zero_is_deterministic(runtime: lm_mod.EmbeddedRuntime) -> None:
    lm = _lm()
    system = "You are a concise assistant who answers in one plain sentence. " * 8  # > N_BATCH tokens

    def ask(question: str) -> list[str]:
        return _messages_call(lm, [{"role": "system", "content": system}, {"role": "user", "content": question}])

    runtime.reset()
    fresh = ask("Write one sentence about the sea.")
    ask("Write one sentence about the mountains.")  # reuses the cached system-prompt chunks
    assert ask("Write one sentence about the sea.") == fresh
    assert lm("Write one sentence about the sea.") == lm("Write one sentence about the sea.")


@pytest.mark.embedded
def test_seed_reproducible_and_n_choices(runtime: lm_mod.EmbeddedRuntime) -> None:
    lm = _lm(temperature=1.0, max_tokens=16)
    a = lm("Invent a name for a cat.", seed=7, n=2)
    b = lm("Invent a name for a cat.", seed=7, n=2)
    assert len(a) == 2 and a == b
    assert lm("Invent a name for a cat.", seed=8) == [a[1]]  # choice i uses seed + i


class Rating(dspy.Signature):
    """Rate the quality of the text from 1 to 10 and give reasons."""

    text: str = dspy.InputField()
    score: int = dspy.OutputField()
    reasons: list[str] = dspy.OutputField()


def _spy_formats(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    formats: list[Any] = []
    real = lm_mod.grammar_for

    def spy(response_format: Any) -> Any:
        formats.append(response_format)
        return real(response_format)

    monkeypatch.setattr(lm_mod, "grammar_for", spy)
    return formats


@pytest.mark.embedded
def test_json_adapter_schema_is_enforced(runtime: lm_mod.EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    formats = _spy_formats(monkeypatch)
    with dspy.context(lm=_lm(max_tokens=64), adapter=dspy.JSONAdapter()):
        pred = dspy.Predict(Rating)(text="The cat sat on the mat.")
    assert isinstance(pred.score, int) and isinstance(pred.reasons, list)
    assert formats[-1]["type"] == "json_schema"
    assert set(formats[-1]["json_schema"]["schema"]["properties"]) == {"score", "reasons"}


@pytest.mark.embedded
def test_chat_adapter_json_fallback_reaches_schema(
    runtime: lm_mod.EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats = _spy_formats(monkeypatch)
    with dspy.context(lm=_lm(max_tokens=64), adapter=dspy.ChatAdapter()):
        pred = dspy.Predict(Rating)(text="The cat sat on the mat.")
    assert isinstance(pred.score, int) and isinstance(pred.reasons, list)
    assert formats[0] is None  # the ChatAdapter call is free text
    if len(formats) > 1:  # SmolLM2 misses ChatAdapter's markers; DSPy retries with JSONAdapter, schema enforced
        assert formats[-1]["type"] == "json_schema"


@pytest.mark.embedded
def test_concurrent_calls_match_sequential(runtime: lm_mod.EmbeddedRuntime) -> None:
    lm = _lm(max_tokens=8)
    prompts = [f"Name fruit number {i}." for i in range(8)]
    sequential = [lm(p) for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lm, prompts))
    assert concurrent == sequential


@pytest.mark.embedded
def test_raw_route_embedded_uses_exact_prompt(runtime: lm_mod.EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []
    token_lists: list[list[int]] = []
    real_prompt, real_generate = lm_mod.EmbeddedRuntime.text_prompt, lm_mod.EmbeddedRuntime.generate

    def spy_prompt(self: lm_mod.EmbeddedRuntime, prompt: str) -> list[int]:
        prompts.append(prompt)
        return real_prompt(self, prompt)

    def spy_generate(self: lm_mod.EmbeddedRuntime, tokens: list[int], **kwargs: Any) -> list[Sample]:
        token_lists.append(tokens)
        return real_generate(self, tokens, **kwargs)

    monkeypatch.setattr(lm_mod.EmbeddedRuntime, "text_prompt", spy_prompt)
    monkeypatch.setattr(lm_mod.EmbeddedRuntime, "generate", spy_generate)
    raw = raw_completion_lm(dspy.LM(EMBEDDED_MODEL, model_type="text", temperature=0.0, max_tokens=16, cache=False))
    messages = [{"role": "system", "content": "Q: What is the capital of France?\n"}, {"role": "user", "content": "A:"}]
    out = _messages_call(raw, messages)
    assert prompts == ["Q: What is the capital of France?\nA:"]
    assert token_lists[-1] == runtime.llm.tokenize(prompts[0].encode(), add_bos=True, special=True)  # no template
    assert len(out) == 1 and out[0].strip()
    assert raw.history[-1]["usage"]["prompt_tokens"] == len(token_lists[-1])
