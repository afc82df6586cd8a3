"""One loader, one set of formats: every command reads ``--examples`` through ``retrievers.bank_loading``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.retrievers.bank_loading import load_bank
from drpo_dspy.retrievers.embedders import HashingEmbedder

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("How do I boil an egg?", "Simmer it for eight minutes."), ("Name a prime.", "Seven.")]


def _files(tmp_path: Path) -> dict[str, Path]:
    records = [{"query": q, "answer": f"<START>{a}<END>", "id": i} for i, (q, a) in enumerate(PAIRS)]
    paths = {name: tmp_path / name for name in ("list.json", "records.jsonl", "published.json", "saved.json",
                                                "saved.jsonl")}
    paths["list.json"].write_text(json.dumps(records), encoding="utf-8")
    paths["records.jsonl"].write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    paths["published.json"].write_text(json.dumps({q: f"<START>{a}<END>" for q, a in PAIRS}), encoding="utf-8")
    bank = AlignmentBank(PAIRS, embedder=HashingEmbedder())
    bank.save(paths["saved.json"])
    bank.save(paths["saved.jsonl"])
    return paths


def test_every_format_gives_the_same_examples(tmp_path):
    for name, path in _files(tmp_path).items():
        bank = load_bank(path)
        assert [(e.query, e.answer) for e in bank.examples] == PAIRS, name


def test_limit_and_seed_default(tmp_path):
    assert len(load_bank(_files(tmp_path)["records.jsonl"], limit=1)) == 1
    assert len(load_bank(None)) > 0


@pytest.mark.parametrize(("text", "message"), [
    ('{"query": "a", "answer": "b"}\nnot json\n', r"bad\.jsonl line 2 is not valid JSON"),
    ('{"query": "a", "answer": ""}\n', r"bad\.jsonl: example #0: .*must not be empty"),
    ('{"query": "a"}\n', r"bad\.jsonl: example #0: a dict example needs 'query' and 'answer'"),
    ('{"query": "a", "answer": "b<END>"}\n', r"example #0: answer has <END> but no <START>"),
])
def test_bad_files_are_refused_with_file_line_and_example(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_bank(path)


def test_no_other_module_reads_an_examples_file():
    """The CLI commands and the interop layer call ``load_bank``; none parses a bank file by hand."""
    callers = {"drpo_dspy/cli/optimize.py", "drpo_dspy/cli/optimize_icl.py", "drpo_dspy/interop/official.py"}
    for name in callers:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "drpo_dspy.retrievers.bank_loading" for alias in node.names}
        assert "load_bank" in imported, name
        assert not any(isinstance(node, ast.FunctionDef) and "bank" in node.name and node.name != "load_bank"
                       and "load" in node.name for node in ast.walk(tree)), name
