"""An evaluation's ``records.jsonl``: one line per (system, prompt) pair, loaded on start, appended as pairs finish.

A record is keyed by a stable hash of (system identity, instruction, judge scope). It is *finished* when its
judgment is (``failure`` None, ``parse_failure`` or ``empty_answer``) and is then reused as is; a record saved with
another failure (the judge's LM error, a budget reached between answer and judgment) is *pending*: its answer is
reused and only the judgment is asked again. A system that failed to answer is never saved.

Fields added over time load from older files: ``examples`` (the example queries the system showed) and ``copied``
(the verbatim copy of an example found in the answer, or None) are absent from records written before the copy
check, which are then left out of the copy share; an empty answer saved before empties were failures is
reclassified as ``empty_answer`` (no scores, no refusal verdict) when it is read (``runner._row``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from drpo_dspy.adapters.answer_checks import EMPTY_FAILURE, is_empty
from drpo_dspy.evaluation.stats import mean_ci, wilson
from drpo_dspy.runs.secrets import Redactor

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
EMPTY_ANSWER = EMPTY_FAILURE
FINISHED_FAILURES = (None, "parse_failure", EMPTY_ANSWER)  # a saved record with another failure is pending


def record_key(system_identity: str, instruction: str, judge_id: str) -> str:
    """Stable key of one (system, prompt, judge) judgment."""
    payload = json.dumps([system_identity, instruction, judge_id], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def redact_values(redactor: Redactor, value: Any) -> Any:
    """Mask secret values in strings, keeping every key: for our own records, whose field names are fixed and hold
    no credential (``Redactor.data`` would also blank fields such as ``max_tokens`` for their names)."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {k: redact_values(redactor, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(redactor, v) for v in value]
    return value


class RecordStore:
    """The append-only ``records.jsonl`` of finished judgments, loaded on start (thread-safe appends)."""

    def __init__(self, path: Path, redactor: Redactor | None = None):
        self.path = path
        self.redactor = redactor or Redactor()
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # an interrupted write: drop the partial last line
            cut = raw.rfind(b"\n") + 1
            logger.warning("%s: dropping a partial last line left by an interrupted run", self.path)
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            raw = raw[:cut]
        for line in raw.decode("utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                self.skipped_lines += 1
        if self.skipped_lines:
            logger.warning("%s: skipped %d unreadable line(s)", self.path, self.skipped_lines)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        record = redact_values(self.redactor, record)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.records[record["key"]] = record
        return record


def answer_check_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record's row fields from the answer checks: ``empty`` (and, for an empty answer, the ``empty_answer``
    failure with no scores or refusal, also for a record saved before that rule), ``examples`` and ``copied``."""
    fields: dict[str, Any] = {"empty": record.get("error") is None and is_empty(record.get("answer"))}
    if fields["empty"] and record.get("failure") != EMPTY_ANSWER:
        fields.update({"failure": EMPTY_ANSWER, "scores": {}, "rationales": {}, "refusal": None})
    if "copied" in record:
        fields.update({"examples": record.get("examples") or [], "copied": record.get("copied")})
    return fields


def answer_checks_summary(rows: list[dict[str, Any]], per_system: dict[str, Any]) -> None:
    """Add the empty-answer and copy columns to each system's summary (in place).

    ``empty_answers``: answers that were empty or whitespace (failures, not judged); ``judge_failures`` no longer
    lists them. ``length``: over the non-empty answers. ``copied_answers``: share of the non-empty answers (of
    records that carry the copy check) that copy 40+ characters of a shown example, with a Wilson interval.
    """
    for name, stats in per_system.items():
        mine = [r for r in rows if r["system"] == name and not r.get("error")]
        full = [r for r in mine if not r.get("empty")]
        checked = [r for r in full if "copied" in r]
        stats["judge_failures"] = {k: v for k, v in stats["judge_failures"].items() if k != EMPTY_ANSWER}
        stats["empty_answers"] = len(mine) - len(full)
        lengths = [int(r.get("answer_length") or 0) for r in full]
        median = None
        if lengths:
            ordered, mid = sorted(lengths), len(lengths) // 2
            median = float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0
        stats["length"] = {**mean_ci(lengths), "median": median}
        stats["copied_answers"] = wilson(sum(1 for r in checked if r.get("copied")), len(checked))
