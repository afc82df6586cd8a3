"""The embedded model's speed-ups (prefix-state cache, fast grammar check): bookkeeping without the model, and
identical completions on the model with them on and off."""

from __future__ import annotations

from typing import Any

import pytest
from judge_formats import JUDGE_FORMAT

from drpo_dspy.engine import prefix_cache as cache_mod
from drpo_dspy.engine import sampling as sampling_mod
from drpo_dspy.engine.prefix_cache import (
    PrefixStateCache,
    TokenStats,
    align_down,
    common_prefix_length,
    prepare_prefix,
    reusable_length,
)

# ---------------------------------------------------------------- bookkeeping (no model)


def test_prefix_arithmetic() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0 and common_prefix_length([1, 2], [1, 2]) == 2
    assert align_down(130, 64) == 128 and align_down(63, 64) == 0
    assert reusable_length(200, 300, 64) == 192
    assert reusable_length(128, 128, 64) == 64  # the last token is always evaluated
    assert reusable_length(-3, 10, 4) == 0


def test_longest_shared_prefix_is_found_and_leaves_a_token() -> None:
    cache = PrefixStateCache(chunk=4, max_bytes=1000)
    cache.put([1, 2, 3, 4, 5, 6, 7, 8], b"b")
    cache.put([9, 9, 9, 9], b"c")
    assert cache.longest([1, 2, 3, 4, 5, 6, 7, 8, 0]) == (8, b"b")
    assert cache.longest([1, 2, 3, 4, 5, 6, 7, 8]) == (4, b"b")  # 8 would leave nothing to evaluate
    assert cache.longest([1, 2, 3, 4, 5, 0, 7, 8, 0]) == (4, b"b")  # a longer state, cut to the shared chunks
    assert cache.longest([1, 2, 3, 0, 5]) == (0, None) and cache.longest([2, 2, 3, 4, 5]) == (0, None)
    cache.put([1, 2, 3], b"unaligned")  # ignored: not a whole number of chunks
    assert len(cache) == 2 and cache.nbytes == 2


def test_a_longer_state_replaces_the_states_it_extends() -> None:
    cache = PrefixStateCache(chunk=4, max_bytes=1000)
    cache.put([1, 2, 3, 4], b"a")
    cache.put([1, 2, 3, 4, 5, 6, 7, 8], b"bb")
    assert len(cache) == 1 and cache.nbytes == 2
    cache.put([1, 2, 3, 4, 0, 0, 0, 0], b"c")  # a sibling: both kept
    assert len(cache) == 2


def test_wants_only_what_no_state_covers() -> None:
    cache = PrefixStateCache(chunk=4, max_bytes=1000)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert cache.wants(8, tokens) and not cache.wants(6, tokens) and not cache.wants(0, tokens)
    cache.put(tokens[:8], b"x")
    assert not cache.wants(8, tokens) and not cache.wants(4, tokens)
    assert cache.wants(8, [1, 2, 3, 4, 0, 0, 0, 0, 0])


def test_least_recently_used_is_evicted_beyond_the_budget() -> None:
    cache = PrefixStateCache(chunk=1, max_bytes=10)
    cache.put([1], b"xxxx")
    cache.put([2], b"yyyy")
    assert cache.longest([1, 0]) == (1, b"xxxx")  # touches [1]: [2] is now the least recently used
    cache.put([3], b"zzzz")
    assert cache.longest([2, 0]) == (0, None) and cache.longest([1, 0])[0] == 1 and cache.nbytes == 8
    cache.put([4], b"w" * 11)  # larger than the whole budget: not stored, nothing evicted
    assert len(cache) == 2
    cache.put([1], b"xx")  # replacing an entry updates the byte count
    assert cache.nbytes == 6
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_disabled_cache_stores_and_finds_nothing() -> None:
    cache = PrefixStateCache(chunk=1, max_bytes=100, enabled=False)
    cache.put([1], b"x")
    assert len(cache) == 0 and cache.longest([1, 2]) == (0, None) and not cache.wants(1, [1, 2])


def test_token_stats() -> None:
    stats = TokenStats()
    stats.record(100, 64)
    stats.record(50, 0)
    data = stats.as_dict()
    assert (data["calls"], data["prompt_tokens"], data["reused_tokens"], data["evaluated_tokens"]) == (2, 150, 64, 86)
    assert data["prompt_tokens_per_call"] == 75.0 and data["evaluated_tokens_per_call"] == 43.0
    assert TokenStats().as_dict()["evaluated_tokens_per_call"] == 0.0


class _FakeLlama:
    """Records what prepare_prefix asks of llama.cpp; its 'state' is the list of evaluated tokens."""

    def __init__(self) -> None:
        self.evaluated: list[int] = []
        self.n_tokens = 0
        self.log: list[tuple[str, Any]] = []

    def reset(self) -> None:
        self.n_tokens = 0
        self.log.append(("reset", None))

    def eval(self, tokens: list[int]) -> None:
        self.evaluated = self.evaluated[: self.n_tokens] + list(tokens)
        self.n_tokens = len(self.evaluated)
        self.log.append(("eval", (self.n_tokens - len(tokens), len(tokens))))

    def complete(self, tokens: list[int]) -> None:
        """What create_completion evaluates: the rest of the prompt."""
        self.eval(tokens[self.n_tokens :])


@pytest.fixture()
def fake_states(monkeypatch: pytest.MonkeyPatch) -> None:
    def snapshot(llm: _FakeLlama) -> bytes:
        return bytes(llm.evaluated)

    def restore(llm: _FakeLlama, state: bytes, prefix: list[int]) -> None:
        assert list(state[: len(prefix)]) == list(prefix)
        llm.evaluated, llm.n_tokens = list(state), len(prefix)
        llm.log.append(("restore", len(prefix)))

    monkeypatch.setattr(cache_mod, "snapshot_state", snapshot)
    monkeypatch.setattr(cache_mod, "restore_state", restore)


