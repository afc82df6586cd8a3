"""The search's typed events: their order per level, both callback styles, and a failing callback."""

from __future__ import annotations

import pytest
from world import World

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.primitives.events import (
    BeamSelected,
    BudgetUpdated,
    CandidateJudged,
    LevelFinished,
    LevelStarted,
    SearchStopped,
)

QUERIES = [f"query {i}" for i in range(6)]
SHAPE = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 0, "k": 0, "progress": False,
         "num_threads": 4}


def compile_with(callbacks, **options):
    world = World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3])
    program = DRPO(**world.roles(), **{**SHAPE, **options}, callbacks=callbacks).compile(
        AlignedResponder(examples=[], k=0), trainset=QUERIES)
    return program, world


def test_events_arrive_in_order_and_match_the_levels_record():
    events = []
    program, _ = compile_with([events.append])
    kinds = [type(e) for e in events]
    per_level = []
    for event in events:
        if isinstance(event, LevelStarted):
            per_level.append([])
        per_level[-1].append(type(event))
    assert len(per_level) == program.drpo_result.num_levels == 3
    for level in per_level:
        judged = [k for k in level if k is CandidateJudged]
        assert level[0] is LevelStarted and level[-3:] == [BeamSelected, LevelFinished, BudgetUpdated]
        assert level[1:1 + len(judged)] == judged and judged
    assert SearchStopped not in kinds
    finished = [e for e in events if isinstance(e, LevelFinished)]
    assert [e.record for e in finished] == program.drpo_result.levels
    assert finished[-1].best_prompt == program.instructions
    judged = [e for e in events if isinstance(e, CandidateJudged)]
    assert [e.node["id"] for e in judged] == [c["id"] for lv in program.drpo_result.levels for c in lv["candidates"]]
    budget = [e for e in events if isinstance(e, BudgetUpdated)][-1]
    assert budget.calls == sum(row["lm_calls"] for row in program.drpo_result.usage.values())


def test_object_callbacks_get_their_methods_and_a_failing_callback_does_not_stop_the_run():
    class Watcher:
        def __init__(self):
            self.finished, self.stopped = [], []

        def on_level_finished(self, event):
            self.finished.append(event.level)

        def on_search_stopped(self, event):
            self.stopped.append(event.reason)

    def broken(event):
        raise RuntimeError("a bug in the user's callback")

    watcher = Watcher()
    program, _ = compile_with([broken, watcher], max_calls=12)
    assert watcher.finished == list(range(1, program.drpo_result.num_levels + 1))
    assert watcher.stopped and "max_calls" in watcher.stopped[0]


def test_a_callback_that_is_neither_callable_nor_a_watcher_is_refused():
    with pytest.raises(ValueError, match="callback"):
        DRPO(callbacks=[object()])


def test_event_callbacks_are_not_handed_to_dspys_compile_hooks(caplog):
    """DSPy calls ``on_compile_start``/``on_compile_end`` on ``Teleprompter.callbacks``: a plain function or an event
    watcher passed to DRPO is not such a callback, so no DSPy "Error when calling callback" warning appears; a DSPy
    ``BaseCallback`` passed to DRPO does get DSPy's compile hooks."""
    from dspy.utils.callback import BaseCallback

    class DSPyHooks(BaseCallback):
        def __init__(self):
            self.seen = []

        def on_compile_start(self, call_id, instance, inputs):
            self.seen.append("start")

        def on_compile_end(self, call_id, outputs, exception=None):
            self.seen.append("end")

    hooks, events = DSPyHooks(), []
    with caplog.at_level("WARNING"):
        compile_with([events.append, hooks])
    assert events and hooks.seen == ["start", "end"]
    assert not [r for r in caplog.records if "callback" in r.getMessage().lower()]
