"""Saving and loading an alignment bank: its JSON/JSONL files, the saved index beside them, vectors computed
elsewhere, and the original release's ``{query: answer}`` files. A mixin of ``AlignmentBank`` (bank.py), which
holds the examples, the lock, the embeddings and the index these methods use."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from drpo_dspy.adapters.drpo_layout import END, START
from drpo_dspy.retrievers import bank_files
from drpo_dspy.retrievers.embedders import Embedder
from drpo_dspy.retrievers.examples import ICLExample
from drpo_dspy.retrievers.vector_index import VectorIndex, _check_vectors
from drpo_dspy.runs.atomic_files import atomic_write_text

FORMAT = "drpo-dspy/alignment-bank"
FORMAT_VERSION = 1
INDEX_SAVE_THRESHOLD = 10_000

B = TypeVar("B", bound="BankPersistence")


class BankPersistence:
    """The file side of ``AlignmentBank``."""

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: format, version, embedder name, index kind, duplicate policy, examples."""
        with self._lock:
            return {"format": FORMAT, "version": FORMAT_VERSION, "embedder": self._embedder_name,
                    "index_kind": self._index_kind, "on_duplicate": self._on_duplicate, "count": len(self),
                    "examples": [ex.to_dict() for ex in self._examples]}

    @classmethod
    def from_state(cls: type[B], state: Mapping[str, Any], embedder: str | Embedder | None = None) -> B:
        """Rebuild a bank from ``to_state``; refuses an ``embedder`` other than the recorded one."""
        recorded, examples = bank_files.check_bank_state(state, FORMAT, FORMAT_VERSION, embedder)
        return cls(examples, embedder=recorded if embedder is None else embedder,
                   index_kind=state.get("index_kind", "auto"), on_duplicate=state.get("on_duplicate", "error"))

    def _fingerprint(self) -> str:
        return bank_files.queries_fingerprint([ex.query for ex in self._examples])

    def save(self, path: str | os.PathLike[str], *, save_index: bool | None = None) -> Path:
        """Write ``.json`` (one object) or ``.jsonl`` (header line + one example per line). With ``save_index``
        (default: when the bank has >= 10k examples) also write ``<path>.index/`` with the index and embeddings."""
        target = Path(path)
        if target.suffix.lower() not in (".json", ".jsonl"):
            raise ValueError(f"bank path must end in .json or .jsonl, got {target}")
        with self._lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, bank_files.bank_file_text(self.to_state(), target.suffix))
            if save_index if save_index is not None else len(self) >= INDEX_SAVE_THRESHOLD:
                if not len(self):
                    return target
                bank_files.write_index_folder(Path(str(target) + ".index"), self._ensure_index(),
                                              self._emb[: len(self)], self._embedder_name, self._fingerprint())
        return target

    @classmethod
    def load(cls: type[B], path: str | os.PathLike[str], embedder: str | Embedder | None = None) -> B:
        """Read a bank written by ``save``; a matching ``<path>.index/`` is reused instead of re-embedding."""
        source = Path(path)
        state = bank_files.read_bank_json(source, "alignment bank file")
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
        with self._lock:
            found = bank_files.read_index_folder(folder, self._embedder_name, len(self), self._fingerprint())
            return found if isinstance(found, str) else self._attach(*found)

    def _attach(self, embeddings: np.ndarray, index: VectorIndex | None) -> None:
        with self._lock:
            self._emb, self._emb_n, self._shared = embeddings, len(embeddings), False
            self._index, self._index_n, self._index_built_n = index, len(embeddings) if index else 0, len(embeddings)

    @classmethod
    def from_vectors(cls: type[B], examples: Iterable[ICLExample | Mapping[str, Any] | tuple[str, str]],
                     vectors: Any, *, embedder: str | Embedder | None = None, **options: Any) -> B:
        """A bank whose queries are already embedded (``vectors``: one unit row per example, in ``embedder``'s
        space, e.g. computed on a GPU); the index is built on the first search. ``options`` as for the bank."""
        bank, rows = cls(examples, embedder=embedder, **options), _check_vectors(vectors, None)
        if rows.shape[0] != len(bank):
            raise ValueError(f"{rows.shape[0]} vectors for {len(bank)} examples (duplicates dropped?)")
        bank._attach(rows, None)
        return bank

    @classmethod
    def from_published_json(cls: type[B], path_or_dict: str | os.PathLike[str] | Mapping[str, str],
                            embedder: str | Embedder | None = None) -> B:
        """Import the original release's ``{query: "<START>\\n...\\n<END>"}`` file (or dict)."""
        return cls(bank_files.read_published_examples(path_or_dict), embedder=embedder)

    def to_published_json(self) -> dict[str, str]:
        """Export in the original release's ``{query: "<START>\\n...\\n<END>"}`` shape."""
        with self._lock:
            return {ex.shown_query: f"{START}\n{ex.answer}\n{END}" for ex in self._examples}
