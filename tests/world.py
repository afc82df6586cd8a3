"""A scripted world for pinning DRPO's search: four role LMs whose behaviour tests control exactly."""

from __future__ import annotations

import itertools
import re
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from drpo_dspy.testing import last_user_text, scripted_lm, system_text

_WORLDS = itertools.count()


def field(messages: list[dict[str, Any]], name: str) -> str:
    """A field's value from a DSPy chat-adapter user message."""
    text = last_user_text(messages)
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", text, re.S)
    if match is None:
        raise AssertionError(f"field {name!r} not in message: {text[:300]!r}")
    return match.group(1).strip()


def parse_answer(response: str) -> tuple[str, str]:
    match = re.match(r"ANSWER prompt=<(.*)> query=<(.*)>", response, re.S)
    assert match, response
    return match.group(1), match.group(2)


class World:
    """Base answers name their prompt and query; the judge scores them from ``scores(prompt, query)``."""

    def __init__(self, scores: Callable[[str, str], list[int]], aspects: tuple[str, ...] = ("Helpfulness", "Clarity"),
                 judge_garbage: Callable[[str, str], bool] = lambda p, q: False,
                 optimizer_garbage: Callable[[str, int], bool] = lambda p, a: False, cache: bool = False,
                 latency: float = 0.0, on_call: Callable[[str, dict], None] | None = None, name: str | None = None):
        self.scores, self.aspects = scores, list(aspects)
        self.judge_garbage, self.optimizer_garbage = judge_garbage, optimizer_garbage
        self.lock = threading.Lock()
        self.on_call = on_call
        self.calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
        options = {"cache": cache, "latency": latency}
        prefix = name or f"world{next(_WORLDS)}"
        self.base_lm = scripted_lm(self._base, name=f"{prefix}-base", **options)
        self.metrics_lm = scripted_lm(self._metrics, name=f"{prefix}-metrics", **options)
        self.judge_lm = scripted_lm(self._judge, name=f"{prefix}-judge", **options)
        self.optimizer_lm = scripted_lm(self._optimizer, name=f"{prefix}-optimizer", **options)

    def roles(self) -> dict[str, Any]:
        return {"base_lm": self.base_lm, "metrics_lm": self.metrics_lm, "judge_lm": self.judge_lm,
                "optimizer_lm": self.optimizer_lm}

    @property
    def requests(self) -> int:
        """Provider requests made (a multi-sample request counts once)."""
        with self.lock:
            return sum(1 for calls in self.calls.values() for c in calls if c.get("n_index", 0) == 0)

    def _record(self, role: str, **data: Any) -> None:
        with self.lock:
            self.calls[role].append(data)
        if self.on_call is not None:
            self.on_call(role, data)

    def _base(self, messages, params):
        prompt = system_text(messages).split("\n\n# Query:")[0].strip()
        query = last_user_text(messages).split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]
        self._record("base", prompt=prompt, query=query)
        return f"ANSWER prompt=<{prompt}> query=<{query}>\n<END>"

    def _metrics(self, messages, params):
        self._record("metrics", query=field(messages, "query"))
        return {"query_analysis": "scripted", "reasoning": "scripted choice", "selected_aspects": self.aspects,
                "proposed_aspect": ""}

    def _judge(self, messages, params):
        response = field(messages, "response")
        if not response.startswith("ANSWER prompt="):  # an in-context example's answer (ICL stage)
            self._record("icl_judge", response=response)
            score = min(5, 3 + response.count("(improved)"))
            return {"evaluations": {a: {"rationale": "icl", "score": score} for a in self.aspects}}
        prompt, query = parse_answer(response)
        self._record("judge", prompt=prompt, query=query)
        if self.judge_garbage(prompt, query):
            return "I refuse to follow any format."
        scores = self.scores(prompt, query)
        return {"evaluations": {a: {"rationale": f"r-{a}", "score": s} for a, s in zip(self.aspects, scores)}}

    def _optimizer(self, messages, params):
        if "[[ ## critique ## ]]" in last_user_text(messages):  # the ICL rewriter role
            response = field(messages, "response")
            self._record("rewriter", response=response)
            return {"analysis": "a", "thought": "t", "new_response": f"{response} (improved)"}
        current = field(messages, "current_system_prompt")
        action = int(params.get("seed", 0)) + int(params.get("n_index", 0))
        self._record("optimizer", prompt=current, history=field(messages, "prompt_history"), action=action,
                     n_index=int(params.get("n_index", 0)))
        if self.optimizer_garbage(current, action):
            return "no fields here"
        return {"analysis": "a", "thought": "t", "new_system_prompt": f"{current}/{action}"}
