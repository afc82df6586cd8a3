"""The HNSW index option: removals as tombstones, persistence of what was removed, memory accounting, the bank on a
graph index, banks built from precomputed vectors, and an exact fallback that is not rebuilt on every search."""

from __future__ import annotations

import numpy as np
import pytest

from drpo_dspy.retrievers import bank as bank_mod
from drpo_dspy.retrievers import index_builders
from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.retrievers.embedders import Embedder
from drpo_dspy.retrievers.vector_index import VectorIndex


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, m: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), d))

    def draw(count: int) -> np.ndarray:
        return unit(centres[rng.integers(0, len(centres), count)] / np.sqrt(d) * 4 + rng.standard_normal((count, d))
                    / np.sqrt(d))

    return draw(n), draw(m)


def brute_ids(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ base.T.astype(np.float64)
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1]
                          for a, b in zip(found.tolist(), truth.tolist(), strict=True)]))


class TableEmbedder(Embedder):
    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table, self.name, self.dim, self.calls = table, "table", len(next(iter(table.values()))), 0

    def encode(self, texts, *, batch_size=64, show_progress=False):
        self.calls += len(texts)
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def test_removals_are_hidden_without_rebuilding_and_ids_stay_positional():
    base, queries = clustered(2_000, 30, 16, seed=1)
    index = VectorIndex.build(base, kind="hnsw")
    graph = index._index
    drop = [0, 7, 500, 1_999]
    index.remove_ids(drop)
    rest = np.delete(base, drop, axis=0)
    assert index._index is graph and len(index) == len(rest)  # a tombstone, not a new graph
    np.testing.assert_array_equal(index.vectors(), rest)
    _, ids = index.search(queries, 5)
    assert ids.max() < len(rest) and recall(ids, brute_ids(queries, rest, 5)) >= 0.98
    index.add(base[:3])  # new vectors get the next positions
    assert len(index) == len(rest) + 3
    _, ids = index.search(base[1:2], 1)
    assert ids[0, 0] in (0, len(rest) + 1)  # base[1] is stored at position 0 and again at the end


def test_removing_a_quarter_rebuilds_the_graph():
    base, queries = clustered(1_000, 20, 16, seed=2)
    index = VectorIndex.build(base, kind="hnsw")
    index.remove_ids(range(0, 1_000, 3))
    rest = np.delete(base, range(0, 1_000, 3), axis=0)
    assert index._positions is None and len(index) == len(rest) == index._index.ntotal
    _, ids = index.search(queries, 4)
    assert recall(ids, brute_ids(queries, rest, 4)) >= 0.98


def test_tombstones_survive_save_and_load(tmp_path):
    base, queries = clustered(1_500, 20, 16, seed=3)
    index = VectorIndex.build(base, kind="hnsw")
    index.remove_ids([3, 4, 900])
    loaded = VectorIndex.load(index.save(tmp_path / "ix"))
    assert len(loaded) == 1_497 and loaded.params == index.params
    for a, b in zip(index.search(queries, 4), loaded.search(queries, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    index.add(base[:600])  # enough removals later... and a save without tombstones drops the positions file
    index.remove_ids(range(700))
    index.save(tmp_path / "ix")
    assert not (tmp_path / "ix" / "index.positions.npy").exists()
    assert len(VectorIndex.load(tmp_path / "ix")) == len(index)


def test_memory_is_reported_per_kind():
    base, _ = clustered(1_200, 1, 16, seed=4)
    raw = base.nbytes
    assert VectorIndex.build(base, kind="exact").memory_bytes() == raw
    assert VectorIndex.build(base, kind="hnsw").memory_bytes() > raw  # vectors plus graph links
    assert VectorIndex.build(base, kind="ivf").memory_bytes() > raw


def test_bank_on_an_hnsw_index_saves_and_loads_it(tmp_path):
    base, live = clustered(1_500, 10, 16, seed=5)
    texts = [f"stored {i}" for i in range(len(base))]
    table = dict(zip(texts + [f"live {i}" for i in range(len(live))], np.vstack([base, live]), strict=True))
    bank = AlignmentBank([(t, "a") for t in texts], embedder=TableEmbedder(table), index_kind="hnsw")
    before = [[e.query for e, _ in bank.search(f"live {i}", 3)] for i in range(len(live))]
    assert bank.index is not None and bank.index.kind == "hnsw"
    bank.remove("stored 0")
    path = bank.save(tmp_path / "bank.json", save_index=True)
    fresh = TableEmbedder(table)
    loaded = AlignmentBank.load(path, embedder=fresh)
    assert loaded.index is not None and loaded.index.kind == "hnsw" and len(loaded.index) == 1_499
    after = [[e.query for e, _ in loaded.search(f"live {i}", 3)] for i in range(len(live))]
    assert fresh.calls == len(live)  # nothing re-embedded
    assert np.mean([len(set(a) & set(b)) / 3 for a, b in zip(before, after, strict=True)]) >= 0.9
    assert all("stored 0" not in row for row in after)


def test_bank_from_precomputed_vectors_embeds_only_live_queries():
    base, live = clustered(400, 5, 16, seed=6)
    table = {f"live {i}": v for i, v in enumerate(live)}
    embedder = TableEmbedder(table)
    bank = AlignmentBank.from_vectors([(f"stored {i}", "a") for i in range(len(base))], base, embedder=embedder)
    truth = brute_ids(live, base, 3)
    for i in range(len(live)):
        assert [e.query for e, _ in bank.search(f"live {i}", 3)] == [f"stored {j}" for j in truth[i]]
    assert embedder.calls == len(live)
    with pytest.raises(ValueError, match="vectors for"):
        AlignmentBank.from_vectors([("a", "b")], base[:2], embedder=embedder)
    with pytest.raises(ValueError, match="normalised"):
        AlignmentBank.from_vectors([("a", "b")], np.ones((1, 16)), embedder=embedder)


def test_an_exact_fallback_is_not_rebuilt_on_every_search(monkeypatch):
    builds = []

    class NeverReaches(VectorIndex):
        @classmethod
        def build(cls, vectors, **options):
            builds.append(len(vectors))
            return VectorIndex.build(vectors, **{**options, "exact_max": 10, "target_recall": 1.01})

    monkeypatch.setattr(bank_mod, "VectorIndex", NeverReaches)
    monkeypatch.setattr(bank_mod, "EXACT_MAX", 10)
    base, live = clustered(60, 3, 8, seed=7)
    texts = [f"s{i}" for i in range(60)]
    embedder = TableEmbedder(dict(zip([*texts, "l0", "l1", "l2"], np.vstack([base, live]), strict=True)))
    bank = AlignmentBank([(t, "a") for t in texts], embedder=embedder)
    for query in ("l0", "l1", "l2", "l0"):
        bank.search(query, 2)
    assert builds == [60] and bank.index is not None and "fallback" in bank.index.params


def test_calibration_truth_skips_the_held_out_rows_without_copying(monkeypatch):
    monkeypatch.setattr(index_builders, "_CHUNK_ROWS", 70)  # several chunks
    base, queries = clustered(300, 12, 8, seed=8)
    held = np.zeros(300, dtype=bool)
    held[np.random.default_rng(0).choice(300, 40, replace=False)] = True
    found = index_builders._topk_among_kept(queries, base, held, 5)
    np.testing.assert_array_equal(found, brute_ids(queries, base[~held], 5))
