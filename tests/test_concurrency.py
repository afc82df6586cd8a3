"""One AlignedResponder shared by many threads gives exactly the answers it gives sequentially."""

from __future__ import annotations

import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from drpo_dspy import AlignedResponder
from drpo_dspy.testing import last_user_text, scripted_lm, system_text

THREADS, CALLS, DISTINCT = 16, 500, 250
BANK = [(f"How do I {task}?", f"Answer about {task}.") for task in (
    "bake bread", "fix a bike", "learn chess", "plant tomatoes", "write a poem", "save money", "run a marathon",
    "paint a wall", "study for exams", "train a puppy", "cook rice", "sleep better")]


def echo(messages, params):
    """The answer names the query and the in-context examples it was given, so any cross-talk shows."""
    query = last_user_text(messages).split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]
    shown = re.findall(r"# Query:\n(.*?)\n\n# Answer:", system_text(messages))
    return f"answer<{query}> shown<{' | '.join(shown)}> system<{system_text(messages)[:20]}>\n<END>"


def test_sixteen_threads_get_the_sequential_answers():
    responder = AlignedResponder("Be concise and kind.", BANK, k=2, embedder="hashing")
    lm = scripted_lm(echo)  # uncached: every call reaches the provider
    queries = [f"Question {i}: how do I {BANK[i % len(BANK)][0][9:-1]} quickly?" for i in range(DISTINCT)]
    expected = {q: (p.response, p.examples) for q in queries for p in [responder(query=q, lm=lm)]}
    assert len({answer for answer, _ in expected.values()}) == DISTINCT
    cached = lm.copy(cache=True)  # most threads go through DSPy's (shared, thread-safe) response cache
    errors: list[BaseException] = []
    mismatches: list[tuple[str, str]] = []
    barrier = threading.Barrier(THREADS)

    def worker(index: int) -> int:
        order = [queries[i % DISTINCT] for i in range(CALLS)]
        random.Random(index).shuffle(order)
        model = lm if index < 4 else cached
        barrier.wait()
        done = 0
        for query in order:
            try:
                pred = responder(query=query, lm=model)
            except BaseException as exc:
                errors.append(exc)
                continue
            if (pred.response, pred.examples) != expected[query]:
                mismatches.append((query, pred.response))
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        done = list(pool.map(worker, range(THREADS)))
    assert errors == [] and mismatches == []
    assert sum(done) == THREADS * CALLS


def test_search_and_respond_with_share_a_module_safely():
    """``respond_with`` (used by the search) under other instructions never leaks into concurrent ``forward``."""
    responder = AlignedResponder("Base prompt.", BANK, k=1, embedder="hashing")
    lm = scripted_lm(echo)
    queries = [f"q{i} about {BANK[i % len(BANK)][0]}" for i in range(40)]
    plain = {q: responder(query=q, lm=lm).response for q in queries}
    other = {q: responder.respond_with(f"Other prompt {q[:3]}", q, lm=lm) for q in queries}

    def mixed(i: int) -> bool:
        q = queries[i % len(queries)]
        if i % 2:
            return responder.respond_with(f"Other prompt {q[:3]}", q, lm=lm) == other[q]
        return responder(query=q, lm=lm).response == plain[q]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(mixed, range(400)))
    assert responder.instructions == "Base prompt."


@pytest.fixture(scope="module")
def embedded():
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients.embedded import embedded_lm, ensure_embedded_runtime

    try:
        ensure_embedded_runtime()
    except ImportError as exc:
        pytest.skip(str(exc))
    return embedded_lm(max_tokens=12, temperature=0.0, cache=False)


@pytest.mark.embedded
def test_embedded_model_under_concurrent_load_matches_sequential(embedded):
    responder = AlignedResponder("Answer in one short sentence.", examples=[], k=0)
    queries = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."]
    expected = [responder(query=q, lm=embedded).response for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(2):
            assert list(pool.map(lambda q: responder(query=q, lm=embedded).response, queries)) == expected
