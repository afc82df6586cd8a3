"""The fidelity policy is the one place that knows paper mode: the search, the responder and the judge ask it."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

from drpo_dspy import DRPO
from drpo_dspy.primitives.fidelity import DEFAULT, PAPER, Fidelity, fidelity
from drpo_dspy.rewards.reward_judge import Judgment
from drpo_dspy.testing import scripted_lm

PACKAGE = Path(__file__).resolve().parents[1] / "drpo_dspy"
FLAG_NAMES = {"paper_mode", "paper_layout"}
# The policy itself, and where it is constructed: DRPO(paper_mode=...) and the saved settings' field.
ALLOWED = {"primitives/fidelity.py", "teleprompt/drpo.py", "teleprompt/settings.py"}


def _flag_uses(tree: ast.AST) -> list[int]:
    """Lines where a paper flag is a name, an attribute, a parameter or a keyword (saved files' keys are strings)."""
    lines = []
    for node in ast.walk(tree):
        name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                else node.arg if isinstance(node, ast.arg | ast.keyword) else None)
        if name in FLAG_NAMES:
            lines.append(node.lineno)
    return lines


def test_only_the_policy_and_its_construction_test_paper_mode():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        lines = _flag_uses(ast.parse(path.read_text(encoding="utf-8")))
        if lines and rel not in ALLOWED:
            found[rel] = lines
    assert found == {}, f"ask the fidelity policy (drpo_dspy/primitives/fidelity.py) instead: {found}"


def test_every_field_of_the_policy_is_a_real_difference():
    for field in dataclasses.fields(Fidelity):
        assert getattr(PAPER, field.name) != getattr(DEFAULT, field.name), field.name
    assert fidelity(True) is PAPER and fidelity(False) is DEFAULT


def test_drpo_and_its_settings_hold_the_policy():
    lm = scripted_lm(lambda messages: "unused")
    paper = DRPO(base_lm=lm, metrics_lm=lm, judge_lm=lm, optimizer_lm=lm, paper_mode=True, progress=False)
    default = DRPO(base_lm=lm, metrics_lm=lm, judge_lm=lm, optimizer_lm=lm, progress=False)
    assert paper.fidelity is PAPER and paper.settings.fidelity is PAPER and paper.paper_mode
    assert default.fidelity is DEFAULT and default.settings.fidelity is DEFAULT and not default.paper_mode
    assert paper.answer_max_tokens == 2048 and default.answer_max_tokens is None
    assert paper.settings.paper_faithful_failures and not paper.settings.rewrite_filter
    assert not default.settings.paper_faithful_failures and default.settings.rewrite_filter


def test_what_the_optimizer_reads_in_each_mode():
    assert PAPER.render_history(["A", "A", "B"]) == "---Version 1---\nA\n---Version 2---\nA\n---Current Version---\nB"
    assert DEFAULT.render_history(["A", "B"]) == "## Version 1\nA\n\n## Current Version\nB"
    assert PAPER.history(["A", "B"], ["A", "A", "B"]) == ["A", "A", "B"]
    assert DEFAULT.history(["A", "B"], ["A", "A", "B"]) == ["A", "B"]
    judgment = Judgment(["Clarity"], {"Clarity": 4}, {"Clarity": "clear"})
    assert json.loads(PAPER.render_evaluation(judgment)) == {"Clarity": {"rationale": "clear", "score": 4}}
    assert PAPER.render_evaluation(judgment).startswith('{\n    "Clarity": {\n        "rationale"')
    assert DEFAULT.render_evaluation(judgment) == judgment.render()
    assert PAPER.shown_response("") == "" and DEFAULT.shown_response("") == "(empty answer)"
    assert PAPER.clean_rewrite("a\\nb") == "a\nb" and DEFAULT.clean_rewrite("a\\nb") == "a\\nb"
    assert PAPER.optimizer_sampling({"temperature": 0.2}) == {"temperature": 0.2, "top_p": 0.95}
    assert DEFAULT.optimizer_sampling({"temperature": 0.2}) == {"temperature": 0.2}


def test_the_default_never_returns_a_prompt_no_reward_was_read_for(tmp_path):
    """The last level's only rewrite gets an unreadable judgment: the default returns the judged seed (and says so in
    the result and summary); paper mode returns the rewrite, as the original does."""
    from world import World

    from drpo_dspy import AlignedResponder

    shape = {"beam_size": 1, "n_actions": 1, "depth": 2, "max_depth_increase": 0, "k": 0, "progress": False}
    world = World(lambda p, q: [3, 4], judge_garbage=lambda p, q: "/" in p)
    program = DRPO(**world.roles(), log_dir=tmp_path / "run", **shape).compile(
        AlignedResponder("Seed.", examples=[], k=0), trainset=["q1", "q2"])
    assert program.instructions == "Seed."
    assert program.drpo_result.best_prompt == "Seed." and program.drpo_result.reward_per_level == [3.5]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_prompt"] == "Seed." and summary["reward_per_level"] == [3.5]
    assert [c["prompt"] for c in program.drpo_result.levels[-1]["candidates"]] == ["Seed./0"]  # it was searched

    world = World(lambda p, q: [3, 4], judge_garbage=lambda p, q: "/" in p)
    paper = DRPO(**world.roles(), paper_mode=True, **shape).compile(
        AlignedResponder("Seed.", examples=[], k=0), trainset=["q1", "q2"])
    assert paper.instructions == "Seed./0" and paper.drpo_result.reward_per_level == [3.5, 0.0]
