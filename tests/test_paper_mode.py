"""Paper mode against an independent restatement of the original loop, on scripted worlds: the final prompt,
every level's beam, every input the judge and the optimizer receive, and the calls per role."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from original_loop import run_original
from world import World, field, parse_answer

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.testing import last_user_text, system_text

QUERIES = [f"Training query number {i}: tell me about topic {chr(65 + i)}." for i in range(9)]
ASPECTS = ("Helpfulness", "Clarity")


def scores_of(prompt: str, query: str) -> list[int]:
    """Deterministic scores with variety: some 5/5 (skips), ties, deeper prompts a little better."""
    digest = hashlib.sha256(f"{prompt}|{query}".encode()).digest()
    bonus = min(2, prompt.count("/"))
    return [min(5, 2 + bonus + digest[0] % 2 + (digest[2] % 5 == 0) * 2), min(5, 3 + digest[1] % 3)]


def garbage(prompt: str, query: str) -> bool:
    return hashlib.sha256(f"g|{prompt}|{query}".encode()).digest()[0] % 7 == 0


class PaperWorld(World):
    """The scripted world, reading the original search-time layout and recording the optimizer's evaluation."""

    def _base(self, messages, params):
        system, user = system_text(messages), last_user_text(messages)
        assert system.startswith("# instructions\n\n") and user.endswith("# Answer:\n<START>"), (system, user)
        prompt = system.removeprefix("# instructions\n\n").removesuffix("\n\n")
        query = user.split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]
        self._record("base", prompt=prompt, query=query, params=dict(params))
        return f"ANSWER prompt=<{prompt}> query=<{query}>\n<END>"

    def _optimizer(self, messages, params):
        current = field(messages, "current_system_prompt")
        self._record("optimizer_inputs", current=current, query=field(messages, "query"),
                     response=field(messages, "response"), evaluation=field(messages, "evaluation"),
                     history=field(messages, "prompt_history").split("\n\nRespond with the corresponding")[0],
                     n_index=int(params.get("n_index", 0)),
                     params=dict(params))
        return super()._optimizer(messages, params)


def _original(world_scores, judge_fails, **shape):
    def judge(query, output, aspects):
        prompt, _ = parse_answer(output)
        if judge_fails(prompt, query):
            return {}
        return {a: {"rationale": f"r-{a}", "score": s} for a, s in zip(aspects, world_scores(prompt, query))}

    return run_original(
        QUERIES, "You are a helpful assistant.", answer=lambda p, q: f"ANSWER prompt=<{p}> query=<{q}>",
        select=lambda q: list(ASPECTS), judge=judge,
        optimize=lambda inputs, n: [f"{inputs['current_system_prompt']}/{i}" for i in range(n)], **shape)


@pytest.mark.parametrize("shape", [
    {"beam_size": 2, "n_actions": 3, "depth": 5, "max_depth_increase": 2},
    {"beam_size": 3, "n_actions": 2, "depth": 4, "max_depth_increase": 4},
    {"beam_size": 1, "n_actions": 3, "depth": 6, "max_depth_increase": 1},
])
def test_paper_mode_matches_the_original_loop(shape):
    world = PaperWorld(scores_of, aspects=ASPECTS, judge_garbage=garbage)
    program = DRPO(**world.roles(), **shape, k=0, paper_mode=True, progress=False, num_threads=4,
                   max_errors=None).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    expected = _original(scores_of, garbage, **shape)
    result = program.drpo_result

    assert program.instructions == expected.final_prompt
    assert result.best_path_mean == pytest.approx(expected.final_mean)
    ours = [[c["prompt"] for c in sorted((c for c in lv["candidates"] if c["kept"]),
                                         key=lambda c: -(c["path_mean"] if c["path_mean"] is not None else -1e9))]
            for lv in result.levels]
    assert ours == expected.beams

    sent = [c for c in world.calls["optimizer_inputs"] if c["n_index"] == 0]
    got = Counter(json.dumps({"current_system_prompt": c["current"], "query": c["query"], "response": c["response"],
                              "evaluation": c["evaluation"], "prompt_history": c["history"]}, sort_keys=True)
                  for c in sent)
    want = Counter(json.dumps({k: v.strip() for k, v in inputs.items()}, sort_keys=True)
                   for inputs in expected.optimizer_inputs)
    assert got == want
    assert all(c["params"].get("top_p") == 0.95 and c["params"].get("temperature") == 0.2 for c in sent)

    judged = Counter((c["query"], f"ANSWER prompt=<{c['prompt']}> query=<{c['query']}>") for c in world.calls["judge"])
    assert judged == Counter(expected.judge_inputs)
    calls = {"base": len(world.calls["base"]), "metrics": len(world.calls["metrics"]),
             "judge": len(world.calls["judge"]), "optimizer": len(sent)}
    assert calls == dict(expected.calls)
    assert all(c["params"].get("temperature") == 0.0 and c["params"].get("max_tokens") == 2048
               for c in world.calls["base"])


