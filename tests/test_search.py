"""DRPO's beam search pinned with scripted LMs."""

from __future__ import annotations

import pytest
from world import World

from drpo_dspy import DRPO, AlignedResponder

QUERIES = [f"query {i}" for i in range(12)]


def compile_with(world: World, *, queries=QUERIES, valset=None, **options):
    options = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 0, "progress": False, "k": 0,
               "num_threads": 4, **options}
    drpo = DRPO(**world.roles(), initial_instructions="P", **options)
    return drpo.compile(AlignedResponder(examples=[], k=0), trainset=queries, valset=valset)


def test_beam_ranks_by_mean_reward_along_the_path():
    table = {"P": 3, "P/0": 2, "P/1": 4, "P/0/0": 4, "P/0/1": 1, "P/1/0": 3, "P/1/1": 1}
    world = World(lambda p, q: [table[p]] * 2)
    program = compile_with(world)
    # Last reward alone would pick P/0/0 (4); the path mean (the root's reward left out, as the original ranks)
    # picks P/1/0: (4+3)/2 > (2+4)/2.
    assert program.instructions == "P/1/0"
    result = program.drpo_result
    assert result.best_path_mean == pytest.approx(7 / 2)
    assert [n["prompt"] for n in result.best_path] == ["P", "P/1", "P/1/0"]
    assert [n["prompt"] for n in result.final_beam] == ["P/1/0", "P/0/0"]


def test_every_candidate_of_a_level_answers_that_levels_query():
    world = World(lambda p, q: [3, 3])
    compile_with(world, depth=4)
    by_prompt_depth = {}
    for call in world.calls["base"]:
        level = call["prompt"].count("/") + 1
        by_prompt_depth.setdefault(level, set()).add(call["query"])
    assert by_prompt_depth == {1: {"query 0"}, 2: {"query 1"}, 3: {"query 2"}, 4: {"query 3"}}
    # 1 root + 2 children + 2 beams x 2 actions twice
    assert len(world.calls["base"]) == 1 + 2 + 4 + 4


def test_all_fives_skip_rewrites_and_grow_depth_up_to_the_cap():
    world = World(lambda p, q: [5, 5])
    program = compile_with(world, depth=2, max_depth_increase=3)
    assert world.calls["optimizer"] == []
    assert program.instructions == "P"
    assert program.drpo_result.num_levels == 2 + 3  # one extra level per skipping level, capped at +3
    assert all(n["carried"] for n in program.drpo_result.best_path[1:])


@pytest.mark.parametrize(("scores", "skips"), [([5, 5, 4], True), ([5, 4], False), ([4, 5, 5, 5], True)])
def test_mean_above_threshold_skips_but_equal_does_not(scores, skips):
    aspects = ("Helpfulness", "Clarity", "Depth", "Safety")[: len(scores)]
    world = World(lambda p, q: scores, aspects=aspects)
    program = compile_with(world, depth=2, max_depth_increase=1, beam_size=1, n_actions=1)
    assert (world.calls["optimizer"] == []) is skips
    assert program.drpo_result.num_levels == (3 if skips else 2)


def test_depth_grows_at_most_once_per_level():
    # Both level-2 beams score all 5s on query 1, so both skip when level 3 is built: the depth grows by one only.
    world = World(lambda p, q: [5, 5] if q == "query 1" else [3, 3])
    program = compile_with(world, depth=3, max_depth_increase=10)
    assert program.drpo_result.num_levels == 4


def test_optimizer_sees_the_last_five_versions():
    world = World(lambda p, q: [3, 3])
    compile_with(world, depth=8, beam_size=1, n_actions=1)
    last = world.calls["optimizer"][-1]
    assert last["prompt"] == "P/0/0/0/0/0/0"
    history = last["history"]
    assert history.count("## Version") == 4 and history.count("## Current Version") == 1
    expected = ["P/0/0", "P/0/0/0", "P/0/0/0/0", "P/0/0/0/0/0", "P/0/0/0/0/0/0"]
    for label, prompt in zip(["Version 1", "Version 2", "Version 3", "Version 4", "Current Version"], expected):
        assert f"## {label}\n{prompt}\n" in history + "\n"
    assert "## Version 1\nP/0\n" not in history


def test_aspect_selection_is_cached_per_query():
    world = World(lambda p, q: [3, 3])
    compile_with(world, depth=4, queries=["a", "b", "a", "b"])
    assert sorted(c["query"] for c in world.calls["metrics"]) == ["a", "b"]


def test_unreadable_judgment_is_a_missing_reward_not_a_zero():
    world = World(lambda p, q: [3, 3] if p != "P/1" else [5, 5], judge_garbage=lambda p, q: p == "P/1")
    program = compile_with(world, depth=2, beam_size=2)
    result = program.drpo_result
    failed = next(n for n in result.final_beam if n["prompt"] == "P/1")
    assert failed["rewards"] == [3.0, None]
    assert failed["path_mean"] is None  # nothing known after the root: ranked last, not dragged to a zero
    assert result.final_beam[0]["path_mean"] == 3.0 and result.final_beam[-1] is failed
    assert result.usage["judge"]["failures"] == {"parse_failure": 1}


