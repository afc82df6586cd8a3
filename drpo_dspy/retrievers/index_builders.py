"""Building FAISS approximate indexes (HNSW, PQ fast-scan with exact re-ranking, IVF-Flat) whose search width is
calibrated on the data itself.

Calibration draws up to 512 leave-one-out queries from the indexed vectors and measures recall@10 against exact
search; it keeps the smallest width (``efSearch`` for HNSW, candidates re-ranked per result for PQ, ``nprobe`` for
IVF) whose recall, less two standard errors, reaches the target. The builders return the faiss index, its
parameters and whether the target was reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from drpo_dspy.retrievers.exact_search import exact_topk

__all__ = ["CALIBRATION_K", "HNSW_EF_WIDTHS", "PQ_REFINE_FACTORS", "build_hnsw", "build_ivf", "build_pq",
           "faiss_module", "new_hnsw"]

CALIBRATION_K = 10
HNSW_EF_WIDTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
PQ_REFINE_FACTORS = (2, 4, 8, 16, 32, 48, 64, 100, 150, 200, 300)
_CALIB_QUERIES = 512
_PQ_TRAIN_ROWS = 65_536
_CHUNK_ROWS = 65_536


def faiss_module() -> Any:
    """The ``faiss`` module, or an ImportError naming the package to install."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("approximate vector search needs faiss: `pip install faiss-cpu`") from exc
    return faiss


def _default_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39, 65_536))


def _loo_truth(vectors: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k neighbours of ``vectors[sample]`` among ``vectors``, excluding each query itself."""
    kk = min(k + 1, len(vectors))
    _, ids = exact_topk(vectors[sample], vectors, kk)
    return np.stack([row[row != s][:k] if (row == s).any() else row[:k] for row, s in zip(ids, sample, strict=True)])


def _calibrate(vectors: np.ndarray, search: Callable[[np.ndarray, int, int], np.ndarray], widths: list[int],
               target: float, seed: int) -> tuple[int, float, bool]:
    """Smallest width in ``widths`` whose leave-one-out recall@k reaches ``target``: (width, recall, reached).

    Misses cluster on a few queries (a topic split across cells), so the test is on a lower confidence bound:
    mean per-query recall minus two standard errors."""
    n = len(vectors)
    k = min(CALIBRATION_K, n - 1)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(_CALIB_QUERIES, n), replace=False))
    truth = _loo_truth(vectors, sample, k)
    recall = 0.0
    for width in widths:
        found = search(vectors[sample], k + 1, width)
        per_query = np.array([len(set(t.tolist()) & set(f[(f != s) & (f >= 0)][:k].tolist())) / k
                              for t, f, s in zip(truth, found, sample, strict=True)])
        recall = float(per_query.mean())
        if recall - 2 * float(per_query.std()) / math.sqrt(len(per_query)) >= target:
            return width, recall, True
    return widths[-1], recall, False


def new_hnsw(dim: int, m: int, ef_construction: int, ef_search: int) -> Any:
    """An empty inner-product ``IndexHNSWFlat``."""
    faiss = faiss_module()
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    return index


def _topk_among_kept(queries: np.ndarray, base: np.ndarray, held: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids of ``queries`` among the rows of ``base`` not ``held``, numbered in the order of those rows;
    chunk by chunk, so that no copy of ``base`` is made."""
    rank = np.cumsum(~held) - 1
    scores, ids = [], []
    for start in range(0, len(base), _CHUNK_ROWS):
        keep = np.flatnonzero(~held[start : start + _CHUNK_ROWS]) + start
        if len(keep):
            s, i = exact_topk(queries, base[keep], min(k, len(keep)))
            scores.append(s)
            ids.append(rank[keep][i])
    all_scores, all_ids = np.hstack(scores), np.hstack(ids)
    order = np.lexsort((all_ids, -all_scores), axis=-1)[:, :k]
    return np.take_along_axis(all_ids, order, 1)


def _held_out_recall(index: Any, base: np.ndarray, held: np.ndarray, widths: list[int],
                     target: float) -> tuple[int, float, bool]:
    """Smallest ``efSearch`` in ``widths`` whose recall@k on the ``held`` rows (not in the graph, which holds the
    others) reaches ``target``, on the lower bound of mean per-query recall minus two standard errors."""
    faiss = faiss_module()
    k = min(CALIBRATION_K, int((~held).sum()))
    queries = base[held]
    truth = _topk_among_kept(queries, base, held, k)
    recall = 0.0
    for width in widths:
        found = index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=width))[1]
        per_query = np.array([len(set(t.tolist()) & set(f.tolist())) / k for t, f in zip(truth, found, strict=True)])
        recall = float(per_query.mean())
        if recall - 2 * float(per_query.std()) / math.sqrt(len(per_query)) >= target:
            return width, recall, True
    return widths[-1], recall, False


