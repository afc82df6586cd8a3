"""Tests for the bundled query sets and the JSONL instruction loader."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from drpo_dspy.datasets import (
    EVAL_SETS,
    KINDS,
    load_eval_set,
    load_instruction_jsonl,
    load_seed_examples,
    load_train_queries,
    load_train_records,
)


def _norm(text: str) -> str:
    """Lower-case, collapse whitespace and drop trailing punctuation, for duplicate detection."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .?!")


# --------------------------------------------------------------------------------------------------------------------
# Training queries
# --------------------------------------------------------------------------------------------------------------------


def test_train_records_shape_and_count() -> None:
    records = load_train_records()
    assert len(records) >= 180
    for record in records:
        assert set(record) == {"query", "category", "kind"}
        assert all(isinstance(record[key], str) and record[key].strip() for key in record)
        assert record["kind"] in KINDS


def test_train_kind_proportions() -> None:
    records = load_train_records()
    counts = Counter(r["kind"] for r in records)
    total = len(records)
    assert 0.40 <= counts["instruction"] / total <= 0.60
    assert 0.20 <= counts["harmful"] / total <= 0.30
    assert 0.20 <= counts["open_ended"] / total <= 0.30


def test_train_queries_unique() -> None:
    queries = [_norm(q) for q in load_train_queries()]
    duplicates = [q for q, n in Counter(queries).items() if n > 1]
    assert not duplicates


def test_train_open_ended_covers_real_time_and_physical_action() -> None:
    categories = Counter(r["category"] for r in load_train_records() if r["kind"] == "open_ended")
    assert categories["real_time"] >= 5
    assert categories["physical_action"] >= 5


def test_train_kinds_interleaved_at_the_start() -> None:
    head = load_train_records()[:30]
    counts = Counter(r["kind"] for r in head)
    assert all(counts[kind] >= 5 for kind in KINDS)
    # No long run of one kind anywhere in the list.
    kinds = [r["kind"] for r in load_train_records()]
    longest = max(len(m.group(0)) for m in re.finditer(r"(\w)\1*", "".join(k[0] for k in kinds)))
    assert longest <= 3


def test_load_train_queries_filter_and_limit() -> None:
    records = load_train_records()
    harmful = load_train_queries(kind="harmful")
    assert harmful == [r["query"] for r in records if r["kind"] == "harmful"]
    assert load_train_queries(limit=7) == [r["query"] for r in records[:7]]
    assert load_train_queries(kind="open_ended", limit=3) == load_train_queries(kind="open_ended")[:3]
    assert load_train_queries(limit=0) == []


def test_load_train_queries_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="instruction"):
        load_train_queries(kind="nonsense")
    with pytest.raises(ValueError, match="non-negative"):
        load_train_queries(limit=-1)


def test_loaders_return_fresh_objects() -> None:
    first = load_train_records()
    first[0]["query"] = "mutated"
    assert load_train_records()[0]["query"] != "mutated"


# --------------------------------------------------------------------------------------------------------------------
# Seed in-context examples
# --------------------------------------------------------------------------------------------------------------------


def test_seed_examples_shape() -> None:
    seeds = load_seed_examples()
    assert len(seeds) == 16
    for seed in seeds:
        assert set(seed) == {"query", "answer", "kind"}
        assert seed["kind"] in KINDS
        assert seed["query"].strip() and seed["answer"].strip()
        assert "<START>" not in seed["answer"] and "<END>" not in seed["answer"]
        assert "<START>" not in seed["query"] and "<END>" not in seed["query"]
        assert seed["answer"] == seed["answer"].strip()
    assert sum(s["kind"] == "harmful" for s in seeds) >= 5
    assert len({_norm(s["query"]) for s in seeds}) == len(seeds)


def test_seed_answers_are_substantial() -> None:
    for seed in load_seed_examples():
        words = len(seed["answer"].split())
        assert 150 <= words <= 350, (seed["query"], words)


