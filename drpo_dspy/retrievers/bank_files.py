"""Alignment-bank files: JSON, JSONL with a header line, atomic replacement, the saved ``<bank>.index/`` folder
(vector index, embeddings, sidecar) and the original release's ``{query: answer}`` format."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from drpo_dspy.retrievers.embedders import Embedder, canonical_embedder_name
from drpo_dspy.retrievers.examples import ICLExample, strip_answer_markers
from drpo_dspy.retrievers.vector_index import VectorIndex
from drpo_dspy.runs.atomic_files import atomic_write_text


def read_bank_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() != ".jsonl":
            return json.loads(text)
        lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not lines:
            raise ValueError(f"{path}: empty JSONL file (expected a header line)")
        rows = []
        for lineno, line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: corrupt JSON on line {lineno}: {exc.msg}") from exc
        header = rows[0]
        if not isinstance(header, dict) or "examples" in header:
            raise ValueError(f"{path}: first JSONL line must be the bank header object")
        if header.get("count") != len(rows) - 1:
            raise ValueError(f"{path}: header says {header.get('count')} examples but the file has {len(rows) - 1} "
                             "(truncated or edited?)")
        return {**header, "examples": rows[1:]}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from exc


def bank_file_text(state: dict[str, Any], suffix: str) -> str:
    """A bank state as ``.json`` (one object) or ``.jsonl`` (a header line, then one example per line)."""
    if suffix.lower() == ".json":
        return json.dumps(state, ensure_ascii=False, indent=1) + "\n"
    header = {key: value for key, value in state.items() if key != "examples"}
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [header, *state["examples"]])


def check_bank_state(state: Any, expected_format: str, expected_version: int,
                     embedder: str | Embedder | None = None) -> tuple[str, list]:
    """The recorded embedder name and the example rows of a bank state, or a ValueError saying what is wrong
    (``embedder``, when given, must be the recorded one)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"bank state must be a mapping, got {type(state).__name__}")
    if state.get("format") != expected_format:
        hint = " (it looks like the published {query: answer} format: use AlignmentBank.from_published_json)" \
            if state and all(isinstance(v, str) for v in state.values()) and "format" not in state else ""
        raise ValueError(f"not an alignment-bank state (format={state.get('format')!r}, "
                         f"expected {expected_format!r}){hint}")
    if state.get("version") != expected_version:
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
    return recorded, examples


def queries_fingerprint(queries: list[str]) -> str:
    """SHA-256 of the ordered queries: ties a saved index folder to the bank it was built from."""
    return hashlib.sha256(json.dumps(queries, ensure_ascii=False).encode("utf-8")).hexdigest()


def write_index_folder(folder: Path, index: VectorIndex, embeddings: np.ndarray, embedder_name: str,
                       fingerprint: str) -> None:
    """``<bank>.index/``: the vector index, the query embeddings and a sidecar naming the embedder and queries."""
    index.save(folder)
    np.save(folder / "embeddings.npy", embeddings)
    meta = {"embedder": embedder_name, "count": len(embeddings), "dim": int(embeddings.shape[1]),
            "queries_sha256": fingerprint}
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))


def read_index_folder(folder: Path, embedder_name: str, count: int,
                      fingerprint: str) -> tuple[np.ndarray, VectorIndex] | str:
    """The embeddings and index saved for exactly these queries in this embedder's space, or why not."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("embedder") != embedder_name:
            return f"embedded with {meta.get('embedder')!r}, the bank uses {embedder_name!r}"
        if meta.get("count") != count or meta.get("queries_sha256") != fingerprint:
            return f"it holds {meta.get('count')} embeddings for different queries than the {count} in the bank"
        emb = np.load(folder / "embeddings.npy", allow_pickle=False)
        index = VectorIndex.load(folder)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        return f"unreadable ({exc})"
    if emb.shape != (count, meta.get("dim")) or emb.dtype != np.float32 or len(index) != count or \
            index.dim != emb.shape[1]:
        return f"embeddings {emb.shape} / index {len(index)} x {index.dim} do not match {count} examples"
    return np.ascontiguousarray(emb), index


def read_published_examples(path_or_dict: str | os.PathLike[str] | Mapping[str, str]) -> list[ICLExample]:
    """The examples of the original release's ``{query: "<START>\\n...\\n<END>"}`` file (or dict)."""
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
            examples.append(ICLExample(query, strip_answer_markers(raw), [{"source": "published", "file": source}]))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{source}: query {query!r}: {exc}") from exc
    return examples
