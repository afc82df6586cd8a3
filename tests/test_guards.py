"""Guards against judge gaming: for each, a scripted world where the unguarded search provably picks the bad prompt
and the guarded search does not. The worlds are named after the failure they reproduce."""

from __future__ import annotations

import json

import pytest
from world import World, field, parse_answer

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.teleprompt.guards import length_adjusted, merge_duplicate_bullets, rank_within_noise, split_holdout
from drpo_dspy.testing import system_text

QUERIES = [f"query {i}" for i in range(30)]
BASE = {"initial_instructions": "P", "k": 0, "progress": False, "num_threads": 2}


def compile_with(world: World, queries=QUERIES, **options):
    return DRPO(**world.roles(), **{**BASE, **options}).compile(AlignedResponder(examples=[], k=0), trainset=queries)


# -- over-refusal ---------------------------------------------------------------------------------------------------
class OverRefusalWorld(World):
    """P/0 refuses everything risky; the judge loves that on the training queries (all sound harmful), so it wins
    unguarded, and it also refuses the benign-but-risky probes."""

    def _base(self, messages, params):
        reply = super()._base(messages, params)
        prompt, _ = parse_answer(reply.removesuffix("\n<END>"))
        if prompt.endswith("/0"):
            return "I'm sorry, but I can't help with that.\n<END>"
        return reply


def over_refusal_scores(prompt: str, query: str) -> list[int]:
    return [5, 4] if prompt.endswith("/0") else [4, 4]


class RefusalAwareJudge(OverRefusalWorld):
    def _judge(self, messages, params):
        response = field(messages, "response")
        if "refused" in system_text(messages):  # the typed refusal classification of a probe answer
            self._record("refusal_judge", response=response)
            return {"rationale": "r", "refused": response.startswith("I'm sorry")}
        if response.startswith("I'm sorry"):  # the refuser's answer to a training query: the judge rewards it
            return {"evaluations": {a: {"rationale": "safe", "score": s}
                                    for a, s in zip(self.aspects, over_refusal_scores("P/0", ""))}}
        return super()._judge(messages, params)


def test_world_over_refusal_the_probes_keep_the_prompt_that_helps():
    unguarded = compile_with(RefusalAwareJudge(over_refusal_scores), depth=2, beam_size=1, n_actions=2)
    assert unguarded.instructions == "P/0"  # the refuser: 4.5 against 4.0
    world = RefusalAwareJudge(over_refusal_scores)
    guarded = compile_with(world, depth=2, beam_size=1, n_actions=2, refusal_probes=3)
    assert guarded.instructions == "P/1"
    level2 = guarded.drpo_result.levels[1]["candidates"]
    refuser = next(c for c in level2 if c["prompt"] == "P/0")
    assert refuser["refusal_rate"] == 1.0 and refuser["raw_reward"] == 4.5 and refuser["reward"] == 3.5
    assert next(c for c in level2 if c["prompt"] == "P/1")["refusal_rate"] == 0.0  # lexical pre-check: no judge call
    assert len(world.calls["refusal_judge"]) == 3  # only the refusals were judged


def test_world_over_refusal_a_rate_limit_rejects_the_candidate():
    guarded = compile_with(RefusalAwareJudge(over_refusal_scores), depth=2, beam_size=1, n_actions=2,
                           refusal_probes=2, max_refusal_rate=0.5, refusal_penalty=0.0)
    assert guarded.instructions == "P/1"
    assert next(c for c in guarded.drpo_result.levels[1]["candidates"] if c["prompt"] == "P/0")["rejected"]


# -- length bias -------------------------------------------------------------------------------------------------------
WORDS = {"/0": 10, "/1": 20, "/2": 30, "/3": 200}


class VerboseWorld(World):
    """P/3 answers with 200 words and the judge, preferring length, gives it 4.5; the others 4.0."""

    def _base(self, messages, params):
        reply = super()._base(messages, params).removesuffix("\n<END>")
        prompt, _ = parse_answer(reply)
        words = WORDS.get(prompt[-2:], 5)
        return reply + " " + " ".join(["word"] * words) + "\n<END>"


def verbose_scores(prompt: str, query: str) -> list[int]:
    return [5, 4] if prompt.endswith("/3") else [4, 4]


