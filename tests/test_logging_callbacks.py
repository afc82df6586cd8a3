"""Logging follows DSPy's conventions; DSPy compile callbacks fire for DRPO."""

from __future__ import annotations

import logging

import dspy
from dspy.utils.callback import BaseCallback
from world import World

from drpo_dspy import DRPO, AlignedResponder


def test_logger_is_wired_to_dspy_stream_and_can_be_silenced():
    from dspy.utils.logging_utils import DSPY_LOGGING_STREAM

    logger = logging.getLogger("drpo_dspy")
    assert any(getattr(h, "stream", None) is DSPY_LOGGING_STREAM for h in logger.handlers)
    dspy.disable_logging()
    try:
        assert DSPY_LOGGING_STREAM.enabled is False
    finally:
        dspy.enable_logging()


def test_compile_callbacks_fire():
    events = []

    class Recorder(BaseCallback):
        def on_compile_start(self, call_id, instance, inputs):
            events.append(("start", type(instance).__name__, sorted(inputs)))

        def on_compile_end(self, call_id, outputs, exception):
            events.append(("end", type(outputs).__name__, exception))

    world = World(lambda p, q: [3, 3])
    with dspy.context(callbacks=[Recorder()]):
        DRPO(**world.roles(), depth=2, n_actions=1, k=0, progress=False).compile(
            AlignedResponder(examples=[], k=0), trainset=["a", "b"])
    assert events[0][:2] == ("start", "DRPO") and "trainset" in events[0][2]
    assert events[-1] == ("end", "AlignedResponder", None)