def test_prepare_prefix_snapshots_prompts_and_restores_shared_prefixes(fake_states: None) -> None:
    cache, stats, llm = PrefixStateCache(chunk=4, max_bytes=1000), TokenStats(), _FakeLlama()
    judge = [*[1] * 10, 2, 3]  # 12 tokens: whole chunks up to 8 (the last token is always evaluated)
    prepare_prefix(llm, cache, stats, [], judge)
    assert llm.log == [("reset", None), ("eval", (0, 8))] and llm.n_tokens == 8 and len(cache) == 1
    llm.complete(judge)
    optimizer = [*[7] * 9, 5]
    prepare_prefix(llm, cache, stats, judge, optimizer)  # nothing shared with the context nor the snapshot
    llm.complete(optimizer)
    llm.log.clear()
    second_judge = [*[1] * 10, 4, 4, 4]
    prepare_prefix(llm, cache, stats, optimizer, second_judge)
    assert llm.log == [("restore", 8), ("eval", (8, 4))]  # the shared 8 tokens come back; one new whole chunk
    assert len(cache) == 2  # the new snapshot extends (and replaces) the first judge's
    llm.complete(second_judge)
    llm.log.clear()
    third_judge = [*[1] * 6, 9, 9, 9, 9, 9]
    prepare_prefix(llm, cache, stats, second_judge, third_judge)
    assert llm.log == [("eval", (4, 4))]  # context and snapshot both share 4 whole tokens: the context is kept
    assert (stats.calls, stats.snapshot_saves, stats.snapshot_restores, stats.restored_tokens) == (4, 4, 1, 8)
    assert (stats.prompt_tokens, stats.reused_tokens) == (12 + 10 + 13 + 11, 12)


def test_prepare_prefix_prefers_the_live_context_and_keeps_chunks_aligned(fake_states: None) -> None:
    cache, stats, llm = PrefixStateCache(chunk=4, max_bytes=1000), TokenStats(), _FakeLlama()
    first = list(range(20))
    prepare_prefix(llm, cache, stats, [], first)  # snapshot of the 16 whole-chunk tokens
    llm.complete(first)
    llm.log.clear()
    second = [*range(14), 99]  # shares 14 tokens with the context: 12 reusable
    prepare_prefix(llm, cache, stats, first, second)
    assert llm.log == [] and llm.n_tokens == 12 and stats.reused_tokens == 12 and stats.snapshot_restores == 0
    cache.enabled = False
    prepare_prefix(llm, cache, stats, second, [5] * 9)
    assert llm.log == [("reset", None)] and len(cache) == 1  # off: no snapshot, no restore


def test_fast_grammar_is_used_only_for_plain_greedy_grammar_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    class _Recorder:
        def __init__(self, llm: Any, grammar: Any, **penalties: float) -> None:
            built.append({"grammar": grammar, **penalties})

    class _Llm:
        def _init_sampler(self, **kwargs: Any) -> str:
            return "chain"

    monkeypatch.setattr(sampling_mod, "GreedyGrammarSampler", _Recorder)
    llm, switch = _Llm(), {"on": True}
    sampling_mod.install_fast_grammar(llm, lambda: switch["on"])
    assert isinstance(llm._init_sampler(temp=0.0, grammar="g", repeat_penalty=1.1), _Recorder)
    assert built == [{"grammar": "g", "repeat_penalty": 1.1, "frequency_penalty": 0.0, "presence_penalty": 0.0}]
    for kwargs in ({"temp": 0.2, "grammar": "g"}, {"temp": 0.0, "grammar": None}, {"temp": 0.0, "grammar": "g",
                   "mirostat_mode": 2}, {"temp": 0.0, "grammar": "g", "logits_processor": [abs]}):
        assert llm._init_sampler(**kwargs) == "chain", kwargs
    switch["on"] = False
    assert llm._init_sampler(temp=0.0, grammar="g") == "chain"


# ---------------------------------------------------------------- with the real embedded model

@pytest.mark.embedded
def test_speedups_on_and_off_give_identical_completions_for_interleaved_roles(embedded_runtime: Any) -> None:
    from drpo_dspy.clients import embedded

    runtime = embedded_runtime
    judge = "You are a strict judge. Score the answer from 1 to 5 for each aspect, with one short reason. " * 5
    optimizer = "You improve system prompts for an assistant. Return one better, concrete system prompt. " * 5
    calls = [(judge, "Query: boil an egg?\nAnswer: in water.", JUDGE_FORMAT),
             (optimizer, "Prompt: You are helpful.", None),
             (judge, "Query: boil an egg?\nAnswer: microwave it.", JUDGE_FORMAT)]

    def run(enabled: bool) -> tuple[list[str], TokenStats]:
        runtime.configure(prefix_cache=enabled, fast_grammar=enabled, parallel=False)  # one request at a time
        runtime.reset()
        runtime.reset_stats()
        outputs = []
        for system, user, response_format in calls:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            params = {"max_tokens": 12, "temperature": 0.0, "response_format": response_format}
            outputs.append(embedded.complete_embedded(messages, params).choices[0].message.content)
        return outputs, runtime.reset_stats()

    off, off_stats = run(False)
    on, on_stats = run(True)
    assert on == off and on[0].startswith("{")
    assert off_stats.snapshot_restores == 0 and off_stats.reused_tokens == 0
    assert on_stats.snapshot_saves >= 2 and on_stats.snapshot_restores == 1
    assert on_stats.evaluated_tokens < off_stats.evaluated_tokens and on_stats.prompt_tokens == off_stats.prompt_tokens
