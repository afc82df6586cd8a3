"""Cosine top-k search over L2-normalised float32 vectors: exact for small sets, FAISS IVF/HNSW for large ones.

Ids are positions ``0..len-1`` in insertion order; ``remove_ids`` deletes like ``del list[i]`` (later ids shift down).
Results are ordered by score, ties by id. ``search`` may run concurrently; ``add``/``remove_ids``/``save`` need
exclusive access (the caller's lock).

``kind="auto"`` uses exact search up to ``EXACT_MAX`` vectors and IVF-Flat above it. Approximate indexes calibrate
their search width on the data itself (512 leave-one-out queries drawn from the indexed vectors, recall@10
against exact search): the smallest width whose recall, less two standard errors, reaches the target. If IVF
cannot reach it while scanning at most a quarter of the lists (data without neighbourhood structure), "auto"
falls back to exact search (after paying for the IVF build).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXACT_MAX", "INDEX_KINDS", "TARGET_RECALL", "VectorIndex", "exact_topk", "mmr_select"]

EXACT_MAX = 10_000  # measured (bench_retrieval.py, 2 busy cores, d=384): exact p50 ~0.7 ms at 10k, ~1.5 ms at 20k
TARGET_RECALL = 0.99
INDEX_KINDS = ("auto", "exact", "hnsw", "ivf")
_FORMAT = "drpo-dspy/vector-index"
_VERSION = 1
_CALIB_QUERIES = 512
_CALIB_K = 10
_NORM_TOL = 1e-3
_CHUNK_FLOATS = 1 << 25  # ~128 MB of scores per exact-search chunk
_FEW_QUERIES = 8


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("approximate vector search needs faiss: `pip install faiss-cpu`") from exc
    return faiss


def _check_vectors(vectors: Any, dim: int | None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (n, dim) array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"vectors have dimension {arr.shape[1]}, the index has {dim}")
    if arr.shape[1] == 0:
        raise ValueError("vectors must have dimension >= 1")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinite values")
    if arr.shape[0]:
        norms = np.linalg.norm(arr, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOL)
        if bad.size:
            raise ValueError(f"vectors must be L2-normalised; row {int(bad[0])} has norm {float(norms[bad[0]]):.4f}")
    return arr


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of indexed vectors ({n})")
    return int(k)


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
    k = min(_CALIB_K, n - 1)
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


class VectorIndex:
    """Inner-product (cosine) top-k index; create it with ``VectorIndex.build`` or ``VectorIndex.load``."""

    def __init__(self, kind: str, dim: int, params: dict[str, Any], *, base: np.ndarray | None = None,
                 index: Any = None) -> None:
        self._kind = kind
        self._dim = int(dim)
        self._params = params
        self._buf = base if base is not None else np.zeros((0, dim), dtype=np.float32)
        self._n = len(self._buf) if base is not None else 0
        self._index = index

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, *, kind: str = "auto", seed: int = 0, exact_max: int = EXACT_MAX,
              target_recall: float = TARGET_RECALL, nlist: int | None = None, nprobe: int | None = None,
              hnsw_m: int = 32, ef_construction: int = 80, ef_search: int | None = None) -> VectorIndex:
        """Index ``vectors`` (n, d) with unit rows. ``kind``: "auto", "exact", "ivf" or "hnsw"; search widths
        (``nprobe``/``ef_search``) left ``None`` are calibrated to ``target_recall``."""
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
        base = _check_vectors(vectors, None)
        n, dim = base.shape
        params: dict[str, Any] = {"requested": kind, "seed": seed}
        if kind == "exact" or (kind == "auto" and n <= exact_max):
            return cls("exact", dim, params, base=base.copy())
        if n < 2:
            raise ValueError(f"an approximate ({kind!r}) index needs at least 2 vectors, got {n}")
        faiss = _faiss()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.add(base)

            def hnsw_search(q: np.ndarray, kk: int, width: int) -> np.ndarray:
                return index.search(q, kk, params=faiss.SearchParametersHNSW(efSearch=width))[1]

            if ef_search is None:
                widths = [16, 32, 64, 128, 256, 512, 1024, 2048]
                ef_search, params["calibrated_recall"], params["calibration_reached_target"] = _calibrate(
                    base, hnsw_search, widths, target_recall, seed)
            index.hnsw.efSearch = ef_search
            params.update(M=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
            return cls("hnsw", dim, params, index=index)
        nlist = nlist or _default_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.spherical = True
        rng = np.random.default_rng(seed)
        train = base if n <= 50 * nlist else base[np.sort(rng.choice(n, 50 * nlist, replace=False))]
        index.train(train)
        index.add(base)
        index.make_direct_map()

        def ivf_search(q: np.ndarray, kk: int, width: int) -> np.ndarray:
            return index.search(q, kk, params=faiss.SearchParametersIVF(nprobe=width))[1]

        params["nlist"] = nlist
        if nprobe is None:
            widths = sorted({min(nlist, 2**i) for i in range(int(math.log2(nlist)) + 2)})
            if kind == "auto":  # scanning more than a quarter of the data, exact search is about as fast
                widths = [w for w in widths if w <= max(1, nlist // 4)]
            found, recall, reached = _calibrate(base, ivf_search, widths, target_recall, seed)
            params.update(calibrated_recall=recall, calibration_reached_target=reached)
            if kind == "auto" and not reached:
                params["fallback"] = f"IVF recall@{_CALIB_K} was {recall:.4f} at nprobe={found}/{nlist}; using exact"
                return cls("exact", dim, params, base=base.copy())
            nprobe = found
        index.nprobe = nprobe
        params["nprobe"] = nprobe
        return cls("ivf", dim, params, index=index)

    # -- properties -------------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The index actually used: "exact", "ivf" or "hnsw"."""
        return self._kind

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def params(self) -> dict[str, Any]:
        """Build parameters (a copy), e.g. nlist/nprobe, calibrated recall, or why "auto" fell back to exact."""
        return dict(self._params)

    def __len__(self) -> int:
        return self._n if self._kind == "exact" else int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self._kind!r}, dim={self._dim}, count={len(self)})"

    def vectors(self) -> np.ndarray:
        """A copy of every indexed vector, in id order."""
        if self._kind == "exact":
            return self._buf[: self._n].copy()
        return self._index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self._dim), np.float32)

    # -- search -----------------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for each query row: ``(scores (m, k) float32, ids (m, k) int64)``."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self._dim:
            raise ValueError(f"queries must have shape (m, {self._dim}), got {np.asarray(queries).shape}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or infinite values")
        n = len(self)
        k = _check_k(k, n)
        if k == 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], k), np.float32), np.zeros((q.shape[0], k), np.int64)
        if self._kind == "exact":
            return exact_topk(q, self._buf[:n], k)
        fetch = min(n, 2 * k + 8)  # over-fetch so equal scores can be re-ordered by id
        scores, ids = self._index.search(q, fetch)
        short = np.flatnonzero((ids[:, :k] < 0).any(axis=1))
        if short.size:  # too few candidates in the probed cells: widen the search for those rows
            scores[short], ids[short] = self._wide_search(q[short], fetch)
        order = np.lexsort((ids, -scores), axis=-1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def _wide_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._kind == "ivf":
            faiss = _faiss()
            return self._index.search(q, k, params=faiss.SearchParametersIVF(nprobe=self._params["nlist"]))
        return exact_topk(q, self.vectors(), k)

    # -- mutation ---------------------------------------------------------------------------------------------------
    def add(self, vectors: Any) -> None:
        """Append unit vectors; they get ids ``len(self)..``. Not safe while other threads search."""
        new = _check_vectors(vectors, self._dim)
        if not len(new):
            return
        if self._kind != "exact":
            self._index.add(new)
            return
        need = self._n + len(new)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 16), self._dim), dtype=np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = new
        self._n = need

    def remove_ids(self, ids: Iterable[int]) -> None:
        """Delete the given ids; later ids shift down. Approximate kinds re-add the rest (IVF keeps its centroids)."""
        n = len(self)
        drop = np.unique(np.asarray(list(ids), dtype=np.int64))
        if drop.size and (drop[0] < 0 or drop[-1] >= n):
            raise IndexError(f"ids must be in [0, {n}), got {int(drop[0] if drop[0] < 0 else drop[-1])}")
        if not drop.size:
            return
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        rest = self.vectors()[keep]
        if self._kind == "exact":
            self._buf, self._n = rest, len(rest)
        elif self._kind == "ivf":
            self._index.reset()
            self._index.add(rest)
        else:
            faiss = _faiss()
            index = faiss.IndexHNSWFlat(self._dim, self._params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self._params["ef_construction"]
            index.hnsw.efSearch = self._params["ef_search"]
            index.add(rest)
            self._index = index

    # -- persistence ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss`` (faiss.write_index) and ``index.json`` (kind, params, dim, count) into directory
        ``path``."""
        faiss = _faiss()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        index = self._index
        if self._kind == "exact":
            index = faiss.IndexFlatIP(self._dim)
            index.add(self._buf[: self._n])
        tmp = folder / "index.faiss.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, folder / "index.faiss")
        meta = {"format": _FORMAT, "version": _VERSION, "kind": self._kind, "dim": self._dim, "count": len(self),
                "params": self._params, "faiss_version": getattr(faiss, "__version__", "unknown")}
        (folder / "index.json.tmp").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(folder / "index.json.tmp", folder / "index.json")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read an index written by ``save``; the sidecar is checked against the faiss file."""
        faiss = _faiss()
        folder = Path(path)
        meta_path, index_path = folder / "index.json", folder / "index.faiss"
        for p in (meta_path, index_path):
            if not p.is_file():
                raise FileNotFoundError(f"vector index file missing: {p}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_path}: corrupt index metadata: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: not a drpo-dspy vector index sidecar")
        if meta.get("version") != _VERSION:
            raise ValueError(f"{meta_path}: unsupported index format version {meta.get('version')!r}")
        kind, dim, count, params = meta.get("kind"), meta.get("dim"), meta.get("count"), meta.get("params")
        if kind not in ("exact", "ivf", "hnsw") or not isinstance(dim, int) or not isinstance(count, int) or \
                not isinstance(params, dict):
            raise ValueError(f"{meta_path}: missing or invalid kind/dim/count/params")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise ValueError(f"{index_path}: unreadable faiss index: {exc}") from exc
        if index.d != dim or index.ntotal != count:
            raise ValueError(f"{index_path}: has {index.ntotal} x {index.d} vectors, the sidecar says {count} x {dim}")
        if kind == "exact":
            base = faiss.rev_swig_ptr(index.get_xb(), count * dim).reshape(count, dim).copy() if count else None
            return cls("exact", dim, params, base=base if base is not None else np.zeros((0, dim), np.float32))
        if kind == "ivf":
            index.nprobe = int(params["nprobe"])
            if count:
                index.make_direct_map()
        else:
            index.hnsw.efSearch = int(params["ef_search"])
        return cls(kind, dim, params, index=index)
