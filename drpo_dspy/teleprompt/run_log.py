"""The run's readable log and its prompt-evolution trace, written from the search's events.

``run.log`` also says, after each level, how many calls each replica of a role on a replica pool answered.
``trace.jsonl`` holds one line per evaluated candidate (the node: prompt, answer, judgment, rewards, parent) and one
line per dropped rewrite (``{"kind": "dropped", "level", "parent_id", "reason"}``), so the trace says why every
rewrite that was not evaluated was dropped. ``run.log`` is the same story for people.
"""

from __future__ import annotations

from typing import Any

from drpo_dspy.clients.metering import replica_usage_lines
from drpo_dspy.primitives.events import BudgetUpdated, CandidateDropped, CandidateJudged, LevelFinished, SearchStopped
from drpo_dspy.runs.run_dir import RunDirectory

DROPPED = "dropped"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render_verdicts(judgment: dict[str, Any]) -> str:
    scores = judgment.get("scores") or {}
    if not scores:
        return f"(the evaluation could not be read: {judgment.get('failure')})"
    rationales = judgment.get("rationales") or {}
    return "\n".join(f"- {a}: {s}/5. {rationales.get(a, '')}" for a, s in scores.items())


class RunLogWriter:
    """Appends every judged candidate and dropped rewrite to ``trace.jsonl`` and ``run.log``."""

    def __init__(self, run_dir: RunDirectory):
        self.run_dir = run_dir

    def __call__(self, event: Any) -> None:
        if isinstance(event, CandidateJudged):
            node = event.node
            self.run_dir.append_jsonl("trace.jsonl", node)
            reward = node["rewards"][-1] if node["rewards"] else None
            self.run_dir.append_text("run.log", (
                f"\n=== level {node['level']} | node {node['id']} (parent {node['parent_id']})"
                f"{' | carried' if node['carried'] else ''} | reward {_fmt(reward)} | path mean "
                f"{_fmt(node['path_mean'])}\n--- prompt\n{node['prompt']}\n--- query\n{node['query']}\n"
                f"--- answer\n{node['response']}\n--- judgment ({', '.join(node['judgment']['aspects'])})\n"
                f"{render_verdicts(node['judgment'])}\n"))
        elif isinstance(event, CandidateDropped):
            self.run_dir.append_jsonl("trace.jsonl", {"kind": DROPPED, "level": event.level,
                                                      "parent_id": event.parent_id, "reason": event.reason})
            self.run_dir.append_text("run.log", f"\n--- level {event.level}: a rewrite of node {event.parent_id} "
                                                f"was dropped ({event.reason})\n")
        elif isinstance(event, LevelFinished):
            self.run_dir.append_text("run.log", f"\n### level {event.level} finished | depth limit "
                                                f"{event.max_depth} | best path mean {_fmt(event.best_path_mean)}\n")
        elif isinstance(event, BudgetUpdated):  # roles on replica pools: each replica's calls so far
            for line in replica_usage_lines(event.usage or {}):
                self.run_dir.append_text("run.log", f"--- after level {event.level}: {line}\n")
        elif isinstance(event, SearchStopped):
            self.run_dir.append_text("run.log", f"\n### stopped after level {event.level}: {event.reason}\n")


def is_node_line(record: dict[str, Any]) -> bool:
    """Whether a trace line is an evaluated candidate (not a dropped-rewrite line)."""
    return record.get("kind") != DROPPED
