"""The state of a DRPO search: its settings, the evaluated candidates (nodes) and what a checkpoint holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.primitives.checks import is_real, is_whole
from drpo_dspy.rewards.reward_judge import Judgment


@dataclass
class Node:
    """One candidate prompt, evaluated on its level's query."""

    id: int
    level: int
    prompt: str
    query: str
    response: str
    judgment: Judgment
    rewards: list[float | None]
    parent_id: int | None = None
    carried: bool = False
    versions: list[str] = field(default_factory=list)  # distinct prompts along the path, oldest first
    batch: list[dict[str, Any]] = field(default_factory=list)  # the other minibatch queries' answers and judgments
    trail: list[str] = field(default_factory=list)  # the path's prompts, repeats included, oldest first (last 5)
    rejected: bool = False  # a guard rejected it (refusal rate over the limit): ranked last

    @property
    def reward(self) -> float | None:
        return self.rewards[-1] if self.rewards else None

    @property
    def path_mean(self) -> float | None:
        """Mean reward along the path without the root's (as the original ranks); the root alone: its reward."""
        return path_mean(self.rewards)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "level": self.level, "prompt": self.prompt, "query": self.query,
                "response": self.response, "judgment": self.judgment.to_dict(), "rewards": self.rewards,
                "path_mean": self.path_mean, "parent_id": self.parent_id, "carried": self.carried,
                "versions": self.versions, "batch": self.batch, "trail": self.trail, "rejected": self.rejected}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        missing = [k for k in ("id", "level", "prompt", "query", "response", "judgment", "rewards") if k not in d]
        if missing:
            raise ValueError(f"a saved node ({d.get('id', '?')!r:.20}) lacks the field(s) {', '.join(missing)}")
        if not all(r is None or is_real(r) for r in d["rewards"]):
            raise ValueError(f"node {d.get('id')!r}: rewards must be numbers or null")
        return cls(d["id"], d["level"], d["prompt"], d["query"], d["response"], Judgment.from_dict(d["judgment"]),
                   list(d["rewards"]), d.get("parent_id"), bool(d.get("carried")), list(d.get("versions", [])),
                   list(d.get("batch", [])), list(d.get("trail", d.get("versions", []))), bool(d.get("rejected")))


def path_mean(rewards: list[float | None]) -> float | None:
    """The ranking score of a path: the mean of the known rewards after the root's (the root alone: its own)."""
    steps = rewards[1:] if len(rewards) > 1 else rewards
    known = [r for r in steps if r is not None]
    return sum(known) / len(known) if known else None


@dataclass
class SearchState:
    """Everything needed to continue a search after a level (checkpoint content)."""

    level: int = 0
    max_depth: int = 0
    depth_increases: int = 0
    next_id: int = 0
    beam: list[Node] = field(default_factory=list)
    ancestry: list[Node] = field(default_factory=list)  # every node on the path of a beam node
    stopped: str | None = None
    levels: list[dict[str, Any]] = field(default_factory=list)  # per level: queries, candidates, kept, dropped

    @property
    def best(self) -> Node | None:
        return self.beam[0] if self.beam else None

    def best_judged(self) -> Node | None:
        """The best beam node whose own reward was read; when none was, the newest node on the best path that was
        (None when no reward was read on it at all)."""
        for node in self.beam:
            if node.reward is not None:
                return node
        return next((node for node in reversed(self.best_path) if node.reward is not None), None)

    def path_to(self, node: Node) -> list[Node]:
        """The nodes from the root to ``node`` (which must be in the beam's ancestry)."""
        by_id = {n.id: n for n in self.ancestry}
        path = [node]
        while path[-1].parent_id is not None:
            path.append(by_id[path[-1].parent_id])
        return path[::-1]

    @property
    def best_path(self) -> list[Node]:
        return self.path_to(self.beam[0]) if self.beam else []

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "max_depth": self.max_depth, "depth_increases": self.depth_increases,
                "next_id": self.next_id, "beam": [n.to_dict() for n in self.beam],
                "ancestry": [n.to_dict() for n in self.ancestry], "stopped": self.stopped, "levels": self.levels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchState:
        missing = [k for k in ("level", "max_depth", "depth_increases", "next_id", "beam", "ancestry") if k not in d]
        if missing:
            raise ValueError(f"the saved search state lacks the field(s) {', '.join(missing)}")
        for name in ("level", "max_depth", "depth_increases", "next_id"):
            if not is_whole(d[name]) or d[name] < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {d[name]!r:.40}")
        state = cls(d["level"], d["max_depth"], d["depth_increases"], d["next_id"],
                    [Node.from_dict(n) for n in d["beam"]], [Node.from_dict(n) for n in d["ancestry"]],
                    d.get("stopped"), list(d.get("levels", [])))
        known = {n.id for n in state.ancestry}
        if state.level and (not state.beam or any(n.id not in known for n in state.beam)):
            raise ValueError("the beam is empty or not part of the saved ancestry")
        for node in state.ancestry:
            if node.parent_id is not None and node.parent_id not in known:
                raise ValueError(f"node {node.id} names a parent ({node.parent_id}) that is not saved")
        return state