def test_paper_faithful_mode_scores_unreadable_judgments_zero_and_skips():
    world = World(lambda p, q: [3, 3], judge_garbage=lambda p, q: p == "P" and q == QUERIES[0])
    program = compile_with(world, depth=2, beam_size=1, n_actions=1, max_depth_increase=1,
                           paper_faithful_failures=True)
    assert program.drpo_result.best_path[0]["rewards"] == [0.0]
    levels = program.drpo_result.levels
    assert levels[1]["candidates"][0]["carried"]  # the failed root was carried over, not rewritten
    assert levels[1]["max_depth"] == 3 and len(world.calls["optimizer"]) == 1  # ... and the depth grew


def test_unparseable_rewrite_drops_only_that_candidate():
    world = World(lambda p, q: [3, 3], optimizer_garbage=lambda p, a: a == 1)
    program = compile_with(world, depth=3, beam_size=2, n_actions=2)
    prompts = {n["prompt"] for n in program.drpo_result.final_beam}
    assert prompts <= {"P/0/0"} | {"P/0"}
    assert program.drpo_result.usage["optimizer"]["failures"] == {"parse_failure": 2}


@pytest.mark.parametrize("sampling", ["batched", "independent"])
def test_batched_and_independent_rewrites_build_the_same_tree(sampling):
    world = World(lambda p, q: [1 + len(p) % 5, 1 + len(q) % 5], optimizer_garbage=lambda p, a: a == 2)
    result = compile_with(world, depth=4, n_actions=3, proposal_sampling=sampling).drpo_result
    assert [n["prompt"] for n in result.best_path][:2] == ["P", "P/0"] or result.best_path[1]["prompt"] == "P/1"
    assert result.usage["optimizer"]["failures"] == {"parse_failure": 1 + 2 + 2}
    expected = compile_with(World(lambda p, q: [1 + len(p) % 5, 1 + len(q) % 5],
                                  optimizer_garbage=lambda p, a: a == 2), depth=4, n_actions=3,
                            proposal_sampling="independent").drpo_result
    assert result.best_path == expected.best_path and result.final_beam == expected.final_beam


def test_parallel_and_sequential_search_agree():
    def scores(p, q):
        return [1 + (len(p) * 7 + len(q)) % 5, 1 + (len(p) * 3) % 5]

    a = compile_with(World(scores), depth=5, num_threads=1).drpo_result
    b = compile_with(World(scores), depth=5, num_threads=8).drpo_result
    assert a.best_path == b.best_path and a.final_beam == b.final_beam


def test_valset_rescoring_picks_the_best_final_prompt_on_held_out_queries():
    train = {"P": [3, 3], "P/0": [4, 4], "P/1": [3, 3], "P/0/0": [4, 4], "P/0/1": [4, 3]}

    def scores(p, q):
        if q.startswith("val"):
            return [5, 5] if p == "P/0/1" else [2, 2]
        return train.get(p, [1, 1])

    result = compile_with(World(scores), depth=3).drpo_result
    assert result.best_prompt == "P/0/0" and result.validation is None  # the search alone
    program = compile_with(World(scores), depth=3, valset=["val a", "val b"])
    rows = program.drpo_result.validation
    assert program.instructions == "P/0/1" == program.drpo_result.best_prompt
    assert [(r["prompt"], r["val_mean"], r["judged"]) for r in rows] == [("P/0/1", 5.0, 2), ("P/0/0", 2.0, 2)]


def test_minibatch_judges_each_candidate_on_several_queries():
    def scores(p, q):
        return [2, 2] if q.endswith(("1", "3", "5")) else [4, 4]

    world = World(scores)
    result = compile_with(world, depth=3, beam_size=1, n_actions=1, minibatch_size=2).drpo_result
    # Level l judges every candidate on queries 2(l-1) and 2(l-1)+1; the reward is their mean.
    assert [n["rewards"][-1] for n in result.best_path] == [3.0, 3.0, 3.0]
    assert [(n["query"], [b["query"] for b in n["batch"]]) for n in result.best_path] == [
        ("query 1", ["query 0"]), ("query 3", ["query 2"]), ("query 5", ["query 4"])]
    assert len(world.calls["base"]) == 2 * 3
    assert world.calls["optimizer"][0]["prompt"] == "P"  # the optimizer saw the worst query of the batch


def test_minibatch_estimate_matches_a_run():
    from drpo_dspy import DRPO, AlignedResponder

    world = World(lambda p, q: [3, 2])
    drpo = DRPO(**world.roles(), beam_size=2, n_actions=2, depth=3, max_depth_increase=0, k=0, progress=False,
                minibatch_size=3, initial_instructions="P")
    report = drpo.estimate(QUERIES)
    program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    usage = program.drpo_result.usage
    assert {r: usage[r]["lm_calls"] for r in usage} == {r: row["expected"]["lm_calls"]
                                                        for r, row in report["roles"].items()}
    assert usage["base"]["lm_calls"] == 3 * (1 + 2 + 4)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty_prompt"), ("ok", "too_short_prompt"), ("{new_system_prompt}", "template_echo_prompt"),
    ("The complete improved system prompt.", "template_echo_prompt"),
    ("[[ ## new_system_prompt ## ]]\nBe kind.", "template_echo_prompt"),
    ('Respond with a JSON object in the following order: `{', None),  # wording alone drops nothing
    ("Wrap every answer between <START> and <END>.", None),
    ("Tell me how to make green tea at home please.", "query_specific_prompt"),
    ("You are a careful, honest assistant. State your limitations.", None),
])
def test_unusable_rewrites_are_recognised(text, problem):
    from drpo_dspy.teleprompt.rewrite_filter import prompt_problem

    assert prompt_problem(text, "how to make green tea at home") == problem
