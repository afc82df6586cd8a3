"""Scripted LMs and fault injection for tests, examples and benchmarks (public, like DSPy's DummyLM).

``scripted_lm(fn)`` is a real ``dspy.LM`` whose completions come from a Python function; ``faulty_lm`` wraps a
script with injected transport and content faults (see ``drpo_dspy.testing.fault_injection``).
"""

from drpo_dspy.testing.scripted import Script, last_user_text, render_fields, scripted_lm, system_text

__all__ = ["Script", "last_user_text", "render_fields", "scripted_lm", "system_text"]
