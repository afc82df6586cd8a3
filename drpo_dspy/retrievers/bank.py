"""The alignment bank: in-context examples retrieved by how similar their QUERIES are to the live query.

Answers are stored without the ``<START>``/``<END>`` markers; the prompt layout adds them. Embeddings are computed
lazily (on the first search after a change) and the vector index is rebuilt or extended as needed. All public
methods are thread-safe: one re-entrant lock guards the examples, the embeddings and the index; the live query is
embedded outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from drpo_dspy.retrievers.bank_io import atomic_write, read_bank_json
from drpo_dspy.retrievers.embedders import Embedder, canonical_embedder_name, l2_normalize, load_embedder
from drpo_dspy.retrievers.examples import END, START, ICLExample, normalize_query, strip_answer_markers, to_example
from drpo_dspy.retrievers.vector_index import EXACT_MAX, INDEX_KINDS, VectorIndex, mmr_select

__all__ = [
    "FORMAT_VERSION", "INDEX_SAVE_THRESHOLD", "AlignmentBank", "ICLExample", "normalize_query",
    "strip_answer_markers",
]

FORMAT = "drpo-dspy/alignment-bank"
FORMAT_VERSION = 1
INDEX_SAVE_THRESHOLD = 10_000
ON_DUPLICATE = ("error", "keep_last", "keep_first", "allow")


class AlignmentBank:
    """A pool of ICL examples searched by cosine similarity of the live query to the stored queries.

    ``on_duplicate`` decides what a repeated (normalised) query does: "error" (ValueError naming it), "keep_last"
    (the new one replaces the old and moves to the end), "keep_first" (the new one is ignored) or "allow" (both
    are kept; ``dedupe`` removes them later). ``index_kind`` is passed to ``VectorIndex.build``.
    """

    def __init__(self, examples: Iterable[ICLExample | Mapping[str, Any] | tuple[str, str]] = (), *,
                 embedder: str | Embedder | None = None, index_kind: str = "auto",
                 on_duplicate: str = "error") -> None:
        if index_kind not in INDEX_KINDS:
            raise ValueError(f"index_kind must be one of {INDEX_KINDS}, got {index_kind!r}")
        if on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
        self._lock = threading.RLock()
        self._index_kind = index_kind
        self._on_duplicate = on_duplicate
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
        return iter(self.examples)

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
    def index_kind(self) -> str:
        """The requested index kind ("auto", "exact", "ivf" or "hnsw")."""
        return self._index_kind

    # -- mutation ----------------------------------------------------------------------------------------------------
    def _insert(self, items: list[ICLExample], policy: str) -> int:
        with self._lock:
            keys = [normalize_query(ex.query) for ex in items]
            if policy == "error":
                seen: set[str] = set()
                for ex, key in zip(items, keys, strict=True):
                    if key in self._counts or key in seen:
                        raise ValueError(f"duplicate query {ex.query!r}: the bank already has it (pass "
                                         "on_duplicate='keep_last'/'keep_first'/'allow', or remove it first)")
                    seen.add(key)
            elif policy == "keep_first":
                kept, seen = [], set(self._counts)
                for ex, key in zip(items, keys, strict=True):
                    if key not in seen:
                        kept.append((ex, key))
                        seen.add(key)
                items, keys = [ex for ex, _ in kept], [key for _, key in kept]
            elif policy == "keep_last":
                last = {key: i for i, key in enumerate(keys)}
                items = [ex for i, ex in enumerate(items) if last[keys[i]] == i]
                keys = [key for i, key in enumerate(keys) if last[key] == i]
                replaced = set(keys) & set(self._counts)
                if replaced:
                    self._remove_positions([i for i, key in enumerate(self._keys) if key in replaced])
            for ex, key in zip(items, keys, strict=True):
                self._examples.append(ex)
                self._keys.append(key)
                self._counts[key] = self._counts.get(key, 0) + 1
            return len(items)

    def add(self, query: str, answer: str, provenance: list[dict] | None = None, *,
            on_duplicate: str | None = None) -> ICLExample:
        """Add one example (embedded lazily on the next search); returns a copy of it."""
        example = ICLExample(query, answer, [] if provenance is None else list(provenance))
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
        policy = self._on_duplicate if on_duplicate is None else on_duplicate
        if policy not in ON_DUPLICATE:
            raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, got {policy!r}")
        return policy

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
        if keep not in ("first", "last"):
            raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
        with self._lock:
            winner: dict[str, int] = {}
            for i, key in enumerate(self._keys):
                if keep == "last" or key not in winner:
                    winner[key] = i
            drop = [i for i, key in enumerate(self._keys) if winner[key] != i]
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
    def _encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        embedder = self.embedder
        vectors = l2_normalize(embedder.encode(texts, batch_size=batch_size))
        if vectors.shape[0] != len(texts):
            raise ValueError(f"embedder {self._embedder_name!r} gave {vectors.shape[0]} rows for {len(texts)} texts")
        return vectors

    def _embed_pending(self, batch_size: int = 64, show_progress: bool = False) -> None:
        pending = [ex.query for ex in self._examples[self._emb_n :]]
        if not pending:
            return
        self._unshare()
        bar = None
        if show_progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(pending), desc="embedding queries", unit="ex")
            except ImportError:  # pragma: no cover - tqdm comes with dspy
                bar = None
        try:
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
        finally:
            if bar is not None:
                bar.close()

    def _ensure_index(self) -> VectorIndex:
        self._embed_pending()
        n = len(self._examples)
        index = self._index
        stale = index is None or (self._index_kind == "auto" and index.kind == "exact" and n > EXACT_MAX) or \
            (index.kind != "exact" and n > 2 * self._index_built_n)
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
        if isinstance(queries, str):
            raise TypeError("search_batch takes a list of queries; use search() for one")
        queries = list(queries)
        for query in queries:
            if not isinstance(query, str):
                raise TypeError(f"query must be a str, got {type(query).__name__}")
            if not query.strip():
                raise ValueError("query must not be empty")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if mmr_lambda is not None and not (isinstance(mmr_lambda, (int, float)) and 0.0 <= mmr_lambda <= 1.0):
            raise ValueError(f"mmr_lambda must be a number in [0, 1] or None, got {mmr_lambda!r}")
        self._check_k(k)
        if k == 0 or not queries:
            return [[] for _ in queries]
        embedder = self.embedder
        vectors = self._encode(queries)
        with self._lock:
            if self._embedder is not embedder:  # re-embedded meanwhile: embed again in the new space
                vectors = self._encode(queries)
            n = self._check_k(k)
            index = self._ensure_index()
            fetch = k if mmr_lambda is None else min(n, max(4 * k, k + 16))
            scores, ids = index.search(vectors, fetch)
            results = []
            for srow, irow in zip(scores, ids, strict=True):
                picks = range(k) if mmr_lambda is None else mmr_select(self._emb[irow], srow, k, float(mmr_lambda))
                results.append([(self._examples[irow[j]].copy(), float(srow[j])) for j in picks])
            return results

    def _check_k(self, k: int) -> int:
        n = len(self._examples)
        if k > n:
            raise ValueError(f"k={k} is larger than the bank ({n} examples)")
        return n

    # -- persistence -------------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-able state: format, version, embedder name, index kind, duplicate policy, examples."""
        with self._lock:
            return {"format": FORMAT, "version": FORMAT_VERSION, "embedder": self._embedder_name,
                    "index_kind": self._index_kind, "on_duplicate": self._on_duplicate, "count": len(self),
                    "examples": [ex.to_dict() for ex in self._examples]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], embedder: str | Embedder | None = None) -> AlignmentBank:
        """Rebuild a bank from ``to_state``; refuses an ``embedder`` other than the recorded one."""
        if not isinstance(state, Mapping):
            raise TypeError(f"bank state must be a mapping, got {type(state).__name__}")
        if state.get("format") != FORMAT:
            hint = " (it looks like the published {query: answer} format: use AlignmentBank.from_published_json)" \
                if state and all(isinstance(v, str) for v in state.values()) and "format" not in state else ""
            raise ValueError(f"not an alignment-bank state (format={state.get('format')!r}, expected {FORMAT!r}){hint}")
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported alignment-bank format version {state.get('version')!r}")
        recorded, examples = state.get("embedder"), state.get("examples")
        if not isinstance(recorded, str) or not isinstance(examples, list):
            raise ValueError("bank state needs 'embedder' (str) and 'examples' (list)")
        if state.get("count", len(examples)) != len(examples):
            raise ValueError(f"bank state says {state.get('count')} examples but holds {len(examples)} (truncated?)")
        if embedder is not None and canonical_embedder_name(embedder) != recorded:
            raise ValueError(
                f"this bank was embedded with {recorded!r} but embedder {canonical_embedder_name(embedder)!r} was "
                f"passed. Load it with embedder=None to use {recorded!r}, then call "
                f"bank.reembed({canonical_embedder_name(embedder)!r}) to switch embedders.")
        return cls(examples, embedder=recorded if embedder is None else embedder,
                   index_kind=state.get("index_kind", "auto"), on_duplicate=state.get("on_duplicate", "error"))

    def _fingerprint(self) -> str:
        queries = [ex.query for ex in self._examples]
        return hashlib.sha256(json.dumps(queries, ensure_ascii=False).encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str], *, save_index: bool | None = None) -> Path:
        """Write ``.json`` (one object) or ``.jsonl`` (header line + one example per line). With ``save_index``
        (default: when the bank has >= 10k examples) also write ``<path>.index/`` with the index and embeddings."""
        target = Path(path)
        if target.suffix.lower() not in (".json", ".jsonl"):
            raise ValueError(f"bank path must end in .json or .jsonl, got {target}")
        with self._lock:
            state = self.to_state()
            if target.suffix.lower() == ".json":
                text = json.dumps(state, ensure_ascii=False, indent=1) + "\n"
            else:
                header = {key: value for key, value in state.items() if key != "examples"}
                text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [header, *state["examples"]])
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, text)
            if save_index if save_index is not None else len(self) >= INDEX_SAVE_THRESHOLD:
                if not len(self):
                    return target
                folder = Path(str(target) + ".index")
                index = self._ensure_index()
                index.save(folder)
                np.save(folder / "embeddings.npy", self._emb[: len(self)])
                meta = {"embedder": self._embedder_name, "count": len(self), "dim": int(self._emb.shape[1]),
                        "queries_sha256": self._fingerprint()}
                atomic_write(folder / "meta.json", json.dumps(meta, indent=1))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], embedder: str | Embedder | None = None) -> AlignmentBank:
        """Read a bank written by ``save``; a matching ``<path>.index/`` is reused instead of re-embedding."""
        source = Path(path)
        state = read_bank_json(source, "alignment bank file")
        try:
            bank = cls.from_state(state, embedder=embedder)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{source}: {exc}") from exc
        folder = Path(str(source) + ".index")
        if folder.is_dir():
            problem = bank._attach_saved_index(folder)
            if problem:
                warnings.warn(f"ignoring {folder}: {problem}; the queries will be re-embedded", stacklevel=2)
        return bank

    def _attach_saved_index(self, folder: Path) -> str | None:
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            n = len(self)
            if meta.get("embedder") != self._embedder_name:
                return f"embedded with {meta.get('embedder')!r}, the bank uses {self._embedder_name!r}"
            if meta.get("count") != n or meta.get("queries_sha256") != self._fingerprint():
                return f"it holds {meta.get('count')} embeddings for different queries than the {n} in the bank"
            emb = np.load(folder / "embeddings.npy", allow_pickle=False)
            index = VectorIndex.load(folder)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            return f"unreadable ({exc})"
        if emb.shape != (n, meta.get("dim")) or emb.dtype != np.float32 or len(index) != n or index.dim != emb.shape[1]:
            return f"embeddings {emb.shape} / index {len(index)} x {index.dim} do not match {n} examples"
        with self._lock:
            self._emb, self._emb_n = np.ascontiguousarray(emb), n
            self._index, self._index_n, self._index_built_n = index, n, n
        return None

    @classmethod
    def from_published_json(cls, path_or_dict: str | os.PathLike[str] | Mapping[str, str],
                            embedder: str | Embedder | None = None) -> AlignmentBank:
        """Import the original release's ``{query: "<START>\\n...\\n<END>"}`` file (or dict)."""
        if isinstance(path_or_dict, Mapping):
            data: Any = path_or_dict
            source = "published ICL examples"
        elif not isinstance(path_or_dict, (str, os.PathLike)):
            raise TypeError(f"expected a path or a {{query: answer}} mapping, got {type(path_or_dict).__name__}")
        else:
            data = read_bank_json(Path(path_or_dict), "published ICL examples file")
            source = str(path_or_dict)
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected an object mapping query -> '<START>...<END>' answer, "
                             f"got {type(data).__name__}")
        examples = []
        for query, raw in data.items():
            try:
                answer = strip_answer_markers(raw)
                examples.append(ICLExample(query, answer, [{"source": "published", "file": source}]))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{source}: query {query!r}: {exc}") from exc
        return cls(examples, embedder=embedder)

    def to_published_json(self) -> dict[str, str]:
        """Export in the original release's ``{query: "<START>\\n...\\n<END>"}`` shape."""
        with self._lock:
            return {ex.query: f"{START}\n{ex.answer}\n{END}" for ex in self._examples}
