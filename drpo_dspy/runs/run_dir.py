"""The run directory: configuration, readable log, prompt trace, per-level results, caches and the program.

Layout::

    config.json          the run's settings and role models (never credentials)
    run.log              a readable log of every prompt, answer and judgment
    trace.jsonl          one JSON line per evaluated candidate (the prompt-evolution trace)
    levels.json          the best path in the published DRPO shape {"level 1": {"Prompt", "Evaluation of the prompt"}}
    metrics_cache.json   aspect selections per (model, query)
    checkpoint.json      search state after the last finished level (for resume)
    program.json         the compiled AlignedResponder (DSPy JSON state)
    summary.json         LM calls, tokens, cost and failures per role; wall time; best prompt
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from drpo_dspy.runs.atomic_files import atomic_write_text
from drpo_dspy.runs.secrets import Redactor

RUN_FILES = ("config.json", "run.log", "trace.jsonl", "levels.json", "metrics_cache.json", "checkpoint.json",
             "program.json", "summary.json")


class RunDirectory:
    """Writes a run's artefacts atomically, with every write passed through a ``Redactor``."""

    def __init__(self, path: str | os.PathLike, *, redactor: Redactor | None = None, resume: bool = False):
        self.path = Path(path)
        self.redactor = redactor or Redactor()
        self._lock = threading.Lock()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"log_dir {self.path} exists and is not a directory")
        if self.path.is_dir() and not resume and any(self.path.iterdir()):
            raise ValueError(
                f"log_dir {self.path} already holds files: pass resume=True (--resume) to continue that run, "
                "or choose a new directory"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"log_dir {self.path} is not writable: {exc.strerror or exc}") from exc

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: Any) -> Path:
        """Atomically replace ``name`` with redacted JSON."""
        text = json.dumps(self.redactor.data(data), indent=2, ensure_ascii=False)
        return self._atomic_write(name, text + "\n")

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is corrupt (not valid JSON: {exc.msg} at line {exc.lineno})") from exc

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        line = json.dumps(self.redactor.data(record), ensure_ascii=False)
        with self._lock, open(self.file(name), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def append_text(self, name: str, text: str) -> None:
        with self._lock, open(self.file(name), "a", encoding="utf-8") as fh:
            fh.write(self.redactor.text(text))

    def _atomic_write(self, name: str, text: str) -> Path:
        with self._lock:
            return atomic_write_text(self.file(name), text)

    def redact_file(self, name: str) -> None:
        """Re-write a file produced by other code (e.g. a saved program) through the redactor."""
        path = self.file(name)
        if path.exists():
            self._atomic_write(name, self.redactor.text(path.read_text(encoding="utf-8")))


def published_levels(path_nodes: list[Any]) -> dict[str, dict[str, Any]]:
    """The best path in the original release's per-level JSON shape."""
    return {
        f"level {i}": {"Prompt": node.prompt, "Evaluation of the prompt": node.judgment.to_published()}
        for i, node in enumerate(path_nodes, start=1)
    }
