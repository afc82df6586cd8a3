"""Reading a bank of in-context examples from a user's file: one loader and one set of formats for every command.

Accepted (``drpo optimize --examples``, ``drpo optimize-icl --examples``, ``import_official(examples=...)``):

- a bank saved by drpo-dspy (``AlignmentBank.save``: ``.json`` or ``.jsonl``);
- the original release's published ``{query: answer}`` object (``.json``; answers may keep ``<START>``/``<END>``);
- a list of ``{query, answer[, provenance, history]}`` records (``.json``) or one record per line (``.jsonl``);
  other keys of a record are ignored.

Every example is validated (markers, empty answers, duplicate queries) before any LM is called; errors name the
file and, where it applies, the line or the example.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.retrievers.examples import ICLExample, coerce_example


def _records_from_jsonl(path: Path, text: str) -> list[Any]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from exc
    return records


def read_bank(path: Path) -> AlignmentBank:
    """The bank in ``path``, in any of the accepted formats."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    if path.suffix == ".jsonl":
        records = _records_from_jsonl(path, text)
        if records and isinstance(records[0], dict) and "format" in records[0]:  # a bank saved as JSONL
            return AlignmentBank.load(path)
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
            return AlignmentBank.from_published_json(path)
        if isinstance(data, dict) and "examples" in data:
            return AlignmentBank.load(path)
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a list of {{query, answer}} objects, a saved bank, "
                             "or a {query: answer} object")
        records = data
    else:
        raise ValueError(f"{path}: unsupported examples format {path.suffix!r} (use .json or .jsonl)")
    try:
        return AlignmentBank([coerce_example(r, i) for i, r in enumerate(records)])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def bank_like(bank: AlignmentBank, examples: Sequence[ICLExample]) -> AlignmentBank:
    """A new bank holding ``examples`` with ``bank``'s settings (embedder, index kind, duplicate policy)."""
    state = bank.to_state()
    state["examples"] = [example.to_dict() for example in examples]
    if "count" in state:
        state["count"] = len(examples)
    return AlignmentBank.from_state(state, embedder=bank.embedder)


def load_bank(path: Path | None, limit: int | None = None) -> AlignmentBank:
    """The bank in ``path`` (default: the built-in seed examples), its first ``limit`` examples only."""
    if path is None:
        from drpo_dspy.datasets import load_seed_examples

        bank = AlignmentBank([coerce_example(e, i) for i, e in enumerate(load_seed_examples())])
    elif not Path(path).is_file():
        raise FileNotFoundError(f"examples file {path} does not exist")
    else:
        bank = read_bank(Path(path))
    if limit is not None and limit < len(bank):
        bank = bank_like(bank, bank.examples[:limit])
    return bank
