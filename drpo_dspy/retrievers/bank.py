"""The alignment bank: in-context examples retrieved by how similar their QUERIES are to the live query.

Answers are stored without the ``<START>``/``<END>`` markers; the prompt layout adds them. Embeddings are computed
lazily (on the first search after a change) and the vector index is rebuilt or extended as needed. All public
methods are thread-safe: one re-entrant lock guards the examples, the embeddings and the index; the live query is
embedded outside it, through a bounded LRU cache of query vectors (``query_cache``) shared by copies of the bank.
A conversation example is searched by its last user turn and keyed (duplicates) by its transcript (examples.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from drpo_dspy.retrievers.bank_persistence import FORMAT_VERSION, INDEX_SAVE_THRESHOLD, BankPersistence
from drpo_dspy.retrievers.bank_rules import admit, check_policy, check_search_args, dedupe_drops, progress_bar
from drpo_dspy.retrievers.embedders import Embedder, canonical_embedder_name, l2_normalize, load_embedder
from drpo_dspy.retrievers.examples import ICLExample, normalize_query, strip_answer_markers, to_example
from drpo_dspy.retrievers.query_cache import DEFAULT_QUERY_CACHE_SIZE, QueryVectorCache
from drpo_dspy.retrievers.vector_index import EXACT_MAX, INDEX_KINDS, VectorIndex, mmr_select

__all__ = ["FORMAT_VERSION", "INDEX_SAVE_THRESHOLD", "AlignmentBank", "ICLExample", "normalize_query",
           "strip_answer_markers"]



class AlignmentBank(BankPersistence):
    """A pool of ICL examples searched by cosine similarity of the live query to the stored queries.

    ``on_duplicate`` decides what a repeated (normalised) query does: "error" (ValueError naming it), "keep_last"
    (the new one replaces the old and moves to the end), "keep_first" (the new one is ignored) or "allow" (both
    are kept; ``dedupe`` removes them later). ``index_kind`` is passed to ``VectorIndex.build``.
    ``query_cache_size`` bounds the LRU cache of live-query vectors (0 turns it off).
    """

    def __init__(self, examples: Iterable[ICLExample | Mapping[str, Any] | tuple[str, str]] = (), *,
                 embedder: str | Embedder | None = None, index_kind: str = "auto",
                 on_duplicate: str = "error", query_cache_size: int = DEFAULT_QUERY_CACHE_SIZE) -> None:
        QueryVectorCache(query_cache_size)  # validates the size
        if index_kind not in INDEX_KINDS:
            raise ValueError(f"index_kind must be one of {INDEX_KINDS}, got {index_kind!r}")
        check_policy(on_duplicate)
        self._lock = threading.RLock()
        self._index_kind = index_kind
        self._on_duplicate = on_duplicate
        self._query_cache_size = query_cache_size
        self._set_embedder(embedder)
        self._examples: list[ICLExample] = []
        self._keys: list[str] = []
        self._counts: dict[str, int] = {}
        if isinstance(examples, (str, bytes, Mapping)):
            raise TypeError("examples must be an iterable of examples (for a {query: answer} mapping use "
                            "AlignmentBank.from_published_json or examples=mapping.items())")
        self._insert([to_example(item, i) for i, item in enumerate(examples)], on_duplicate)

    def _set_embedder(self, embedder: str | Embedder | None) -> None:
        self._embedder_name = canonical_embedder_name(embedder)
        self._embedder_spec = embedder
        self._embedder: Embedder | None = None if embedder is None or isinstance(embedder, str) else embedder
        self._query_cache = QueryVectorCache(self._query_cache_size)
        self._emb = np.zeros((0, 0), dtype=np.float32)  # rows for examples[:_emb_n]; capacity may be larger
        self._emb_n = 0
        self._index: VectorIndex | None = None
        self._index_n = self._index_built_n = 0
        self._shared = False  # embeddings/index shared with a copy(): copy or drop them before changing in place

    def _unshare(self) -> None:
        if self._shared:
            self._emb, self._index, self._index_n, self._shared = self._emb[: self._emb_n].copy(), None, 0, False

    def copy(self) -> AlignmentBank:
        """An independent bank; the embedder, embeddings and index are shared until either bank changes."""
        with self._lock:
            new = object.__new__(type(self))
            new.__dict__.update(self.__dict__)
            new._lock = threading.RLock()
            new._examples, new._keys, new._counts = list(self._examples), list(self._keys), dict(self._counts)
            self._shared = new._shared = True
            return new

    def __deepcopy__(self, memo: dict) -> AlignmentBank:
        return self.copy()

    def __getstate__(self) -> dict[str, Any]:
        spec = self._embedder_spec if isinstance(self._embedder_spec, str) else self._embedder_name
        return {"state": self.to_state(), "embedder": spec}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(type(self).from_state(data["state"], embedder=data["embedder"]).__dict__)

    # -- basic container ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._examples)

    def __iter__(self) -> Iterator[ICLExample]:
        return (ex.copy() for ex in list(self._examples))  # copies made as they are read: islice(bank, k) is cheap

    def __contains__(self, query: object) -> bool:
        return isinstance(query, str) and normalize_query(query) in self._counts

    def __repr__(self) -> str:
        return f"AlignmentBank({len(self)} examples, embedder={self._embedder_name!r})"

    @property
    def examples(self) -> list[ICLExample]:
        """Copies of the examples, in insertion order."""
        with self._lock:
            return [ex.copy() for ex in self._examples]

    @property
    def embedder_name(self) -> str:
        """Name of the embedding space the queries are (or will be) embedded in."""
        return self._embedder_name

    @property
    def embedder(self) -> Embedder:
        """The embedder, resolved on first use (for a name, the model itself still loads lazily)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = load_embedder(self._embedder_spec)
            return self._embedder

    @property
    def query_cache(self) -> QueryVectorCache:
        """The LRU cache of live-query vectors in the current embedder's space (``hits``, ``misses``, ``clear``)."""
        return self._query_cache

    @property
    def index(self) -> VectorIndex | None:
        """The vector index as last built (None before the first search); ``kind``, ``params``, ``memory_bytes``."""
        return self._index

    @property
    def index_kind(self) -> str:
        """The requested index kind ("auto", "exact", "hnsw", "pq" or "ivf")."""
        return self._index_kind

    # -- mutation ----------------------------------------------------------------------------------------------------
    def _insert(self, items: list[ICLExample], policy: str) -> int:
        with self._lock:
            items, keys, replaced = admit(items, [ex.key for ex in items], self._counts, policy)
            if replaced:
                self._remove_positions([i for i, key in enumerate(self._keys) if key in replaced])
            for ex, key in zip(items, keys, strict=True):
                self._examples.append(ex)
                self._keys.append(key)
                self._counts[key] = self._counts.get(key, 0) + 1
            return len(items)

    def add(self, query: str, answer: str, provenance: list[dict] | None = None, *,
            on_duplicate: str | None = None, history: Any = None) -> ICLExample:
        """Add one example (``history``: a conversation's earlier turns), embedded lazily; returns a copy of it."""
        example = ICLExample(query, answer, [] if provenance is None else list(provenance), history or ())
        self._insert([example], self._policy(on_duplicate))
        return example.copy()

    def add_many(self, pairs: Iterable[ICLExample | Mapping[str, Any] | tuple[str, str]], *, batch_size: int = 256,
                 show_progress: bool = True, on_duplicate: str | None = None) -> int:
        """Add many examples and embed them now, in batches, with a progress bar; returns how many were added.

        All items are validated before any is added. Searches wait while the batch is embedded.
        """
        items = [to_example(item, i) for i, item in enumerate(pairs)]
        with self._lock:
            added = self._insert(items, self._policy(on_duplicate))
            self._embed_pending(batch_size, show_progress)
            return added

    def _policy(self, on_duplicate: str | None) -> str:
        return check_policy(self._on_duplicate if on_duplicate is None else on_duplicate)

    def remove(self, query: str) -> int:
        """Remove every example whose normalised query equals ``query``'s; KeyError if there is none."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        key = normalize_query(query)
        with self._lock:
            positions = [i for i, k in enumerate(self._keys) if k == key]
            if not positions:
                raise KeyError(f"no example with query {query!r}")
            self._remove_positions(positions)
            return len(positions)

    def dedupe(self, keep: str = "last") -> int:
        """Drop examples whose normalised query repeats, keeping the "first" or "last"; returns how many went."""
        with self._lock:
            drop = dedupe_drops(self._keys, keep)
            self._remove_positions(drop)
            return len(drop)

    def _remove_positions(self, positions: list[int]) -> None:
        if not positions:
            return
        drop = set(positions)
        for i in positions:
            key = self._keys[i]
            self._counts[key] -= 1
            if not self._counts[key]:
                del self._counts[key]
        self._examples = [ex for i, ex in enumerate(self._examples) if i not in drop]
        self._keys = [key for i, key in enumerate(self._keys) if i not in drop]
        self._unshare()
        embedded = [i for i in positions if i < self._emb_n]
        if embedded:
            self._emb = np.delete(self._emb[: self._emb_n], embedded, axis=0)
        self._emb_n -= len(embedded)
        if self._index is not None:
            indexed = [i for i in positions if i < self._index_n]
            if len(indexed) * 2 > self._index_n:
                self._index, self._index_n = None, 0
            else:
                self._index.remove_ids(indexed)
                self._index_n -= len(indexed)

    def reembed(self, embedder: str | Embedder | None, *, batch_size: int = 64,
                show_progress: bool = False) -> AlignmentBank:
        """Switch to another embedder and re-embed every query now; returns self."""
        with self._lock:
            self._set_embedder(embedder)
            self._embed_pending(batch_size, show_progress)
        return self

    # -- embeddings and index ----------------------------------------------------------------------------------------
    def _encode(self, texts: list[str], batch_size: int = 64, embedder: Embedder | None = None) -> np.ndarray:
        embedder = embedder or self.embedder
        vectors = l2_normalize(embedder.encode(texts, batch_size=batch_size))
        if vectors.shape[0] != len(texts):
            raise ValueError(f"embedder {self._embedder_name!r} gave {vectors.shape[0]} rows for {len(texts)} texts")
        return vectors

    def _embed_pending(self, batch_size: int = 64, show_progress: bool = False) -> None:
        pending = [ex.query for ex in self._examples[self._emb_n :]]
        if not pending:
            return
        self._unshare()
        with progress_bar(len(pending), show_progress) as bar:
            for start in range(0, len(pending), max(1, batch_size)):
                vectors = self._encode(pending[start : start + batch_size], batch_size)
                need = self._emb_n + len(vectors)
                if self._emb.shape[1] not in (0, vectors.shape[1]):
                    raise ValueError(f"embedder {self._embedder_name!r} changed dimension")
                if need > self._emb.shape[0]:
                    grown = np.empty((max(need, 2 * self._emb.shape[0], 64), vectors.shape[1]), dtype=np.float32)
                    if self._emb_n:
                        grown[: self._emb_n] = self._emb[: self._emb_n]
                    self._emb = grown
                self._emb[self._emb_n : need] = vectors
                self._emb_n = need
                if bar is not None:
                    bar.update(len(vectors))

    def _ensure_index(self) -> VectorIndex:
        self._embed_pending()
        n = len(self._examples)
        index = self._index
        grown = n > 2 * self._index_built_n  # approximate indexes are rebuilt (and re-calibrated) as the bank doubles
        stale = index is None or (index.kind != "exact" and grown) or (
            self._index_kind == "auto" and index.kind == "exact" and n > EXACT_MAX and ("fallback" not in index.params
                                                                                       or grown))
        if stale:
            self._index = VectorIndex.build(self._emb[:n], kind=self._index_kind)
            self._index_n = self._index_built_n = n
        elif self._index_n < n:
            if self._shared:
                self._unshare()
                return self._ensure_index()
            index.add(self._emb[self._index_n : n])
            self._index_n = n
        assert self._index is not None
        return self._index

    # -- search ------------------------------------------------------------------------------------------------------
    def search(self, query: str, k: int, *, mmr_lambda: float | None = None) -> list[tuple[ICLExample, float]]:
        """The ``k`` examples whose queries are most similar to ``query``: ``[(example, cosine), ...]``.

        Most similar first, ties in insertion order. With ``mmr_lambda`` in [0, 1] the picks trade relevance
        (weight ``mmr_lambda``) against similarity to the examples already picked; the order is the pick order.
        """
        return self.search_batch([query], k, mmr_lambda=mmr_lambda)[0]

    def search_batch(self, queries: list[str], k: int, *,
                     mmr_lambda: float | None = None) -> list[list[tuple[ICLExample, float]]]:
        """``search`` for several queries at once (one embedding call)."""
        queries = check_search_args(queries, k, mmr_lambda)
        self._check_k(k)
        if k == 0 or not queries:
            return [[] for _ in queries]
        vectors, embedder = self._query_vectors(queries)
        with self._lock:
            if self._embedder is not embedder:  # re-embedded meanwhile: embed again in the new space
                vectors = self._query_cache.encode(queries, self._encode)
            n = self._check_k(k)
            index = self._ensure_index()
            fetch = k if mmr_lambda is None else min(n, max(4 * k, k + 16))
            scores, ids = index.search(vectors, fetch)
            results = []
            for srow, irow in zip(scores, ids, strict=True):
                picks = range(k) if mmr_lambda is None else mmr_select(self._emb[irow], srow, k, float(mmr_lambda))
                results.append([(self._examples[irow[j]].copy(), float(srow[j])) for j in picks])
            return results

    def embed_queries(self, queries: list[str]) -> None:
        """Embed live queries ahead, in one call, into the query-vector cache (``responder.batch`` does)."""
        self._query_vectors(list(queries))

    def _query_vectors(self, queries: list[str]) -> tuple[np.ndarray, Embedder]:
        """The live queries' vectors through the cache (the embedding runs outside the lock), and the embedder."""
        with self._lock:
            embedder, cache = self.embedder, self._query_cache
        return cache.encode(queries, lambda texts: self._encode(texts, embedder=embedder)), embedder

    def _check_k(self, k: int) -> int:
        n = len(self._examples)
        if k > n:
            raise ValueError(f"k={k} is larger than the bank ({n} examples)")
        return n
