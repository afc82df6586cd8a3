"""Typed events of a DRPO search, for watching it as it runs: ``DRPO(callbacks=[...])``.

A callback is either a plain callable that receives every event, or an object with any of the methods
``on_level_started``, ``on_candidate_judged``, ``on_candidate_dropped``, ``on_beam_selected``,
``on_level_finished``, ``on_budget_updated``, ``on_search_stopped`` (each receives its event). Events arrive in
a fixed order, from the thread that runs the search, whatever ``num_threads`` is:

``LevelStarted`` → ``CandidateDropped``* → ``CandidateJudged``+ → ``BeamSelected`` → ``LevelFinished`` →
``BudgetUpdated``, once per level; ``SearchStopped`` when the search ends early (budget, STOP file, Ctrl-C).

The progress bar, the run log, the trace and the checkpoints are built on these same events. An exception raised
by a user callback is logged and does not stop a paid run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from dspy.utils.callback import BaseCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LevelStarted:
    """A level begins: its queries, the depth limit, and the beam it expands."""

    level: int
    queries: list[str]
    max_depth: int
    beam: list[int]


@dataclass(frozen=True)
class CandidateJudged:
    """One candidate prompt answered the level's query and was judged."""

    level: int
    node: dict[str, Any]  # Node.to_dict(): id, parent_id, prompt, query, response, judgment, rewards, path_mean...

    @property
    def reward(self) -> float | None:
        return self.node["rewards"][-1] if self.node["rewards"] else None


@dataclass(frozen=True)
class CandidateDropped:
    """A rewrite that could not serve as a system prompt, or could not be read; ``reason`` says which."""

    level: int
    parent_id: int
    prompt: str | None
    reason: str


@dataclass(frozen=True)
class BeamSelected:
    """The candidates of the level, ranked, and the ids kept in the beam."""

    level: int
    ranked: list[int]
    kept: list[int]


@dataclass(frozen=True)
class LevelFinished:
    """A level is complete; ``record`` is the level as ``DRPOResult.levels`` holds it."""

    level: int
    max_depth: int
    best_path_mean: float | None
    best_prompt: str | None
    record: dict[str, Any]


@dataclass(frozen=True)
class BudgetUpdated:
    """LM usage so far (per role) and the limits in force."""

    level: int
    calls: int
    tokens: int
    cost_usd: float
    limits: dict[str, Any]
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchStopped:
    """The search ended before its depth limit or its queries ran out."""

    level: int
    reason: str


SearchEvent = LevelStarted | CandidateJudged | CandidateDropped | BeamSelected | LevelFinished | BudgetUpdated \
    | SearchStopped


def method_name(event: Any) -> str:
    """``LevelStarted`` (the class or an event of it) → ``on_level_started``."""
    cls = event if isinstance(event, type) else type(event)
    return "on_" + re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def event_dict(event: Any) -> dict[str, Any]:
    """A JSON-able view of an event, with its type."""
    return {"event": type(event).__name__, **asdict(event)}


class EventBus:
    """Delivers events to internal listeners (errors propagate) and user callbacks (errors are logged)."""

    def __init__(self, callbacks: Iterable[Any] = (), listeners: Iterable[Callable[[Any], None]] = ()):
        self.callbacks = list(callbacks)
        self.listeners = list(listeners)
        for cb in self.callbacks:
            if not callable(cb) and not any(hasattr(cb, m) for m in _METHODS) and not isinstance(cb, BaseCallback):
                raise ValueError(f"a DRPO callback must be callable, define one of {', '.join(_METHODS)}, or be a "
                                 f"dspy BaseCallback (for DSPy's compile hooks); got {type(cb).__name__}")

    def add_listener(self, listener: Callable[[Any], None]) -> None:
        self.listeners.append(listener)

    def emit(self, event: Any) -> None:
        for listener in self.listeners:
            listener(event)
        name = method_name(event)
        for cb in self.callbacks:
            handler = getattr(cb, name, None)
            if handler is None and callable(cb) and not any(hasattr(cb, m) for m in _METHODS):
                handler = cb
            if handler is None:
                continue
            try:
                handler(event)
            except Exception:  # a user's callback must not cost them the run
                logger.exception("DRPO callback %r failed on %s", cb, type(event).__name__)


_METHODS = tuple(method_name(cls) for cls in (
    LevelStarted, CandidateJudged, CandidateDropped, BeamSelected, LevelFinished, BudgetUpdated, SearchStopped))
