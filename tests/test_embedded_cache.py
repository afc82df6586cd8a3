"""The embedded model's prefix-state cache: bookkeeping without the model, and identical completions on the model."""

from __future__ import annotations

from typing import Any

import pytest

from drpo_dspy.clients import embedded_cache as cache_mod
from drpo_dspy.clients.embedded_cache import (
    PrefixStateCache,
    TokenStats,
    align_down,
    common_prefix_length,
    max_bytes_from_env,
    prefix_cache_enabled_by_env,
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


def test_env_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, enabled in (("0", False), ("off", False), ("False", False), ("1", True), ("", True)):
        monkeypatch.setenv(cache_mod.PREFIX_CACHE_ENV_VAR, value)
        assert prefix_cache_enabled_by_env() is enabled, value
    monkeypatch.delenv(cache_mod.PREFIX_CACHE_ENV_VAR)
    assert prefix_cache_enabled_by_env()
    monkeypatch.setenv(cache_mod.PREFIX_CACHE_MB_ENV_VAR, "2")
    assert max_bytes_from_env() == 2 * 1024 * 1024
    monkeypatch.setenv(cache_mod.PREFIX_CACHE_MB_ENV_VAR, "lots")
    assert max_bytes_from_env() == cache_mod.DEFAULT_MAX_MB * 1024 * 1024


def test_longest_stored_prefix_is_found_and_leaves_a_token() -> None:
    cache = PrefixStateCache(chunk=4, max_bytes=1000)
    cache.put([1, 2, 3, 4], b"a")
    cache.put([1, 2, 3, 4, 5, 6, 7, 8], b"b")
    cache.put([9, 9, 9, 9], b"c")
    assert cache.longest([1, 2, 3, 4, 5, 6, 7, 8, 0]) == (8, b"b")
    assert cache.longest([1, 2, 3, 4, 5, 6, 7, 8]) == (4, b"a")  # 8 would leave nothing to evaluate
    assert cache.longest([1, 2, 3, 4, 5, 0, 7, 8, 0]) == (4, b"a")
    assert cache.longest([2, 2, 3, 4, 5]) == (0, None)
    cache.put([1, 2, 3], b"unaligned")  # ignored: not a whole number of chunks
    assert len(cache) == 3 and cache.nbytes == 3


def test_wants_only_new_aligned_prefixes() -> None:
    cache = PrefixStateCache(chunk=4, max_bytes=1000)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert cache.wants(8, tokens) and not cache.wants(6, tokens) and not cache.wants(0, tokens)
    cache.put(tokens[:8], b"x")
    assert not cache.wants(8, tokens) and cache.wants(4, tokens)


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


@pytest.fixture()
def fake_states(monkeypatch: pytest.MonkeyPatch) -> None:
    def snapshot(llm: _FakeLlama) -> bytes:
        return bytes(llm.evaluated[: llm.n_tokens])

    def restore(llm: _FakeLlama, state: bytes, prefix: list[int]) -> None:
        assert list(state) == list(prefix)
        llm.evaluated, llm.n_tokens = list(prefix), len(prefix)
        llm.log.append(("restore", len(prefix)))

    monkeypatch.setattr(cache_mod, "snapshot_state", snapshot)
    monkeypatch.setattr(cache_mod, "restore_state", restore)


def test_prepare_prefix_snapshots_stable_prefixes_and_restores_them(fake_states: None) -> None:
    cache, stats, llm = PrefixStateCache(chunk=4, max_bytes=1000), TokenStats(), _FakeLlama()
    judge = [*[1] * 10, 2, 3]  # a 10-token system message, then the user turn
    prepare_prefix(llm, cache, stats, [], judge, [10])
    assert llm.log == [("reset", None), ("eval", (0, 8))] and llm.n_tokens == 8 and len(cache) == 1
    llm.eval(judge[8:])  # what create_completion evaluates
    optimizer = [*[7] * 9, 5]
    prepare_prefix(llm, cache, stats, judge, optimizer, [9])  # nothing shared with the context
    llm.eval(optimizer[8:])
    llm.log.clear()
    second_judge = [*[1] * 10, 4, 4, 4]
    prepare_prefix(llm, cache, stats, optimizer, second_judge, [10])
    assert llm.log == [("restore", 8)] and llm.n_tokens == 8  # the judge's system message comes back, no eval
    assert (stats.calls, stats.snapshot_saves, stats.snapshot_restores, stats.restored_tokens) == (3, 2, 1, 8)
    assert (stats.prompt_tokens, stats.reused_tokens) == (12 + 10 + 13, 8)


def test_prepare_prefix_prefers_the_live_context_and_keeps_chunks_aligned(fake_states: None) -> None:
    cache, stats, llm = PrefixStateCache(chunk=4, max_bytes=1000), TokenStats(), _FakeLlama()
    first = list(range(20))
    prepare_prefix(llm, cache, stats, [], first, [6])  # snapshot at 4 (6 rounded down)
    llm.eval(first[4:])
    llm.log.clear()
    second = [*range(14), 99]  # shares 14 tokens with the context: 12 reusable, more than the snapshot's 4
    prepare_prefix(llm, cache, stats, first, second, [6])
    assert llm.log == [] and llm.n_tokens == 12 and stats.reused_tokens == 12
    cache.enabled = False
    prepare_prefix(llm, cache, stats, second, [5] * 9, [8])
    assert llm.log == [("reset", None)] and len(cache) == 1  # off: no snapshot, no restore


# ---------------------------------------------------------------- with the real embedded model


@pytest.mark.embedded
def test_prefix_cache_on_and_off_give_identical_completions_for_interleaved_roles() -> None:
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients import embedded

    try:
        runtime = embedded.get_runtime()
    except ImportError as exc:
        pytest.skip(str(exc))
    judge = "You are a strict judge. Score the answer from 1 to 5 for each aspect, with one short reason. " * 5
    optimizer = "You improve system prompts for an assistant. Return one better, concrete system prompt. " * 5
    calls = [(judge, "Query: boil an egg?\nAnswer: in water."), (optimizer, "Prompt: You are helpful."),
             (judge, "Query: boil an egg?\nAnswer: microwave it.")]

    def run(enabled: bool) -> tuple[list[str], TokenStats]:
        runtime.configure(prefix_cache=enabled)
        runtime.reset()
        runtime.reset_stats()
        outputs = []
        for system, user in calls:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            response = embedded.complete_embedded(messages, {"max_tokens": 6, "temperature": 0.0})
            outputs.append(response.choices[0].message.content)
        return outputs, runtime.reset_stats()

    try:
        off, off_stats = run(False)
        on, on_stats = run(True)
    finally:
        runtime.configure(prefix_cache=cache_mod.prefix_cache_enabled_by_env())
    assert on == off
    assert off_stats.snapshot_restores == 0 and off_stats.reused_tokens == 0
    assert on_stats.snapshot_saves == 2 and on_stats.snapshot_restores == 1
    assert on_stats.evaluated_tokens < off_stats.evaluated_tokens and on_stats.prompt_tokens == off_stats.prompt_tokens
