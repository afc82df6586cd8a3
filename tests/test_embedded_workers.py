"""Parallel decoders on the embedded model: text assembly without the model, and on the model the same completions
with requests decoded in parallel as one at a time, failures confined to their request, and the decoders' limits."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from judge_formats import JUDGE_FORMAT

from drpo_dspy.engine import workers as workers_mod
from drpo_dspy.engine.completion_text import CompletionText

# ---------------------------------------------------------------- text assembly (no model)

_PIECES = {1: b"Hello", 2: b" world", 3: b"!", 4: b" caf\xc3", 5: b"\xa9", 6: b" END", 9: b""}
_EOG = 9


class _Vocab:
    def detokenize(self, tokens: list[int], prev_tokens: list[int] | None = None) -> bytes:
        return b"".join(_PIECES[t] for t in tokens)


def _text(stop: list[str] | None = None, max_tokens: int = 10, stopping: Any = None) -> CompletionText:
    return CompletionText(_Vocab(), [7, 7], stop=stop or [], stopping=stopping, max_tokens=max_tokens,
                          is_eog=lambda token: token == _EOG)


def _feed(text: CompletionText, tokens: list[int]) -> int:
    for i, token in enumerate(tokens):
        if text.add(token):
            return i
    return -1


def test_end_of_generation_stops_without_being_counted() -> None:
    text = _text()
    assert _feed(text, [1, 2, _EOG, 3]) == 2
    assert text.sample() == workers_mod.Sample("Hello world", "stop", 2)
    with pytest.raises(RuntimeError, match="already finished"):
        text.add(3)


def test_max_tokens_ends_with_length() -> None:
    text = _text(max_tokens=2)
    assert _feed(text, [1, 2, 3]) == 1
    assert text.sample() == workers_mod.Sample("Hello world", "length", 2)
    with pytest.raises(RuntimeError, match="not finished"):
        _text().sample()


def test_first_stop_string_cuts_the_text() -> None:
    text = _text(stop=["!", " wor"])
    assert _feed(text, [1, 2, 3]) == 1  # " wor" appears with the second token; "!" never arrives
    assert text.sample() == workers_mod.Sample("Hello", "stop", 2)


def test_a_split_utf8_character_defers_the_checks() -> None:
    text = _text(max_tokens=2, stop=["caf"])
    assert not text.add(1)
    assert not text.add(4)  # ends inside "é": neither the stop string nor the length is checked yet
    assert text.add(5)
    sample = text.sample()
    assert sample.text == "Hello " and sample.finish_reason == "stop" and sample.completion_tokens == 3


def test_stopping_criteria_see_the_evaluated_tokens() -> None:
    seen: list[list[int]] = []

    def stopping(ids: np.ndarray, logits: np.ndarray) -> bool:
        seen.append(ids.tolist())
        return ids.tolist()[-1] == 2

    text = _text(stopping=stopping)
    assert _feed(text, [1, 2, 3]) == 2  # asked before taking 3: the last evaluated token is 2
    assert seen[:3] == [[7, 7], [7, 7, 1], [7, 7, 1, 2]]
    assert text.sample() == workers_mod.Sample("Hello world", "stop", 2)


# ---------------------------------------------------------------- with the real embedded model

_RULE = "You are a careful assistant. Answer in plain words, briefly, and stay on topic. "


@pytest.fixture()
def runtime(embedded_runtime: Any) -> Any:
    return embedded_runtime


def _requests() -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """Judgments, answers and sampled rewrites of different lengths (some prompts past 512 tokens)."""
    requests = []
    for i in range(6):
        messages = [{"role": "system", "content": _RULE * (1 + 9 * i)},
                    {"role": "user", "content": f"Question {i}: how do rivers shape the land?"}]
        params: dict[str, Any] = {"max_tokens": 12 + 4 * i, "temperature": 0.0}
        if i % 3 == 1:
            params["response_format"] = JUDGE_FORMAT
        if i == 2:
            params.update(temperature=0.9, seed=11, n=2)
        if i == 4:
            params["stop"] = [" the"]
        requests.append((messages, params))
    return requests


def _complete_all(runtime: Any, parallel: bool, threads: int) -> tuple[list[Any], Any]:
    from drpo_dspy.clients.embedded import complete_embedded

    runtime.configure(parallel=parallel)
    runtime.reset()
    runtime.reset_stats()
    runtime.decoder.peak_busy = 0

    def one(request: tuple[list[dict[str, str]], dict[str, Any]]) -> list[tuple[str, str]]:
        response = complete_embedded(request[0], dict(request[1]))
        return [(c.message.content, c.finish_reason) for c in response.choices] + [response.usage.completion_tokens]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        outputs = list(pool.map(one, _requests()))
    return outputs, runtime.reset_stats()


@pytest.mark.embedded
def test_requests_decoded_in_parallel_match_one_at_a_time(runtime: Any) -> None:
    alone, alone_stats = _complete_all(runtime, parallel=False, threads=1)
    together, stats = _complete_all(runtime, parallel=True, threads=6)
    assert together == alone
    assert alone[1][0][0].startswith("{") and alone[4][0][1] == "stop" and len(alone[2]) == 3
    assert runtime.decoder.peak_busy == min(runtime.decoder.n_workers, 7)  # 6 requests, one of them n=2
    assert stats.decode_seconds > 0 and alone_stats.decode_seconds == 0
    assert stats.generated_tokens == alone_stats.generated_tokens and stats.prompt_tokens == alone_stats.prompt_tokens


@pytest.mark.embedded
def test_a_failing_request_fails_alone(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from drpo_dspy.clients.embedded import complete_embedded

    runtime.configure(parallel=True)
    real = runtime.llm._init_sampler

    def init_sampler(**kwargs: Any) -> Any:
        if runtime.llm._seed == 666:
            raise RuntimeError("sampler broke")
        return real(**kwargs)

    monkeypatch.setattr(runtime.llm, "_init_sampler", init_sampler)
    messages = [{"role": "user", "content": "Name a colour."}]
    expected = complete_embedded(messages, {"max_tokens": 6, "temperature": 0.0}).choices[0].message.content
    with ThreadPoolExecutor(max_workers=2) as pool:
        bad = pool.submit(complete_embedded, messages, {"max_tokens": 6, "temperature": 0.0, "seed": 666})
        good = pool.submit(complete_embedded, messages, {"max_tokens": 6, "temperature": 0.0})
        with pytest.raises(RuntimeError, match="sampler broke"):
            bad.result(timeout=120)
        assert good.result(timeout=120).choices[0].message.content == expected


@pytest.mark.embedded
def test_more_requests_than_workers_wait_their_turn_and_close_refuses(runtime: Any) -> None:
    from drpo_dspy.clients.embedded import N_BATCH

    decoder = workers_mod.ParallelDecoder(runtime.llm, workers=2, n_ctx=512, chunk=N_BATCH, lock=runtime.lock,
                                          prefix_cache=workers_mod.PrefixStateCache(N_BATCH, 0, enabled=False),
                                          stats=lambda: runtime.stats)
    try:
        tokens, stops, stopping = runtime.chat_prompt([{"role": "user", "content": "Count to three."}])
        greedy = workers_mod.sampler_options(None, {"temperature": 0.0})
        jobs = [workers_mod.Job(tokens, greedy, 1, stops, stopping, 5) for _ in range(5)]
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.extend(decoder.run(jobs)))
        worker.start()
        worker.join(timeout=120)
        assert len(results) == 5 and len({s.text for s in results}) == 1 and results[0].completion_tokens == 5
        assert decoder.peak_busy == 2
        too_long = workers_mod.Job(tokens * 60, greedy, 1, stops, stopping, 5)
        with pytest.raises(RuntimeError, match=r"llama\.cpp failed"):  # past the context's 512 tokens
            decoder.run([too_long])
        fresh = [workers_mod.Job(tokens, greedy, 1, stops, stopping, 5)]
        assert decoder.run(fresh)[0] == results[0]  # the decoder goes on after a failure
    finally:
        decoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.run([workers_mod.Job(tokens, {}, 1, [], None, 1)])
