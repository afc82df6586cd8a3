"""Checkpoints: the search state after every finished level, and resuming from it.

On ``LevelFinished`` the run directory gets ``checkpoint.json`` (the search state), ``levels.json`` (the best path in
the published shape), ``metrics_cache.json`` and ``summary.json``. ``load`` checks that a checkpoint belongs to the
very same run (settings, queries, models) before it is used, and trims the trace of the interrupted level, which is
evaluated again from the run's LM cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from drpo_dspy.primitives.events import LevelFinished
from drpo_dspy.runs.run_dir import RunDirectory, published_levels
from drpo_dspy.teleprompt.search_state import SearchState

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "drpo-dspy/checkpoint"
RESUME_KEYS = ("search", "k", "initial_instructions", "roles", "aspects", "queries", "embedder", "bank_size",
               "max_answer_tokens", "answer_temperature", "program", "predictors", "output_field")


class Checkpointer:
    """Writes the checkpoint files after every finished level."""

    def __init__(self, run_dir: RunDirectory, state: Callable[[], SearchState | None],
                 metrics_cache: Callable[[], dict[str, Any]], summary: Callable[[SearchState], dict[str, Any]]):
        self.run_dir, self._state, self._metrics_cache, self._summary = run_dir, state, metrics_cache, summary

    def __call__(self, event: Any) -> None:
        if not isinstance(event, LevelFinished):
            return
        state = self._state()
        if state is None:
            return
        self.run_dir.write_json("checkpoint.json", {"format": CHECKPOINT_FORMAT, "version": 1,
                                                     "state": state.to_dict()})
        self.run_dir.write_json("levels.json", published_levels(state.best_path))
        self.run_dir.write_json("metrics_cache.json", self._metrics_cache())
        self.run_dir.write_json("summary.json", self._summary(state))


def load_checkpoint(run_dir: RunDirectory, config: dict[str, Any]) -> SearchState | None:
    """The search state saved in ``run_dir``, after checking it belongs to a run with this ``config``."""
    if not run_dir.file("checkpoint.json").exists():
        return None
    checkpoint = run_dir.read_json("checkpoint.json")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT or "state" not in checkpoint:
        raise ValueError(f"{run_dir.file('checkpoint.json')} is not a drpo-dspy checkpoint")
    saved = run_dir.read_json("config.json") if run_dir.file("config.json").exists() else {}
    mine = json.loads(json.dumps(run_dir.redactor.data(config)))
    differing = sorted(k for k in RESUME_KEYS if _comparable(saved.get(k)) != _comparable(mine.get(k)))
    if differing:
        raise ValueError(
            f"the checkpoint in {run_dir.path} belongs to a different run (differs in: {', '.join(differing)}); "
            "resume with the same settings, queries and models, or start a new log_dir"
        )
    try:
        state = SearchState.from_dict(checkpoint["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{run_dir.file('checkpoint.json')} is corrupt: {exc}") from exc
    trim_trace(run_dir, state.level)
    logger.info("resuming %s after level %d", run_dir.path, state.level)
    return state


def trim_trace(run_dir: RunDirectory, level: int) -> None:
    """Drop trace lines of the level that was interrupted (it is evaluated again, from the LM cache)."""
    path = run_dir.file("trace.jsonl")
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                continue  # a line cut short by a kill: it belongs to the interrupted level
            raise ValueError(f"{path} line {lineno} is corrupt; remove that line to resume") from None
        if record.get("level", 0) <= level:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _comparable(value: Any) -> Any:
    """Config values as compared on resume: the thread count may change between sessions."""
    if isinstance(value, dict) and "num_threads" in value:
        return {k: v for k, v in value.items() if k != "num_threads"}
    return value
