"""A bounded, thread-safe LRU cache of live-query embeddings (query text -> unit vector in one embedder's space).

The beam search answers the same training query with every candidate prompt, and a served program sees repeated
questions: embedding a query (milliseconds on a CPU) is then paid once. One cache belongs to one embedder; a bank
creates a fresh one whenever it switches embedders.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from drpo_dspy.primitives.checks import is_whole

__all__ = ["DEFAULT_QUERY_CACHE_SIZE", "QueryVectorCache"]

DEFAULT_QUERY_CACHE_SIZE = 4096  # 384-d float32 vectors: about 6 MB when full


class QueryVectorCache:
    """Least-recently-used map of query text to its embedding, holding at most ``maxsize`` vectors (0: off)."""

    def __init__(self, maxsize: int = DEFAULT_QUERY_CACHE_SIZE) -> None:
        if not is_whole(maxsize) or maxsize < 0:
            raise ValueError(f"query cache size must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        return f"QueryVectorCache({len(self)}/{self.maxsize}, hits={self.hits}, misses={self.misses})"

    def clear(self) -> None:
        """Forget every vector (the hit and miss counts stay)."""
        with self._lock:
            self._vectors.clear()

    def encode(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """The vectors of ``texts`` (one row each, in order): cached ones are reused, the rest (each distinct text
        once) go to ``encode`` in one call, outside the lock, and are remembered."""
        if not self.maxsize:
            return encode(texts)
        rows: list[np.ndarray | None] = []
        with self._lock:
            for text in texts:
                vector = self._vectors.get(text)
                if vector is not None:
                    self._vectors.move_to_end(text)
                rows.append(vector)
            missing = list(dict.fromkeys(t for t, row in zip(texts, rows, strict=True) if row is None))
            self.hits += len(texts) - sum(row is None for row in rows)
            self.misses += len(missing)
        if missing:
            fresh = encode(missing)
            if fresh.shape[0] != len(missing):
                raise ValueError(f"the embedder gave {fresh.shape[0]} rows for {len(missing)} texts")
            computed = {text: row for text, row in zip(missing, fresh, strict=True)}
            with self._lock:
                for text, row in computed.items():
                    stored = row.copy()
                    stored.setflags(write=False)
                    self._vectors[text] = stored
                    self._vectors.move_to_end(text)
                while len(self._vectors) > self.maxsize:
                    self._vectors.popitem(last=False)
            rows = [computed[t] if row is None else row for t, row in zip(texts, rows, strict=True)]
        return np.stack(rows).astype(np.float32, copy=False)
