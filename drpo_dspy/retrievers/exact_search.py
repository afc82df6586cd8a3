"""Exact cosine top-k over unit vectors (a SIMD kernel for a few queries, BLAS for many) and MMR re-ranking."""

from __future__ import annotations

import numpy as np

__all__ = ["exact_topk", "mmr_select"]

_CHUNK_FLOATS = 1 << 25  # ~128 MB of scores per exact-search chunk
_FEW_QUERIES = 8


def _inner_products(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``queries @ base.T``. A few queries go through faiss's single-threaded SIMD kernel: multi-threaded BLAS on
    one query is no faster here and collapses (10x slower) when other threads or processes compete for the cores."""
    if len(queries) > _FEW_QUERIES or not len(base):
        return queries @ base.T
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        return queries @ base.T
    out = np.empty((len(queries), len(base)), dtype=np.float32)
    base = np.ascontiguousarray(base)
    for i, q in enumerate(np.ascontiguousarray(queries)):
        faiss.fvec_inner_products_ny(faiss.swig_ptr(out[i]), faiss.swig_ptr(q), faiss.swig_ptr(base), base.shape[1],
                                     len(base))
    return out


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of ``queries`` (m, d) against ``base`` (n, d); ties broken by lower id."""
    m, n = queries.shape[0], base.shape[0]
    scores_out = np.empty((m, k), dtype=np.float32)
    ids_out = np.empty((m, k), dtype=np.int64)
    step = max(1, _CHUNK_FLOATS // max(n, 1))
    for start in range(0, m, step):
        scores = _inner_products(queries[start : start + step], base)
        if k == n:
            order = np.argsort(-scores, axis=1, kind="stable")
        else:
            part = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
            order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1, kind="stable"), 1)
            kth = np.take_along_axis(scores, order[:, -1:], 1)
            for r in np.flatnonzero((scores >= kth).sum(axis=1) > k):  # a tie straddles the k-th place
                cand = np.flatnonzero(scores[r] >= kth[r, 0])
                order[r] = cand[np.lexsort((cand, -scores[r, cand]))[:k]]
        ids_out[start : start + step] = order
        scores_out[start : start + step] = np.take_along_axis(scores, order, 1)
    return scores_out, ids_out


def mmr_select(vectors: np.ndarray, relevance: np.ndarray, k: int, lam: float) -> list[int]:
    """Greedy maximal-marginal-relevance: pick ``k`` of the candidate rows, each maximising
    ``lam * relevance - (1 - lam) * (max similarity to the rows already picked)``; returns picks in order."""
    chosen: list[int] = []
    redundancy = np.full(len(relevance), -np.inf, dtype=np.float64)
    for _ in range(k):
        score = relevance.astype(np.float64) if not chosen else lam * relevance - (1.0 - lam) * redundancy
        score[chosen] = -np.inf
        pick = int(np.argmax(score))
        chosen.append(pick)
        redundancy = np.maximum(redundancy, vectors @ vectors[pick])
    return chosen
