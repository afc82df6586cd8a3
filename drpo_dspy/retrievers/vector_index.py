"""Cosine top-k search over L2-normalised float32 vectors: exact for small sets, FAISS HNSW/PQ/IVF for large ones.

Ids are positions ``0..len-1`` in insertion order; ``remove_ids`` deletes like ``del list[i]`` (later ids shift down).
Results are ordered by score, ties by id. ``search`` may run concurrently; ``add``/``remove_ids``/``save`` need
exclusive access (the caller's lock).

``kind="auto"`` uses exact search up to ``EXACT_MAX`` vectors and an HNSW graph above it, whose ``efSearch`` is
calibrated on the data itself (see ``index_builders``): the smallest width whose measured recall@10 reaches the
target. If no width up to 2048 reaches it, or the width found makes a search compare more than half as many vectors
as an exact scan would (structure-free noise in hundreds of dimensions, where every neighbour is a near-tie and a
graph must visit nearly everything), "auto" tries PQ fast-scan codes with exact re-ranking (every query scans all
the 4-bit codes, then re-ranks a calibrated number of candidates on the vectors, at most an eighth of them), then a
calibrated IVF index scanning at most half its lists (clustered data a graph fragments on), then exact search. HNSW
removals are tombstones (a filter at search time) until a quarter of the graph is dead, then the graph is rebuilt
from the live vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from drpo_dspy.primitives.checks import is_whole
from drpo_dspy.retrievers.exact_search import exact_topk, mmr_select
from drpo_dspy.retrievers.index_builders import build_hnsw, build_ivf, build_pq, faiss_module, new_hnsw

__all__ = ["EXACT_MAX", "INDEX_KINDS", "TARGET_RECALL", "VectorIndex", "exact_topk", "mmr_select"]

EXACT_MAX = 10_000  # measured (bench_retrieval.py, 2 busy cores, d=384): exact p50 ~0.7 ms at 10k, ~1.5 ms at 20k
TARGET_RECALL = 0.99
INDEX_KINDS = ("auto", "exact", "hnsw", "pq", "ivf")
HNSW_M = 32
PQ_AUTO_MIN = 1_000  # "auto" tries PQ codes only on banks this large (16 centroids per sub-vector to train)
HNSW_EF_CONSTRUCTION = 80
_FORMAT = "drpo-dspy/vector-index"
_VERSION = 1
_NORM_TOL = 1e-3
_MAX_DEAD_FRACTION = 0.25


def _check_vectors(vectors: Any, dim: int | None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (n, dim) array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"vectors have dimension {arr.shape[1]}, the index has {dim}")
    if arr.shape[1] == 0:
        raise ValueError("vectors must have dimension >= 1")
    for start in range(0, arr.shape[0], 65_536):  # chunked: no full-size temporary for a million rows
        if not np.isfinite(arr[start : start + 65_536]).all():
            raise ValueError("vectors contain NaN or infinite values")
        norms = np.linalg.norm(arr[start : start + 65_536], axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOL)
        if bad.size:
            raise ValueError(f"vectors must be L2-normalised; row {start + int(bad[0])} has norm "
                             f"{float(norms[bad[0]]):.4f}")
    return arr


def _check_k(k: int, n: int) -> int:
    if not (is_whole(k) or isinstance(k, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of indexed vectors ({n})")
    return int(k)


class VectorIndex:
    """Inner-product (cosine) top-k index; create it with ``VectorIndex.build`` or ``VectorIndex.load``."""

    def __init__(self, kind: str, dim: int, params: dict[str, Any], *, base: np.ndarray | None = None,
                 index: Any = None, positions: np.ndarray | None = None) -> None:
        self._kind = kind
        self._dim = int(dim)
        self._params = params
        self._buf = base if base is not None else np.zeros((0, dim), dtype=np.float32)
        self._n = len(self._buf) if base is not None else 0
        self._index = index
        self._set_positions(positions)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, *, kind: str = "auto", seed: int = 0, exact_max: int = EXACT_MAX,
              target_recall: float = TARGET_RECALL, nlist: int | None = None, nprobe: int | None = None,
              hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
              ef_search: int | None = None, pq_refine: int | None = None) -> VectorIndex:
        """Index ``vectors`` (n, d) with unit rows. ``kind``: "auto", "exact", "hnsw", "pq" or "ivf"; search widths
        (``ef_search``, ``pq_refine``, ``nprobe``) left ``None`` are calibrated to ``target_recall``."""
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
        base = _check_vectors(vectors, None)
        n, dim = base.shape
        params: dict[str, Any] = {"requested": kind, "seed": seed}
        if kind == "exact" or (kind == "auto" and n <= exact_max):
            return cls("exact", dim, params, base=base.copy())
        if n < 2:
            raise ValueError(f"an approximate ({kind!r}) index needs at least 2 vectors, got {n}")
        if kind == "ivf":
            index, built, _ = build_ivf(base, seed=seed, target_recall=target_recall, nlist=nlist, nprobe=nprobe)
            return cls("ivf", dim, {**params, **built}, index=index)
        if kind == "pq":
            if n < 16:
                raise ValueError(f"a PQ index needs at least 16 vectors to train its codes, got {n}")
            index, built, _ = build_pq(base, seed=seed, target_recall=target_recall, refine=pq_refine)
            return cls("pq", dim, {**params, **built}, index=index)
        index, built, reached, positions = build_hnsw(base, seed=seed, target_recall=target_recall, m=hnsw_m,
                                                      ef_construction=ef_construction, ef_search=ef_search)
        params.update(built)
        visits = 2 * hnsw_m * built["ef_search"]  # vectors a search compares, each dearer than one of a scan
        if kind == "auto" and (not reached or visits > n // 2):
            reason = (f"HNSW recall@10 was {built['calibrated_recall']:.4f} at efSearch={built['ef_search']} (about "
                      f"{visits:,} comparisons per query for {n:,} vectors)")
            del index
            if n >= PQ_AUTO_MIN:  # near-ties everywhere (noise): scan compact codes, re-rank a few exactly
                pq, pq_built, pq_reached = build_pq(base, seed=seed, target_recall=target_recall, refine=None,
                                                    max_candidates=n // 8)
                if pq_reached:
                    return cls("pq", dim, {"requested": kind, "seed": seed, **pq_built,
                                           "fallback": f"{reason}; using PQ codes with exact re-ranking"}, index=pq)
                del pq
                reason += f"; PQ re-ranking reached recall@10 {pq_built['calibrated_recall']:.4f}"
            # Clustered banks a graph fragments on still suit IVF, if it reaches the recall scanning half the lists.
            ivf, ivf_built, ivf_reached = build_ivf(base, seed=seed, target_recall=target_recall, nlist=nlist,
                                                    nprobe=None, max_fraction=0.5)
            if ivf_reached:
                return cls("ivf", dim, {"requested": kind, "seed": seed, **ivf_built,
                                        "fallback": f"{reason}; using IVF"}, index=ivf)
            del ivf
            params["fallback"] = f"{reason}; IVF did not reach the recall scanning half its lists either: using exact"
            return cls("exact", dim, params, base=base.copy())
        return cls("hnsw", dim, params, index=index, positions=positions)

    # -- properties -------------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The index actually used: "exact", "hnsw", "pq" or "ivf"."""
        return self._kind

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def params(self) -> dict[str, Any]:
        """Build parameters (a copy), e.g. efSearch/nprobe, calibrated recall, or why "auto" fell back to exact."""
        return dict(self._params)

    def memory_bytes(self) -> int:
        """Bytes held by the vectors and the index structure (graph links, list ids), without Python overhead."""
        if self._kind == "exact":
            return int(self._buf.nbytes)
        stored = int(self._index.ntotal) * self._dim * 4
        if self._kind == "hnsw":
            hnsw = self._index.hnsw
            links = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
            return stored + links + (self._positions.nbytes * 2 if self._positions is not None else 0)
        if self._kind == "pq":
            return stored + int(self._index.ntotal) * int(self._params["pq_m"]) // 2
        return stored + int(self._index.ntotal) * 16 + int(self._params["nlist"]) * self._dim * 4

    def __len__(self) -> int:
        if self._kind == "exact":
            return self._n
        return len(self._positions) if self._positions is not None else int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self._kind!r}, dim={self._dim}, count={len(self)})"

    def vectors(self) -> np.ndarray:
        """A copy of every indexed vector, in id order."""
        if self._kind == "exact":
            return self._buf[: self._n].copy()
        if not len(self):
            return np.zeros((0, self._dim), np.float32)
        stored = self._index.reconstruct_n(0, int(self._index.ntotal))
        return stored if self._positions is None else stored[self._positions]

    # -- HNSW tombstones --------------------------------------------------------------------------------------------
    def _set_positions(self, positions: np.ndarray | None) -> None:
        """``positions[i]`` is the faiss id of position ``i`` (None: the same); a selector hides dead ids."""
        self._positions = positions
        self._faiss_to_position: np.ndarray | None = None
        self._selector: tuple[Any, ...] | None = None
        if positions is None:
            return
        total = int(self._index.ntotal)
        lookup = np.full(total, -1, dtype=np.int64)
        lookup[positions] = np.arange(len(positions))
        self._faiss_to_position = lookup
        dead = np.flatnonzero(lookup < 0).astype(np.int64)
        if dead.size:
            faiss = faiss_module()
            inner = faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead))
            self._selector = (faiss.IDSelectorNot(inner), inner, dead)  # keep what the selector points to alive

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
        scores, ids = self._approximate(q, fetch)
        short = np.flatnonzero((ids[:, :k] < 0).any(axis=1))
        if short.size:  # too few candidates in the probed cells: widen the search for those rows
            scores[short], ids[short] = self._wide_search(q[short], fetch)
        order = np.lexsort((ids, -scores), axis=-1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def _approximate(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._faiss_to_position is None:
            return self._index.search(q, fetch)
        if self._selector is None:
            scores, ids = self._index.search(q, fetch)
        else:
            faiss = faiss_module()
            params = faiss.SearchParametersHNSW(efSearch=self._index.hnsw.efSearch, sel=self._selector[0])
            scores, ids = self._index.search(q, fetch, params=params)
        return scores, np.where(ids >= 0, self._faiss_to_position[np.maximum(ids, 0)], -1)

    def _wide_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._kind == "ivf":
            faiss = faiss_module()
            return self._index.search(q, k, params=faiss.SearchParametersIVF(nprobe=self._params["nlist"]))
        return exact_topk(q, self.vectors(), k)

    # -- mutation ---------------------------------------------------------------------------------------------------
    def add(self, vectors: Any) -> None:
        """Append unit vectors; they get ids ``len(self)..``. Not safe while other threads search."""
        new = _check_vectors(vectors, self._dim)
        if not len(new):
            return
        if self._kind != "exact":
            start = int(self._index.ntotal)
            self._index.add(new)
            if self._positions is not None:
                self._set_positions(np.concatenate([self._positions, np.arange(start, start + len(new))]))
            return
        need = self._n + len(new)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 16), self._dim), dtype=np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = new
        self._n = need

    def remove_ids(self, ids: Iterable[int]) -> None:
        """Delete the given ids; later ids shift down. IVF re-adds the rest (keeping its centroids); HNSW hides
        them until a quarter of the graph is dead, then rebuilds it."""
        n = len(self)
        drop = np.unique(np.asarray(list(ids), dtype=np.int64))
        if drop.size and (drop[0] < 0 or drop[-1] >= n):
            raise IndexError(f"ids must be in [0, {n}), got {int(drop[0] if drop[0] < 0 else drop[-1])}")
        if not drop.size:
            return
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        if self._kind == "hnsw":
            current = self._positions if self._positions is not None else np.arange(n, dtype=np.int64)
            alive = current[keep]
            if len(alive) >= (1 - _MAX_DEAD_FRACTION) * int(self._index.ntotal):
                self._set_positions(alive)
                return
            rest = self.vectors()[keep]
            p = self._params
            self._index = new_hnsw(self._dim, p["M"], p["ef_construction"], p["ef_search"])
            self._index.add(rest)
            self._set_positions(None)
            return
        rest = self.vectors()[keep]
        if self._kind == "exact":
            self._buf, self._n = rest, len(rest)
        else:
            self._index.reset()
            self._index.add(rest)

    # -- persistence ------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss`` (faiss.write_index), ``index.json`` (kind, params, dim, count) and, for an HNSW
        graph with removed vectors, ``index.positions.npy`` into directory ``path``."""
        faiss = faiss_module()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        index = self._index
        if self._kind == "exact":
            index = faiss.IndexFlatIP(self._dim)
            index.add(self._buf[: self._n])
        tmp = folder / "index.faiss.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, folder / "index.faiss")
        positions = folder / "index.positions.npy"
        if self._positions is not None:
            with open(folder / "index.positions.tmp", "wb") as handle:
                np.save(handle, self._positions)
            os.replace(folder / "index.positions.tmp", positions)
        elif positions.exists():
            positions.unlink()
        meta = {"format": _FORMAT, "version": _VERSION, "kind": self._kind, "dim": self._dim, "count": len(self),
                "stored": int(index.ntotal), "positions": self._positions is not None, "params": self._params,
                "faiss_version": getattr(faiss, "__version__", "unknown")}
        (folder / "index.json.tmp").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(folder / "index.json.tmp", folder / "index.json")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read an index written by ``save``; the sidecar is checked against the faiss file."""
        faiss = faiss_module()
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
        stored = meta.get("stored", count)
        if kind not in ("exact", "ivf", "hnsw", "pq") or not isinstance(dim, int) or not isinstance(count, int) or \
                not isinstance(params, dict) or not isinstance(stored, int):
            raise ValueError(f"{meta_path}: missing or invalid kind/dim/count/params")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise ValueError(f"{index_path}: unreadable faiss index: {exc}") from exc
        if index.d != dim or index.ntotal != stored or (kind != "hnsw" and count != stored):
            raise ValueError(f"{index_path}: has {index.ntotal} x {index.d} vectors, the sidecar says {count} x {dim}")
        if kind == "exact":
            base = faiss.rev_swig_ptr(index.get_xb(), count * dim).reshape(count, dim).copy() if count else None
            return cls("exact", dim, params, base=base if base is not None else np.zeros((0, dim), np.float32))
        if kind == "ivf":
            index.nprobe = int(params["nprobe"])
            if count:
                index.make_direct_map()
            return cls(kind, dim, params, index=index)
        if kind == "pq":
            index.k_factor = float(params["refine"])
            return cls(kind, dim, params, index=index)
        index.hnsw.efSearch = int(params["ef_search"])
        positions = None
        if meta.get("positions") or stored != count:
            positions = np.load(folder / "index.positions.npy", allow_pickle=False).astype(np.int64)
            if positions.shape != (count,) or (count and (positions.min() < 0 or positions.max() >= stored)):
                raise ValueError(f"{folder / 'index.positions.npy'}: does not match {count} of {stored} vectors")
        return cls(kind, dim, params, index=index, positions=positions)
