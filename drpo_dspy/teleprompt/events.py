"""The search's events, under the public path the docs use; they are defined in :mod:`drpo_dspy.primitives.events`
(a lower room, so that run-directory and tracking listeners can read them without importing the search)."""

from drpo_dspy.primitives.events import (
    BeamSelected,
    BudgetUpdated,
    CandidateDropped,
    CandidateJudged,
    EventBus,
    LevelFinished,
    LevelStarted,
    SearchStopped,
    event_dict,
    method_name,
)

__all__ = ["BeamSelected", "BudgetUpdated", "CandidateDropped", "CandidateJudged", "EventBus", "LevelFinished",
           "LevelStarted", "SearchStopped", "event_dict", "method_name"]
