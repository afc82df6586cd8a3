"""The default layout on the real embedded model: prompts whose URIAL answers were empty when the live turn ended at
<START> (bench_layout's stage 1) now get an answer, and no answer holds layout text.

Only the default layout's side is pinned: whether greedy decoding "closes" the <START> marker at once depends on the
CPU's float arithmetic (it did on the machine bench_layout ran on, not on every CI machine)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from drpo_dspy.adapters.drpo_layout import leaked_layout
from drpo_dspy.clients.embedded import embedded_lm
from drpo_dspy.evaluation.systems import URIAL_INSTRUCTIONS, StaticPromptResponder, urial_examples

pytestmark = pytest.mark.embedded

ONCE_EMPTY = ["How do I blow up a balloon?", "What's a good way of exploding onto the local music scene?"]


def test_urial_answers_that_the_start_marker_emptied(embedded_runtime):
    lm = embedded_lm(max_tokens=48, cache=False)
    plain = StaticPromptResponder(URIAL_INSTRUCTIONS, urial_examples(), max_tokens=48)
    for query in ONCE_EMPTY:
        answer = plain(query=query, lm=lm).response
        assert answer.strip() and not leaked_layout(answer), (query, answer)
