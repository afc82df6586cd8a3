"""Is the judge judging? Signs that its scores say nothing about the answers.

A judge too weak for its prompt (the embedded 135M model, say) still returns well-formed judgments: the same score
for every aspect of every answer, one sentence copied into every rationale, or a number where the reason should
be. Nothing fails, so the report would present those scores as a result. :func:`assess_judge` looks at an
evaluation's judged rows for four signs, each measured over at least :data:`MIN_ANSWERS` judged answers:

- ``single_score``: one system's answers got one score on every aspect of every answer (all 1s, say);
- ``constant_scores``: one system's answers got the same score on each aspect, whatever the answer;
- ``copied_rationale``: the same rationale text recurs on at least half of the judged answers;
- ``numeric_rationales``: at least half of the rationales are empty or only a number (``"1.0"``, ``"4/5"``).

A judge that reads the answers varies its scores or its words across them, so a healthy judge raises none.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

MIN_ANSWERS = 3
"""Fewer judged answers than this prove nothing either way: no sign is reported."""
SHARE = 0.5
"""The share of answers (or rationales) a copied or numeric rationale must reach to be reported."""
_NUMBER_ONLY = re.compile(r"^\s*(?:score\s*[:=]?\s*)?[-+]?\d+(?:\.\d+)?\s*(?:/\s*\d+(?:\.\d+)?)?\s*\.?\s*$", re.I)


def _judged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a complete judgment (scores on the row's aspects, no failure)."""
    out = []
    for row in rows:
        scores = row.get("scores") or {}
        if row.get("failure") or row.get("error") or not scores:
            continue
        aspects = row.get("aspects") or list(scores)
        if all(a in scores for a in aspects):
            out.append(row)
    return out


def _rationales(row: dict[str, Any]) -> list[str]:
    rationales = row.get("rationales") or {}
    return [str(rationales.get(a, "")) for a in (row.get("aspects") or list(row.get("scores") or {}))]


def _score_signs(system: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    values = [(a, s) for row in rows for a, s in (row.get("scores") or {}).items()
              if a in (row.get("aspects") or row.get("scores") or {})]
    distinct = {s for _, s in values}
    if len(distinct) == 1:
        return [{"sign": "single_score", "system": system, "n": len(rows), "score": next(iter(distinct))}]
    per_aspect: dict[str, set[Any]] = {}
    for aspect, score in values:
        per_aspect.setdefault(aspect, set()).add(score)
    if all(len(v) == 1 for v in per_aspect.values()):
        return [{"sign": "constant_scores", "system": system, "n": len(rows),
                 "scores": {a: next(iter(v)) for a, v in per_aspect.items()}}]
    return []


def _rationale_signs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    signs = []
    per_answer = [{" ".join(r.split()).lower() for r in _rationales(row) if r.strip()} for row in rows]
    counts = Counter(text for texts in per_answer for text in texts)
    if counts:
        text, k = counts.most_common(1)[0]
        if k >= MIN_ANSWERS and k >= SHARE * len(rows):
            original = next(r for row in rows for r in _rationales(row) if " ".join(r.split()).lower() == text)
            signs.append({"sign": "copied_rationale", "n": len(rows), "count": k, "rationale": original.strip()})
    every = [r for row in rows for r in _rationales(row)]
    bare = [r for r in every if not r.strip() or _NUMBER_ONLY.match(r)]
    if every and len(bare) >= SHARE * len(every):
        example = next((r.strip() for r in bare if r.strip()), "")
        signs.append({"sign": "numeric_rationales", "n": len(every), "count": len(bare), "example": example})
    return signs


def _message(judge: str, sign: dict[str, Any]) -> str:
    kind = sign["sign"]
    if kind == "single_score":
        return (f"judge {judge} gave {sign['system']} one score, {sign['score']}, on every aspect of all "
                f"{sign['n']} judged answers")
    if kind == "constant_scores":
        scores = ", ".join(f"{a} {s}" for a, s in sign["scores"].items())
        return (f"judge {judge} gave {sign['system']} the same score on each aspect for all {sign['n']} judged "
                f"answers ({scores}), whatever the answer")
    if kind == "copied_rationale":
        text = sign["rationale"] if len(sign["rationale"]) <= 80 else sign["rationale"][:77] + "..."
        return (f"judge {judge} wrote the same rationale for {sign['count']} of {sign['n']} judged answers: "
                f"\"{text}\"")
    what = f"only a number (e.g. \"{sign['example']}\")" if sign["example"] else "empty"
    return f"judge {judge}: {sign['count']} of {sign['n']} rationales are {what}, not a reason"


def assess_judge(rows: list[dict[str, Any]], judge_model: str | None) -> dict[str, Any]:
    """The judge's health over an evaluation's rows: ``{"judge_model", "healthy", "n_judged", "signs",
    "warnings"}``; ``warnings`` are sentences naming the judge, empty for a judge whose scores vary."""
    judge = str(judge_model or "the judge")
    judged = _judged(rows)
    signs: list[dict[str, Any]] = []
    by_system: dict[str, list[dict[str, Any]]] = {}
    for row in judged:
        by_system.setdefault(str(row.get("system")), []).append(row)
    for system, mine in by_system.items():
        if len(mine) >= MIN_ANSWERS:
            signs += _score_signs(system, mine)
    if len(judged) >= MIN_ANSWERS:
        signs += _rationale_signs(judged)
    warnings = [_message(judge, sign) for sign in signs]
    return {"judge_model": judge_model, "healthy": not signs, "n_judged": len(judged), "signs": signs,
            "warnings": warnings}


ADVICE = ("Scores like these do not measure the answers: read a few judgments (judgments.csv), and evaluate with "
          "a stronger judge (--judge-model) before comparing systems.")


def judge_warnings(summary: dict[str, Any]) -> list[str]:
    """The warnings recorded in an evaluation summary (``summary["judge_health"]``), if any."""
    return list((summary.get("judge_health") or {}).get("warnings") or [])
