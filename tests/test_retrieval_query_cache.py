"""The LRU cache of live-query vectors: repeated queries are embedded once, the cache is bounded, thread-safe,
shared by copies of a bank, replaced when the bank switches embedders, and never changes a result."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.retrievers.embedders import Embedder, HashingEmbedder
from drpo_dspy.retrievers.query_cache import QueryVectorCache


class CountingEmbedder(Embedder):
    """The hashing embedder, counting the texts it embeds."""

    def __init__(self, name: str = "counting") -> None:
        self.inner, self.name, self.dim = HashingEmbedder(64), name, 64
        self.texts: list[str] = []
        self.lock = threading.Lock()

    def encode(self, texts, *, batch_size=64, show_progress=False):
        with self.lock:
            self.texts.extend(texts)
        return self.inner.encode(texts)


STORED = [(f"how do I cook dish number {i}", f"answer {i}") for i in range(40)]


def test_a_repeated_query_is_embedded_once_with_the_same_result():
    embedder = CountingEmbedder()
    bank = AlignmentBank(STORED, embedder=embedder)
    first = bank.search("cooking dish 7 tonight", 3)
    embedded = len(embedder.texts)
    again = bank.search("cooking dish 7 tonight", 3)
    assert again == first and len(embedder.texts) == embedded
    assert bank.query_cache.hits == 1 and bank.query_cache.misses == 1


def test_a_batch_embeds_each_distinct_missing_query_once():
    embedder = CountingEmbedder()
    bank = AlignmentBank(STORED, embedder=embedder)
    bank.search("dish 1", 2)
    embedder.texts.clear()
    results = bank.search_batch(["dish 2", "dish 1", "dish 2", "dish 3"], 2)
    assert sorted(embedder.texts) == ["dish 2", "dish 3"]
    assert results[0] == results[2] == bank.search("dish 2", 2)


def test_the_cache_is_bounded_least_recently_used_first():
    embedder = CountingEmbedder()
    bank = AlignmentBank(STORED, embedder=embedder, query_cache_size=2)
    for query in ("q one", "q two", "q one", "q three"):  # "q two" is the least recently used when "q three" comes
        bank.search(query, 1)
    assert len(bank.query_cache) == 2
    embedder.texts.clear()
    bank.search("q one", 1)
    bank.search("q two", 1)
    assert embedder.texts == ["q two"]


def test_size_zero_turns_the_cache_off_and_bad_sizes_are_refused():
    embedder = CountingEmbedder()
    bank = AlignmentBank(STORED, embedder=embedder, query_cache_size=0)
    embedder.texts.clear()
    bank.search("same question", 1)
    bank.search("same question", 1)
    assert embedder.texts.count("same question") == 2 and len(bank.query_cache) == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="cache size"):
            AlignmentBank(STORED, embedder=embedder, query_cache_size=bad)


def test_copies_share_the_cache_and_reembedding_replaces_it():
    embedder = CountingEmbedder()
    bank = AlignmentBank(STORED, embedder=embedder)
    bank.search("shared question", 2)
    clone = bank.copy()
    embedder.texts.clear()
    clone.search("shared question", 2)
    assert embedder.texts == [] and clone.query_cache is bank.query_cache
    other = CountingEmbedder("other")
    clone.reembed(other)
    assert clone.query_cache is not bank.query_cache and len(clone.query_cache) == 0
    clone.search("shared question", 2)
    assert "shared question" in other.texts  # embedded again in the new space


def test_cached_vectors_cannot_be_changed_by_a_caller():
    cache = QueryVectorCache(4)
    cache.encode(["a"], lambda texts: np.ones((len(texts), 3), np.float32))
    out = cache.encode(["a"], lambda texts: pytest.fail("must come from the cache"))
    out[0, 0] = 7.0
    np.testing.assert_array_equal(cache.encode(["a"], lambda texts: pytest.fail("cached")), np.ones((1, 3)))
    with pytest.raises(ValueError, match="rows"):
        cache.encode(["b", "c"], lambda texts: np.ones((1, 3), np.float32))


def test_concurrent_searches_equal_sequential_and_stay_bounded():
    bank = AlignmentBank(STORED, embedder=CountingEmbedder(), query_cache_size=8)
    queries = [f"question about dish {i % 20}" for i in range(200)]
    sequential = [AlignmentBank(STORED, embedder="hashing-64").search(q, 3) for q in queries[:20]]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda q: bank.search(q, 3), queries))
    for i, result in enumerate(parallel):
        assert [(e.query, round(s, 5)) for e, s in result] == \
            [(e.query, round(s, 5)) for e, s in sequential[i % 20]]
    assert len(bank.query_cache) <= 8


def test_responder_batch_embeds_the_queries_in_one_call_and_answers_as_a_loop():
    import dspy

    from drpo_dspy import AlignedResponder
    from drpo_dspy.testing import last_user_text, scripted_lm

    embedder = CountingEmbedder()
    responder = AlignedResponder("Be kind.", STORED, k=2, embedder=embedder)
    responder.examples.bank.search("warm the index", 1)  # the bank's own queries embedded, the index built
    calls_before = len(embedder.texts)
    lm = scripted_lm(lambda messages, params: "reply to " + last_user_text(messages)[-40:] + "\n<END>")
    queries = [f"how to cook meal {i}" for i in range(12)] + ["how to cook meal 3"]
    examples = [dspy.Example(query=q).with_inputs("query") for q in queries]
    embedded_calls = []
    original = embedder.encode
    embedder.encode = lambda texts, **kw: embedded_calls.append(list(texts)) or original(texts, **kw)
    with dspy.context(lm=lm):
        batched = responder.batch(examples, num_threads=4)
        looped = [responder(query=q) for q in queries]
    assert embedded_calls == [list(dict.fromkeys(queries))]  # one call, each distinct query once
    assert [p.response for p in batched] == [p.response for p in looped]
    assert [p.examples for p in batched] == [p.examples for p in looped]
    assert len(embedder.texts) - calls_before == 12
