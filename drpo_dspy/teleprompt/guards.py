"""Guards against gaming the judge: the pure parts (length control, prompt budget, bullet merging, tie-breaking
within the judge's noise, the held-out split); their settings are ``settings.GuardSettings``.

DRPO maximises one LLM judge's scores on one query per level. Known failure modes, and the guard for each:

- **length bias** (judges prefer longer answers): ``length_control`` removes, within each level, the part of the
  reward that a least-squares line explains by answer length (only when that slope is positive);
- **judge noise**: ``judge_samples`` judges every answer several times (different rollouts, aspect order shuffled)
  and averages; ties within the measured noise (``tie_tolerance`` without repeats) go to the parent's prompt and
  then to the shorter prompt instead of to chance;
- **selection on the training path**: ``holdout`` queries the search never sees re-score the final beam, and the
  prompt chosen is the best there;
- **prompt bloat**: ``max_prompt_tokens`` is told to the optimizer; longer rewrites are dropped and counted;
  duplicate or near-duplicate bullets are merged;
- **over-refusal**: ``refusal_probes`` benign-but-risky queries are answered under each candidate; refusals (a
  lexical pre-check, then a typed judgment) cost reward or reject the candidate (see ``refusal_probes.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from drpo_dspy.teleprompt.settings import GuardSettings


# -- length control ----------------------------------------------------------------------------------------------
def length_adjusted(rewards: Sequence[float | None], lengths: Sequence[int]) -> list[float | None]:
    """Rewards with the judge's length preference removed: minus slope x (length - mean length), where the slope is
    the least-squares fit of reward on answer length over this level's readable rewards (only if positive)."""
    pairs = [(r, n) for r, n in zip(rewards, lengths) if r is not None]
    if len(pairs) < 3:
        return list(rewards)
    mean_n = sum(n for _, n in pairs) / len(pairs)
    mean_r = sum(r for r, _ in pairs) / len(pairs)
    var = sum((n - mean_n) ** 2 for _, n in pairs)
    if var == 0:
        return list(rewards)
    slope = sum((n - mean_n) * (r - mean_r) for r, n in pairs) / var
    if slope <= 0:
        return list(rewards)
    return [None if r is None else min(5.0, max(1.0, r - slope * (n - mean_n))) for r, n in zip(rewards, lengths)]


def answer_tokens(text: str) -> int:
    """A cheap, model-free token count (words and punctuation), for length control and prompt budgets."""
    return len(re.findall(r"\w+|[^\w\s]", text or ""))


# -- prompt budget and bullets -----------------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def merge_duplicate_bullets(prompt: str, threshold: float = 0.85) -> str:
    """The prompt with bullets that repeat an earlier bullet (same words, or a word overlap >= ``threshold``)
    removed; everything else kept as written."""
    kept: list[set[str]] = []
    lines = []
    for line in prompt.splitlines():
        if _BULLET.match(line):
            words = _words(_BULLET.sub("", line))
            if words and any(len(words & k) / len(words | k) >= threshold for k in kept):
                continue
            kept.append(words)
        lines.append(line)
    return "\n".join(lines)


# -- tie-breaking within the noise -------------------------------------------------------------------------------
def rank_within_noise(items: Sequence[Any], mean_of: Any, carried_of: Any, prompt_of: Any,
                      tolerance: float) -> list[Any]:
    """``items`` best first: by path mean, except that items within ``tolerance`` of the best one still in the
    running count as tied, and among tied items the parent's carried prompt wins, then the shorter prompt (the
    simpler one), then the earlier item. With ``tolerance=0`` only exact ties are re-ordered."""
    remaining = list(items)
    ranked: list[Any] = []
    while remaining:
        known = [mean_of(i) for i in remaining if mean_of(i) is not None]
        if not known:
            ranked.extend(remaining)
            break
        top = max(known)
        tied = [i for i in remaining if mean_of(i) is not None and top - mean_of(i) <= tolerance + 1e-12]
        tied.sort(key=lambda i: (0 if carried_of(i) else 1, len(prompt_of(i))))
        ranked.append(tied[0])
        remaining.remove(tied[0])
    return ranked


# -- the held-out split ------------------------------------------------------------------------------------------
AUTO_HOLDOUT = 8


def split_holdout(queries: Sequence[str], holdout: int | None, max_levels: int) -> tuple[list[str], list[str]]:
    """(search queries, held-out queries). ``None``: hold out the last ``AUTO_HOLDOUT`` queries when the trainset
    has room for twice that beyond what the search can use (``max_levels`` queries); ``0``: none; ``n``: the last
    ``n`` (at least one left to search)."""
    queries = list(queries)
    if holdout is None:
        holdout = AUTO_HOLDOUT if len(queries) >= max_levels + 2 * AUTO_HOLDOUT else 0
    if holdout == 0:
        return queries, []
    if holdout >= len(queries):
        raise ValueError(f"holdout={holdout} leaves no training query (the trainset has {len(queries)})")
    return queries[:-holdout], queries[-holdout:]


# -- applying the guards to one level's candidates ----------------------------------------------------------------
class LevelGuards:
    """Adjusts a level's rewards (length control, refusal probes) and gives the tie tolerance for its ranking."""

    def __init__(self, settings: GuardSettings, probe: Any = None):
        self.settings, self.probe = settings, probe
        self._refusals: dict[str, tuple[float | None, list[dict[str, Any]]]] = {}

    def apply(self, children: Sequence[Any]) -> dict[int, dict[str, Any]]:
        """Adjust each child's last reward in place; return per-child records (lengths, raw reward, refusals)."""
        extras = {c.id: {"answer_tokens": answer_tokens(c.response), "raw_reward": c.reward} for c in children}
        if self.settings.length_control:
            adjusted = length_adjusted([c.reward for c in children], [extras[c.id]["answer_tokens"] for c in children])
            for child, reward in zip(children, adjusted):
                if reward is not None:
                    child.rewards[-1] = reward
        if self.probe is not None:
            for child in children:
                rate, records = self._refusal(child.prompt)
                extras[child.id].update(refusal_rate=rate, probes=records)
                if rate is None:
                    continue
                limit = self.settings.max_refusal_rate
                if limit is not None and rate > limit:
                    child.rejected = True
                elif child.reward is not None and rate > 0:
                    child.rewards[-1] = max(1.0, child.reward - self.settings.refusal_penalty * rate)
        for child in children:
            extras[child.id]["rejected"] = bool(getattr(child, "rejected", False))
        return extras

    def _refusal(self, prompt: str) -> tuple[float | None, list[dict[str, Any]]]:
        if prompt not in self._refusals:  # a carried prompt is not probed twice
            self._refusals[prompt] = self.probe.refusal_rate(prompt)
        return self._refusals[prompt]

    def tolerance(self, children: Sequence[Any]) -> float:
        """The tie band: ``tie_tolerance``, or the measured noise of a difference of two rewards when repeated
        judging gives one (sqrt(2) x the mean standard error of this level's rewards), whichever is larger."""
        errors = [c.judgment.spread / math.sqrt(len(c.judgment.samples)) for c in children
                  if c.judgment.spread is not None]
        measured = math.sqrt(2) * sum(errors) / len(errors) if errors else 0.0
        return max(self.settings.tie_tolerance, measured)
