"""VectorIndex: exactness against numpy, tie order, approximate recall, mutation, persistence, concurrency."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from drpo_dspy.retrievers.vector_index import VectorIndex, exact_topk, mmr_select


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def clustered(n: int, m: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bank and fresh queries drawn around n/50 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count: int) -> np.ndarray:
        return unit(centres[rng.integers(0, len(centres), count)] + rng.standard_normal((count, d)) / np.sqrt(d))

    return draw(n), draw(m)


def brute(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ base.T.astype(np.float64)
    ids = np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, ids, 1), ids


@pytest.mark.parametrize("k", [1, 3, 10, 500])
def test_exact_matches_numpy_brute_force(k):
    base, queries = random_unit(500, 32, 1), random_unit(20, 32, 2)
    index = VectorIndex.build(base, kind="exact")
    scores, ids = index.search(queries, k)
    ref_scores, ref_ids = brute(queries, base, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # most similar first
    assert index.kind == "exact" and len(index) == 500 and ids.dtype == np.int64 and scores.dtype == np.float32


def test_ties_are_broken_by_lower_id_even_at_the_k_boundary():
    v = random_unit(3, 8, 3)
    base = np.stack([v[0], v[1], v[1], v[2], v[1], v[1]])  # ids 1, 2, 4, 5 tie
    q = v[1:2]
    for few_or_many in (q, np.repeat(q, 12, axis=0)):  # the SIMD path (few queries) and the BLAS path
        _, ids = VectorIndex.build(base).search(few_or_many, 3)
        assert ids[0].tolist() == [1, 2, 4]
    assert exact_topk(q, base, 6)[1][0, :4].tolist() == [1, 2, 4, 5]


def test_k_bounds_and_input_validation():
    index = VectorIndex.build(random_unit(5, 4))
    with pytest.raises(ValueError, match=r"k=6.*\(5\)"):
        index.search(random_unit(1, 4), 6)
    with pytest.raises(ValueError, match=">= 0"):
        index.search(random_unit(1, 4), -1)
    with pytest.raises(TypeError):
        index.search(random_unit(1, 4), True)
    scores, ids = index.search(random_unit(2, 4), 0)
    assert scores.shape == ids.shape == (2, 0)
    assert index.search(random_unit(1, 4)[0], 2)[1].shape == (1, 2)  # a 1-D query is one query
    with pytest.raises(ValueError, match="shape"):
        index.search(random_unit(1, 5), 1)
    with pytest.raises(ValueError, match="normalised"):
        VectorIndex.build(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 4), np.nan), 1)
    with pytest.raises(ValueError, match="kind"):
        VectorIndex.build(random_unit(5, 4), kind="annoy")
    empty = VectorIndex.build(np.zeros((0, 4), np.float32))
    assert len(empty) == 0 and empty.search(random_unit(1, 4), 0)[1].shape == (1, 0)


def test_ivf_recall_on_20k_random_vectors():
    base, queries = clustered(20_000, 200, 64)
    index = VectorIndex.build(base, kind="ivf", seed=0)
    assert index.kind == "ivf" and index.params["calibrated_recall"] >= 0.99
    _, truth = brute(queries, base, 10)
    _, ids = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist(), strict=True)])
    assert recall >= 0.99


def test_auto_picks_by_size_and_measured_recall():
    base, _ = clustered(3_000, 1, 64)
    assert VectorIndex.build(base, kind="auto", exact_max=5_000).kind == "exact"
    graph = VectorIndex.build(base, kind="auto", exact_max=1_000)
    assert graph.kind == "hnsw" and graph.params["calibration_reached_target"] and "fallback" not in graph.params
    uniform = VectorIndex.build(random_unit(3_000, 64), kind="auto", exact_max=1_000)
    assert uniform.kind == "pq" and "comparisons per query" in uniform.params["fallback"]  # a graph visits ~all
    assert uniform.params["calibration_reached_target"] and uniform.params["refine"] * 11 <= 3_000 // 8
    unreachable = VectorIndex.build(base, kind="auto", exact_max=1_000, target_recall=1.01)
    assert unreachable.kind == "exact" and "PQ re-ranking reached" in unreachable.params["fallback"]


def test_pq_codes_with_exact_reranking_on_noise():
    base, queries = random_unit(5_000, 64, 11), random_unit(100, 64, 12)
    index = VectorIndex.build(base, kind="pq", seed=0)
    assert index.kind == "pq" and index.params["pq_m"] == 32 and index.params["calibrated_recall"] >= 0.99
    ref_scores, truth = brute(queries, base, 3)
    scores, ids = index.search(queries, 3)
    assert np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ids.tolist(), truth.tolist(), strict=True)]) >= 0.99
    found = ids == truth
    np.testing.assert_allclose(scores[found], ref_scores[found], atol=1e-5)  # re-ranked on the exact vectors
    assert VectorIndex.build(base, kind="pq", pq_refine=7).params["refine"] == 7
    assert index.memory_bytes() == 5_000 * 64 * 4 + 5_000 * 16
    with pytest.raises(ValueError, match="at least 16"):
        VectorIndex.build(base[:10], kind="pq")


def test_hnsw_recall_and_explicit_width():
    base, queries = clustered(3_000, 50, 32)
    index = VectorIndex.build(base, kind="hnsw")
    _, truth = brute(queries, base, 5)
    _, ids = index.search(queries, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), truth.tolist(), strict=True)]) >= 0.99
    assert VectorIndex.build(base, kind="hnsw", ef_search=77).params["ef_search"] == 77


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw", "pq"])
def test_add_and_remove_keep_ids_positional(kind):
    base, queries = clustered(1_500, 10, 16, seed=4)
    index = VectorIndex.build(base[:1_000], kind=kind)
    index.add(base[1_000:])
    assert len(index) == 1_500
    drop = [0, 5, 999, 1_200]
    index.remove_ids(drop)
    rest = np.delete(base, drop, axis=0)
    assert len(index) == len(rest)
    _, ids = index.search(queries, 5)
    _, ref = brute(queries, rest, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), ref.tolist(), strict=True)]) >= 0.98
    with pytest.raises(IndexError):
        index.remove_ids([len(rest)])


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw", "pq"])
def test_save_load_round_trip(tmp_path, kind):
    base, queries = clustered(2_000, 20, 16, seed=5)
    index = VectorIndex.build(base, kind=kind)
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["kind"] == kind and meta["count"] == 2_000 and meta["dim"] == 16
    loaded = VectorIndex.load(tmp_path / "ix")
    assert loaded.kind == kind and loaded.params == index.params and len(loaded) == 2_000
    for a, b in zip(index.search(queries, 4), loaded.search(queries, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.add(random_unit(3, 16))  # still mutable after loading
    assert len(loaded) == 2_003


def test_load_errors_name_the_file(tmp_path):
    index = VectorIndex.build(random_unit(10, 4))
    folder = index.save(tmp_path / "ix")
    meta = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**meta, "count": 11}))
    with pytest.raises(ValueError, match=r"index\.faiss"):
        VectorIndex.load(folder)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"index\.json"):
        VectorIndex.load(folder)
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "nowhere")


@pytest.mark.parametrize("kind", ["exact", "ivf", "pq"])
def test_concurrent_searches_match_sequential(kind):
    base, queries = clustered(4_000, 64, 32, seed=6)
    index = VectorIndex.build(base, kind=kind)
    sequential = [index.search(queries[i : i + 1], 5)[1] for i in range(len(queries))]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda i: index.search(queries[i : i + 1], 5)[1], range(len(queries))))
    for a, b in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mmr_select_prefers_diverse_candidates():
    a = np.array([1.0, 0.0, 0.0])
    near_a = unit(np.array([[1.0, 0.05, 0.0]]))[0]
    b = unit(np.array([[0.2, 0.0, 1.0]]))[0]
    vectors = np.stack([a, near_a, b]).astype(np.float32)
    relevance = np.array([0.9, 0.89, 0.5], np.float32)
    assert mmr_select(vectors, relevance, 2, 1.0) == [0, 1]
    assert mmr_select(vectors, relevance, 2, 0.5) == [0, 2]