def test_the_optimizer_history_repeats_carried_prompts_in_paper_mode():
    # The root scores 5/5: its prompt is carried to level 2, so level 3's optimizer sees it twice.
    world = PaperWorld(lambda p, q: [5, 5] if q == QUERIES[0] else [3, 3], aspects=ASPECTS)
    DRPO(**world.roles(), beam_size=1, n_actions=1, depth=3, max_depth_increase=0, k=0, paper_mode=True,
         progress=False).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    history = world.calls["optimizer_inputs"][0]["history"]
    assert history == ("---Version 1---\nYou are a helpful assistant.\n---Current Version---\n"
                       "You are a helpful assistant.")


def test_paper_mode_makes_one_request_per_judgment_even_when_unreadable():
    world = PaperWorld(scores_of, aspects=ASPECTS, judge_garbage=lambda p, q: p.endswith("/1"))
    program = DRPO(**world.roles(), beam_size=2, n_actions=2, depth=3, max_depth_increase=0, k=0, paper_mode=True,
                   progress=False).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    judged = sum(len(lv["candidates"]) for lv in program.drpo_result.levels)
    assert len(world.calls["judge"]) == judged
    failed = [c for lv in program.drpo_result.levels for c in lv["candidates"] if c["judgment"]["failure"]]
    assert failed and all(c["reward"] == 0.0 for c in failed)


def test_paper_mode_refuses_what_the_original_does_not_have():
    world = PaperWorld(scores_of)
    with pytest.raises(ValueError, match="minibatch_size"):
        DRPO(**world.roles(), paper_mode=True, minibatch_size=2)
    with pytest.raises(ValueError, match="proposal_sampling"):
        DRPO(**world.roles(), paper_mode=True, proposal_sampling="independent")
    with pytest.raises(ValueError, match="valset"):
        DRPO(**world.roles(), paper_mode=True, progress=False).compile(
            AlignedResponder(examples=[], k=0), trainset=QUERIES, valset=QUERIES[:2])
    assert world.requests == 0


def test_paper_mode_keeps_rewrites_the_default_filter_drops():
    from drpo_dspy.testing import scripted_lm

    echo = "Answer well and fill in {new_system_prompt}."
    roles = {"base_lm": PaperWorld(scores_of).base_lm,
             "metrics_lm": scripted_lm(lambda m, p: {"query_analysis": "q", "reasoning": "r",
                                                     "selected_aspects": list(ASPECTS), "proposed_aspect": ""}),
             "judge_lm": scripted_lm(lambda m, p: {"evaluations": {a: {"rationale": "r", "score": 3}
                                                                   for a in ASPECTS}}),
             "optimizer_lm": scripted_lm(lambda m, p: {"analysis": "a", "thought": "t", "new_system_prompt": echo})}
    shape = {"beam_size": 1, "n_actions": 1, "depth": 2, "max_depth_increase": 0, "k": 0, "progress": False}
    paper = DRPO(**roles, paper_mode=True, **shape).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    assert paper.instructions == echo
    default_roles = {**roles, "base_lm": World(scores_of).base_lm}
    default = DRPO(**default_roles, **shape).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    assert default.drpo_result.levels[1]["dropped"] == [{"parent_id": 0, "reason": "template_echo_prompt"}]
    assert default.instructions == "You are a helpful assistant."


class CapWorld(World):
    """Records the base model's decoding, whatever the layout (the demo answers use the inference layout)."""

    def _base(self, messages, params):
        self._record("base_params", params=dict(params))
        return super()._base(messages, params)


def test_the_command_lines_answer_cap_holds_in_paper_mode(tmp_path):
    """`drpo optimize --paper-mode --max-tokens 64` caps answers at 64 (without the flag: 2048, as the original)."""
    from drpo_dspy.cli.main import main

    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUERIES[:2]) + "\n")
    for extra, cap in ((["--max-tokens", "64"], 64), ([], 2048)):
        world = CapWorld(scores_of, aspects=ASPECTS)
        flags = [arg for role, lm in (("base", world.base_lm), ("metrics", world.metrics_lm),
                                      ("judge", world.judge_lm), ("optimizer", world.optimizer_lm))
                 for arg in (f"--{role}-model", lm.model)]
        assert main(["optimize", *flags, "--trainset", str(queries), "--paper-mode", "--depth", "2", "--k", "0",
                     "--beam-size", "1", "--n-actions", "1", "--max-depth-increase", "0", "--no-progress",
                     "--log-dir", str(tmp_path / f"run{cap}"), "--demo-query", "demo q", *extra]) == 0
        caps = {c["params"].get("max_tokens") for c in world.calls["base_params"]}
        assert caps == {cap}, extra