def build_hnsw(base: np.ndarray, *, seed: int, target_recall: float, m: int, ef_construction: int,
               ef_search: int | None) -> tuple[Any, dict[str, Any], bool, np.ndarray | None]:
    """An HNSW graph over ``base``; ``ef_search=None`` calibrates it over ``HNSW_EF_WIDTHS``.

    A query that is itself a node finds its neighbours in its own links, so leave-one-out recall flatters a graph:
    calibration holds up to 512 random vectors out, searches for them, then adds them. The fourth value maps each
    position to its faiss id when that order differs (None otherwise)."""
    index = new_hnsw(base.shape[1], m, ef_construction, ef_search or HNSW_EF_WIDTHS[0])
    params: dict[str, Any] = {"M": m, "ef_construction": ef_construction}
    n = len(base)
    if ef_search is not None or n < 4:
        index.add(base)
        index.hnsw.efSearch = params["ef_search"] = ef_search or HNSW_EF_WIDTHS[0]
        return index, params, True, None
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(n, size=min(_CALIB_QUERIES, n // 4), replace=False)] = True
    rest = np.flatnonzero(~held)
    for start in range(0, len(rest), _CHUNK_ROWS):  # chunks: no full copy of the vectors besides the graph's own
        index.add(base[rest[start : start + _CHUNK_ROWS]])
    ef_search, recall, reached = _held_out_recall(index, base, held, list(HNSW_EF_WIDTHS), target_recall)
    index.add(base[held])
    positions = np.empty(n, dtype=np.int64)
    positions[rest] = np.arange(len(rest))
    positions[held] = np.arange(len(rest), n)
    index.hnsw.efSearch = ef_search
    params.update(calibrated_recall=recall, calibration_reached_target=reached, ef_search=ef_search)
    return index, params, reached, positions


def build_ivf(base: np.ndarray, *, seed: int, target_recall: float, nlist: int | None, nprobe: int | None,
              max_fraction: float = 1.0) -> tuple[Any, dict[str, Any], bool]:
    """An IVF-Flat index over ``base`` (spherical k-means); ``nprobe=None`` calibrates it, scanning at most
    ``max_fraction`` of the lists."""
    faiss = faiss_module()
    n, dim = base.shape
    nlist = nlist or _default_nlist(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.spherical = True
    rng = np.random.default_rng(seed)
    train = base if n <= 50 * nlist else base[np.sort(rng.choice(n, 50 * nlist, replace=False))]
    index.train(train)
    index.add(base)
    index.make_direct_map()
    params: dict[str, Any] = {"nlist": nlist}
    reached = True
    if nprobe is None:
        def search(q: np.ndarray, kk: int, width: int) -> np.ndarray:
            return index.search(q, kk, params=faiss.SearchParametersIVF(nprobe=width))[1]

        widths = sorted({min(nlist, 2**i) for i in range(int(math.log2(nlist)) + 2)})
        widths = [w for w in widths if w <= max(1, int(nlist * max_fraction))]
        nprobe, recall, reached = _calibrate(base, search, widths, target_recall, seed)
        params.update(calibrated_recall=recall, calibration_reached_target=reached)
    index.nprobe = nprobe
    params["nprobe"] = nprobe
    return index, params, reached


def pq_subquantizers(dim: int) -> int:
    """Sub-vectors of a PQ code: two dimensions each (one when ``dim`` is odd), 4 bits per sub-vector."""
    return dim // 2 if dim % 2 == 0 else dim


def build_pq(base: np.ndarray, *, seed: int, target_recall: float, refine: int | None,
             max_candidates: int | None = None) -> tuple[Any, dict[str, Any], bool]:
    """A PQ fast-scan index over ``base`` whose candidates are re-ranked on the exact vectors
    (``IndexRefineFlat``): every query scans all codes (4 bits per two dimensions, SIMD lookup tables) and
    re-ranks ``refine`` x k of them exactly. ``refine=None`` calibrates it over ``PQ_REFINE_FACTORS``, re-ranking
    at most ``max_candidates`` vectors per calibration query."""
    faiss = faiss_module()
    n, dim = base.shape
    m = pq_subquantizers(dim)
    codes = faiss.IndexPQFastScan(dim, m, 4, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = base if n <= _PQ_TRAIN_ROWS else base[np.sort(rng.choice(n, _PQ_TRAIN_ROWS, replace=False))]
    codes.pq.cp.seed = seed
    codes.train(train)
    index = faiss.IndexRefineFlat(codes)
    for start in range(0, n, _CHUNK_ROWS):
        index.add(base[start : start + _CHUNK_ROWS])
    params: dict[str, Any] = {"pq_m": m, "pq_nbits": 4}
    reached = True
    if refine is None:
        def search(q: np.ndarray, kk: int, width: int) -> np.ndarray:
            index.k_factor = width
            return index.search(q, kk)[1]

        limit = max_candidates or n
        widths = [f for f in PQ_REFINE_FACTORS if f * (CALIBRATION_K + 1) <= limit] or [PQ_REFINE_FACTORS[0]]
        refine, recall, reached = _calibrate(base, search, widths, target_recall, seed)
        params.update(calibrated_recall=recall, calibration_reached_target=reached)
    index.k_factor = refine
    params["refine"] = refine
    return index, params, reached
