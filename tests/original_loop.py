"""An independent restatement of the original DRPO search loop, for checking paper mode against it.

Written from the original code's control flow (its beam search, world model and search config), with the LMs
replaced by plain functions; it shares no code with drpo_dspy. It records what each role is sent and how many
calls each role gets, so a test can compare a paper-mode run with it call for call.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    prompt: str
    query: str
    output: str
    eval_dict: dict[str, dict[str, Any]]


@dataclass
class OriginalRun:
    final_prompt: str
    final_mean: float
    beams: list[list[str]]  # the prompts kept after each level (level 1: the root)
    optimizer_inputs: list[dict[str, str]] = field(default_factory=list)
    judge_inputs: list[tuple[str, str]] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)


def run_original(queries: list[str], initial: str, *, beam_size: int, n_actions: int, depth: int,
                 max_depth_increase: int, answer: Callable[[str, str], str],
                 select: Callable[[str], list[str]],
                 judge: Callable[[str, str, list[str]], dict[str, dict[str, Any]]],
                 optimize: Callable[[dict[str, str], int], list[str]]) -> OriginalRun:
    """The original search; ``judge`` returns ``{}`` for an unreadable judgment, ``optimize`` the new prompts."""
    run = OriginalRun("", 0.0, [])
    cache: dict[str, list[str]] = {}

    def evaluate(prompt: str, query: str) -> Step:
        if query not in cache:
            run.calls["metrics"] += 1
            cache[query] = select(query)
        run.calls["base"] += 1
        output = answer(prompt, query)
        run.calls["judge"] += 1
        run.judge_inputs.append((query, output))
        return Step(prompt, query, output, judge(query, output, cache[query]))

    def reward(step: Step) -> float:
        if not step.eval_dict:
            return 0.0
        return sum(int(v["score"]) for v in step.eval_dict.values()) / len(step.eval_dict)

    def get_actions(state: list[Step]) -> tuple[bool, list[str]]:
        last = state[-1]
        if not last.eval_dict:
            return True, [last.prompt]
        scores = [int(v["score"]) for v in last.eval_dict.values()]
        if all(s == 5 for s in scores) or sum(scores) / len(scores) > 4.5:
            return True, [last.prompt]
        previous = [s.prompt for s in state][-5:]
        history = "\n".join(f"---Version {i + 1}---\n{p}" for i, p in enumerate(previous[:-1]))
        history += "\n---Current Version---\n" + previous[-1]
        inputs = {"current_system_prompt": last.prompt, "query": last.query, "response": last.output,
                  "evaluation": json.dumps(last.eval_dict, indent=4), "prompt_history": history}
        run.optimizer_inputs.append(inputs)
        run.calls["optimizer"] += 1
        return False, optimize(inputs, n_actions)

    root = [evaluate(initial, queries[0])]
    beam: list[tuple[list[Step], list[float], float]] = [(root, [], 0.0)]
    run.beams.append([initial])
    terminal: list[tuple[list[Step], list[float], float]] = []
    max_depth, world_depth, level = depth, depth, 0
    while level < max_depth + 1:
        new_beam = []
        increased = False
        for state, rewards, mean in beam:
            if len(state) >= world_depth or len(state) >= len(queries):
                terminal.append((state, rewards, mean))
                continue
            wants_more, actions = get_actions(state)
            if wants_more and not increased and max_depth < depth + max_depth_increase:
                max_depth += 1
                world_depth = max_depth
                increased = True
            for action in actions:
                step = evaluate(action, queries[len(state)])
                new_rewards = [*rewards, reward(step)]
                new_beam.append(([*state, step], new_rewards, sum(new_rewards) / len(new_rewards)))
        new_beam.sort(key=lambda item: item[2], reverse=True)
        beam = new_beam[:beam_size]
        if beam:
            run.beams.append([item[0][-1].prompt for item in beam])
        level += 1
    terminal.sort(key=lambda item: item[2], reverse=True)
    best = terminal[0]
    run.final_prompt, run.final_mean = best[0][-1].prompt, best[2]
    return run
