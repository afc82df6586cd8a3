"""The fidelity policy: every behaviour in which paper mode (the original code, observed through the LMs) and the
default mode differ, in one object that the search, the responder and the judge ask instead of testing a flag.

``fidelity(paper_mode)`` gives ``PAPER`` or ``DEFAULT``; docs/fidelity.md explains each difference and why the
default departs from the original.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Fidelity:
    """What a run does where the original code and this package's default differ."""

    name: Literal["paper", "default"]
    original_layout: bool  # the base model's search-time prompt in the original's layout (no conversations)
    single_request: bool  # one request per judge / selector / optimizer call: no JSON retry of an unreadable reply
    judge_wording: Literal["paper", "default"]  # the original's impartial-judge text, or ours (reserve 5, data)
    optimizer_top_p: float | None  # the optimizer's nucleus sampling (None: the provider's default)
    rank_in_generation_order: bool  # rank by path mean alone, ties in generation order (no noise tolerance)
    judge_empty_answers: bool  # an empty answer is judged like any other (default: no answer, no reward)
    unescape_rewrites: bool  # a rewrite's "\\n" written as two characters becomes a newline
    history_with_repeats: bool  # the optimizer sees the path's last prompts, repeats included
    rewrite_filter: bool  # drop rewrites that cannot be a system prompt (when the caller asks for it)
    failures_score_zero: bool  # an unreadable judgment scores 0 and triggers a skip
    answer_max_tokens: int | None  # the base model's cap when none is given (None: the caller's default)
    valset_rescoring: bool  # a held-out set may re-score the final beam
    conversations: bool  # training queries may hold earlier turns
    program_layout: str | None  # the compiled responder's inference layout (None: the student's own)
    returns_unjudged: bool  # the search's best prompt is returned even when no reward was read for it

    @property
    def is_paper(self) -> bool:
        return self.name == "paper"

    def history(self, versions: Sequence[str], trail: Sequence[str]) -> list[str]:
        """The prompts of a path the optimizer is shown: the trail (repeats included) or the distinct versions."""
        return list(trail if self.history_with_repeats else versions)

    def render_history(self, prompts: Sequence[str]) -> str:
        """The prompt history the optimizer reads: oldest first, the last one labelled as the current version."""
        if not prompts:
            return ""
        if self.history_with_repeats:  # the original's layout, repeats included
            earlier = "\n".join(f"---Version {i + 1}---\n{p}" for i, p in enumerate(prompts[:-1]))
            return f"{earlier}\n---Current Version---\n{prompts[-1]}"
        return "\n\n".join(f"## {'Current Version' if i == len(prompts) else f'Version {i}'}\n{p}"
                           for i, p in enumerate(prompts, start=1))

    def render_evaluation(self, judgment: Any) -> str:
        """A judgment's verdicts as the optimizer reads them (the original: the verdict JSON, indented by 4)."""
        if self.is_paper:
            return json.dumps({a: {"rationale": judgment.rationales.get(a, ""), "score": s}
                               for a, s in judgment.scores.items()}, indent=4)
        return judgment.render()

    def shown_response(self, response: str) -> str:
        """An answer as the optimizer reads it: an empty one is named in the default mode."""
        return response or ("" if self.is_paper else "(empty answer)")

    def clean_rewrite(self, text: str | None) -> str | None:
        """A rewrite before the shared clean-up: the original turns escaped newlines into real ones."""
        return (text or "").replace("\\n", "\n") if self.unescape_rewrites else text

    def optimizer_sampling(self, config: dict[str, Any]) -> dict[str, Any]:
        """The optimizer's sampling options with this policy's nucleus sampling."""
        return {**config, "top_p": self.optimizer_top_p} if self.optimizer_top_p is not None else config


PAPER = Fidelity(
    name="paper", original_layout=True, single_request=True, judge_wording="paper", optimizer_top_p=0.95,
    rank_in_generation_order=True, judge_empty_answers=True, unescape_rewrites=True, history_with_repeats=True,
    rewrite_filter=False, failures_score_zero=True, answer_max_tokens=2048, valset_rescoring=False,
    conversations=False, program_layout="marked", returns_unjudged=True,
)
DEFAULT = Fidelity(
    name="default", original_layout=False, single_request=False, judge_wording="default", optimizer_top_p=None,
    rank_in_generation_order=False, judge_empty_answers=False, unescape_rewrites=False, history_with_repeats=False,
    rewrite_filter=True, failures_score_zero=False, answer_max_tokens=None, valset_rescoring=True, conversations=True,
    program_layout=None, returns_unjudged=False,
)


def fidelity(paper_mode: bool) -> Fidelity:
    """The policy of a run: ``PAPER`` when it is to behave as the original code, else ``DEFAULT``."""
    return PAPER if paper_mode else DEFAULT