def test_seed_code_fences_are_balanced() -> None:
    for seed in load_seed_examples():
        assert seed["answer"].count("```") % 2 == 0, seed["query"]


# --------------------------------------------------------------------------------------------------------------------
# Evaluation sets
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "minimum", "maximum"), [("regular", 100, None), ("harmful", 50, 50), ("benign_risky", 50, 50)]
)
def test_eval_set_sizes_and_shape(name: str, minimum: int, maximum: int | None) -> None:
    records = load_eval_set(name)
    assert len(records) >= minimum
    if maximum is not None:
        assert len(records) <= maximum
    for record in records:
        assert set(record) == {"instruction", "category", "set"}
        assert record["set"] == name
        assert record["instruction"].strip() and record["category"].strip()
    normalised = [_norm(r["instruction"]) for r in records]
    assert len(set(normalised)) == len(normalised)


def test_eval_regular_covers_expected_categories() -> None:
    categories = {r["category"] for r in load_eval_set("regular")}
    assert {"information", "reasoning", "coding", "writing", "advice", "math", "roleplay"} <= categories


def test_eval_set_names() -> None:
    assert EVAL_SETS == ("regular", "harmful", "benign_risky")


def test_unknown_eval_set_lists_valid_names() -> None:
    with pytest.raises(ValueError) as excinfo:
        load_eval_set("toxic")
    message = str(excinfo.value)
    for name in EVAL_SETS:
        assert name in message


def test_no_overlap_between_train_seed_and_eval() -> None:
    sources: dict[str, set[str]] = {
        "train": {_norm(q) for q in load_train_queries()},
        "seed": {_norm(s["query"]) for s in load_seed_examples()},
    }
    for name in EVAL_SETS:
        sources[f"eval_{name}"] = {_norm(r["instruction"]) for r in load_eval_set(name)}
    names = list(sources)
    for i, left in enumerate(names):
        for right in names[i + 1 :]:
            shared = sources[left] & sources[right]
            assert not shared, f"{left} and {right} share {sorted(shared)}"


# --------------------------------------------------------------------------------------------------------------------
# User JSONL loader
# --------------------------------------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_happy_path(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "prompts.jsonl",
        [
            json.dumps({"id": 1, "instruction": "Name three primary colours.", "dataset": "demo"}),
            "",
            json.dumps({"instruction": "Café prices in Zürich?", "category": "info"}, ensure_ascii=False),
            "   ",
        ],
    )
    records = load_instruction_jsonl(path)
    assert [r["instruction"] for r in records] == ["Name three primary colours.", "Café prices in Zürich?"]
    assert records[0]["id"] == 1 and records[0]["dataset"] == "demo"
    assert records[1]["category"] == "info"
    # A str path works too.
    assert load_instruction_jsonl(str(path)) == records


def test_jsonl_tolerates_bom_crlf_and_line_separator(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    text = '{"instruction": "first\u2028still first"}\r\n{"instruction": "second"}\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    records = load_instruction_jsonl(path)
    assert [r["instruction"] for r in records] == ["first\u2028still first", "second"]


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        load_instruction_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ('["a", "list"]', "expected a JSON object"),
        ('{"prompt": "no instruction key"}', "missing required field 'instruction'"),
        ('{"instruction": 42}', "must be a string"),
        ('{"instruction": null}', "must be a string"),
        ('{"instruction": "   "}', "is empty"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, fragment: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps({"instruction": "fine"}), "", bad_line])
    with pytest.raises(ValueError) as excinfo:
        load_instruction_jsonl(path)
    message = str(excinfo.value)
    assert "bad.jsonl" in message
    assert "line 3" in message
    assert fragment in message


def test_jsonl_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(ValueError) as excinfo:
        load_instruction_jsonl(path)
    message = str(excinfo.value)
    assert "latin1.jsonl" in message
    assert "UTF-8" in message
    assert "line 2" in message


def test_jsonl_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.jsonl"):
        load_instruction_jsonl(path)
