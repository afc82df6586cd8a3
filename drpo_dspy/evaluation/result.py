"""What an evaluation run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EvaluationResult:
    """Rows (one per system and prompt), their summary, and what this run did."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    settings: dict[str, Any]
    out_dir: Path | None
    usage: dict[str, Any] = field(default_factory=dict)
    reused: int = 0
    computed: int = 0
    files: dict[str, str] = field(default_factory=dict)
    markdown: str = ""
    stopped: str | None = None  # why the run stopped before every pair was done (a budget, a stop file)