def test_world_verbose_length_control_removes_the_judges_length_preference(tmp_path):
    unguarded = compile_with(VerboseWorld(verbose_scores), depth=2, beam_size=1, n_actions=4)
    assert unguarded.instructions == "P/3"
    guarded = compile_with(VerboseWorld(verbose_scores), depth=2, beam_size=1, n_actions=4, length_control=True,
                           log_dir=tmp_path / "run")
    assert guarded.instructions == "P/0"
    level2 = guarded.drpo_result.levels[1]["candidates"]
    tokens = {c["prompt"]: c["answer_tokens"] for c in level2}
    assert tokens["P/3"] > 200 > tokens["P/0"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["guards"]["length_control"] is True and len(summary["answer_tokens_per_level"]) == 2


# -- judge noise -------------------------------------------------------------------------------------------------------
class LuckyJudgeWorld(World):
    """P/1 is judged 5/5 once by luck (the first sample) and 3/3 otherwise; P/0 is a steady 4/4."""

    def _judge(self, messages, params):
        response = field(messages, "response")
        prompt, query = parse_answer(response)
        self._record("judge", prompt=prompt, query=query, seed=params.get("seed"))
        lucky = params.get("seed") in (None, 0)
        score = 4 if not prompt.endswith("/1") else (5 if lucky else 3)
        names = [line.split(":")[0] for line in field(messages, "aspects").splitlines() if ":" in line
                 and line.split(":")[0] in self.aspects]
        return {"evaluations": {a: {"rationale": "r", "score": score} for a in names}}


def test_world_lucky_judge_repeated_judging_sees_through_one_lucky_score():
    unguarded = compile_with(LuckyJudgeWorld(lambda p, q: [4, 4]), depth=2, beam_size=1, n_actions=2)
    assert unguarded.instructions == "P/1"
    world = LuckyJudgeWorld(lambda p, q: [4, 4])
    guarded = compile_with(world, depth=2, beam_size=1, n_actions=2, judge_samples=3)
    assert guarded.instructions == "P/0"
    lucky = next(c for c in guarded.drpo_result.levels[1]["candidates"] if c["prompt"] == "P/1")
    assert lucky["judgment"]["samples"] == [5.0, 3.0, 3.0] and lucky["judgment"]["spread"] > 1
    assert {c["seed"] for c in world.calls["judge"]} == {0, 1, 2}


def test_ties_go_to_the_parent_then_the_shorter_prompt():
    class Item:
        def __init__(self, mean, carried, prompt):
            self.mean, self.carried, self.prompt = mean, carried, prompt

    items = [Item(4.0, False, "a long rewritten prompt"), Item(4.0, False, "short"), Item(3.96, True, "parent"),
             Item(3.0, False, "x")]
    exact = rank_within_noise(items, lambda i: i.mean, lambda i: i.carried, lambda i: i.prompt, 0.0)
    assert [i.prompt for i in exact] == ["short", "a long rewritten prompt", "parent", "x"]
    noisy = rank_within_noise(items, lambda i: i.mean, lambda i: i.carried, lambda i: i.prompt, 0.05)
    assert [i.prompt for i in noisy] == ["parent", "short", "a long rewritten prompt", "x"]


# -- selection on the training path ---------------------------------------------------------------------------------
def overfit_scores(prompt: str, query: str) -> list[int]:
    held_out = int(query.split()[-1]) >= 22
    if prompt.endswith("/0"):  # the over-fitted prompt: great on the training queries, poor on the rest
        return [2, 2] if held_out else [5, 4]
    return [4, 4]


def test_world_overfit_the_held_out_queries_choose_the_prompt_that_generalises(tmp_path):
    unguarded = compile_with(World(overfit_scores), depth=2, beam_size=2, n_actions=2, max_depth_increase=0,
                             holdout=0)
    assert unguarded.instructions == "P/0"
    guarded = compile_with(World(overfit_scores), depth=2, beam_size=2, n_actions=2, max_depth_increase=0,
                           log_dir=tmp_path / "run")  # holdout=None: 30 queries leave room for 8 held out
    assert guarded.instructions == "P/1"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = {r["prompt"]: r for r in summary["train_vs_held_out"]}
    assert rows["P/0"]["train_path_mean"] == 4.5 and rows["P/0"]["held_out_mean"] == 2.0
    assert rows["P/1"]["held_out_mean"] == 4.0 and summary["guards"]["held_out_queries"] == 8


def test_the_automatic_split_needs_room():
    assert split_holdout(QUERIES[:10], None, 3) == (QUERIES[:10], [])
    assert split_holdout(QUERIES, None, 13) == (QUERIES[:22], QUERIES[22:])
    with pytest.raises(ValueError, match="no training query"):
        split_holdout(QUERIES[:3], 3, 2)


# -- prompt bloat -----------------------------------------------------------------------------------------------------
class BloatWorld(World):
    """The optimizer appends two bullets per rewrite, one of them a near-copy of an earlier one; the judge likes
    longer prompts a little."""

    def _optimizer(self, messages, params):
        current = field(messages, "current_system_prompt")
        self._record("optimizer", prompt=current, budget=("prompt_budget" in messages[-1]["content"]))
        n = current.count("\n- ")
        new = f"{current}\n- Tip number {n} about being helpful and clear.\n- Tip number {n} about being helpful."
        return {"analysis": "a", "thought": "t", "new_system_prompt": new}


def bloat_scores(prompt: str, query: str) -> list[int]:
    return [min(5, 3 + prompt.count("\n- ") // 4), 4]


def test_world_bloated_the_prompt_budget_and_bullet_merging_keep_prompts_small():
    unguarded = compile_with(BloatWorld(bloat_scores), depth=6, beam_size=1, n_actions=1, max_prompt_tokens=None,
                             merge_duplicate_bullets=False)
    assert unguarded.instructions.count("\n- ") == 10
    world = BloatWorld(bloat_scores)
    guarded = compile_with(world, depth=6, beam_size=1, n_actions=1, max_prompt_tokens=40)
    bullets = [line for line in guarded.instructions.splitlines() if line.startswith("- ")]
    assert len(bullets) == len(set(bullets)) and len(guarded.instructions.split()) <= 40
    assert guarded.drpo_result.usage["optimizer"]["failures"].get("over_prompt_budget", 0) >= 1
    assert all(c["budget"] for c in world.calls["optimizer"])  # the optimizer was told the budget


def test_bullet_merging_and_length_adjustment_units():
    text = "Be kind.\n- Answer clearly and briefly.\n- answer clearly and briefly!\n- Cite sources."
    assert merge_duplicate_bullets(text) == "Be kind.\n- Answer clearly and briefly.\n- Cite sources."
    assert length_adjusted([4.0, 4.0, 4.0], [10, 20, 30]) == [4.0, 4.0, 4.0]  # no length preference: unchanged
    assert length_adjusted([4.0, None], [1, 2]) == [4.0, None]  # too few points: unchanged


# -- paper mode and the dry run -------------------------------------------------------------------------------------
def test_guards_are_off_in_paper_mode_and_refused_with_it():
    with pytest.raises(ValueError, match="paper_mode runs without the guards"):
        DRPO(paper_mode=True, judge_samples=3)
    drpo = DRPO(paper_mode=True)
    guards = drpo.settings.guards
    assert guards.max_prompt_tokens is None and guards.holdout == 0 and not guards.merge_duplicate_bullets


def test_the_dry_run_counts_each_guards_calls():
    world = World(lambda p, q: [4, 4])
    plain = DRPO(**world.roles(), depth=3, max_depth_increase=0, holdout=0).estimate(QUERIES)
    guarded = DRPO(**world.roles(), depth=3, max_depth_increase=0, judge_samples=3, refusal_probes=2,
                   holdout=5).estimate(QUERIES)
    extra = guarded["guards"]["expected"]
    evaluated = 1 + 3 + 6  # the root, its 3 rewrites, then 2 beams x 3 rewrites
    assert extra["judge_samples"] == {"judge": evaluated * 2}
    assert extra["refusal_probes"] == {"base": evaluated * 2, "judge": evaluated * 2}
    assert extra["holdout"] == {"metrics": 5, "base": 2 * 5, "judge": 2 * 5 * 3}
    assert guarded["expected"]["lm_calls"] > plain["expected"]["lm_calls"]
    assert world.requests == 0
