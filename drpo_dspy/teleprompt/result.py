"""What a DRPO compile found: attached to the returned program as ``.drpo_result`` (not saved with it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DRPOResult:
    """The chosen prompt, the best path, the final beam and every level of the search.

    ``levels`` holds one record per level: ``{"level", "queries", "max_depth", "candidates": [{"id", "parent_id",
    "prompt", "carried", "response", "reward", "path_mean", "judgment", "kept"}], "dropped": [{"parent_id",
    "reason"}]}``; ``reward_per_level`` the rewards along the best path (level 1, the root, first). Path means leave
    the root's reward out, as the original code ranks.
    """

    best_prompt: str
    best_path_mean: float | None
    levels: list[dict[str, Any]]
    best_path: list[dict[str, Any]]
    final_beam: list[dict[str, Any]]
    usage: dict[str, Any]
    wall_time_s: float
    stopped: str | None = None
    log_dir: str | None = None
    reward_per_level: list[float | None] = field(default_factory=list)
    validation: list[dict[str, Any]] | None = None  # final-beam prompts re-scored on the valset, best first

    @property
    def num_levels(self) -> int:
        """How many levels were finished."""
        return len(self.levels)
