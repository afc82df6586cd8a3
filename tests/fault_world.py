"""The scripted 4-role world of ``world.py`` on faulty providers: any role can fail on command."""

from __future__ import annotations

import re
from typing import Any

from world import World, field, parse_answer

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.testing.fault_injection import FaultPlan, faulty_lm, injector_for

ROLES = ("base", "metrics", "judge", "optimizer")
QUERIES = ["How do tides work?", "Write a haiku about rain.", "Plan a picnic for six.", "Explain compound interest."]


def requested_aspects(messages: list[dict[str, Any]]) -> list[str]:
    """The aspect names listed in a judge request (each rubric starts with ``Name: description``)."""
    return [m.group(1) for m in re.finditer(r"^([A-Z][\w\- ]+): ", field(messages, "aspects"), re.M)]


class FaultWorld(World):
    """World whose judge scores whichever aspects it is asked about (fallback aspects included)."""

    def _judge(self, messages, params):
        response = field(messages, "response")
        if response == "(empty answer)":
            self._record("judge", prompt=None, query=field(messages, "query"))
            scores = [1]
        else:
            prompt, query = parse_answer(response)
            self._record("judge", prompt=prompt, query=query)
            scores = self.scores(prompt, query)
        return {"evaluations": {a: {"rationale": f"r-{a}", "score": scores[i % len(scores)]}
                                for i, a in enumerate(requested_aspects(messages))}}

    def faulty_roles(self, faults: dict[str, FaultPlan] | None = None, *, num_retries: int = 2,
                     api_keys: dict[str, str] | None = None) -> dict[str, Any]:
        """Role LMs answered by this world's scripts, with ``faults[role]`` injected."""
        faults, api_keys = faults or {}, api_keys or {}
        roles = {}
        for role in ROLES:
            extra = {"api_key": api_keys[role]} if role in api_keys else {}
            roles[f"{role}_lm"] = faulty_lm(getattr(self, f"_{role}"), faults=faults.get(role), num_retries=num_retries,
                                           **extra)
        return roles


def scores_by_depth(prompt: str, query: str) -> list[int]:
    """Deeper prompts score better, so the search has something to rank."""
    return [min(5, 2 + prompt.count("/")), 3]


def compile_faulty(faults: dict[str, FaultPlan] | None = None, *, queries=QUERIES, scores=scores_by_depth,
                   num_retries: int = 2, student: AlignedResponder | None = None, **options: Any):
    """Compile with a faulty world; returns (program, world, {role: injector})."""
    world = FaultWorld(scores)
    roles = world.faulty_roles(faults, num_retries=num_retries, api_keys=options.pop("api_keys", None))
    options = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 0, "progress": False, "k": 0,
               "num_threads": 4, "initial_instructions": "P", **options}
    student = student if student is not None else AlignedResponder(examples=[], k=0)
    program = DRPO(**roles, **options).compile(student, trainset=queries)
    return program, world, {role: injector_for(roles[f"{role}_lm"]) for role in ROLES}
