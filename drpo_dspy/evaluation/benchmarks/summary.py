"""Per-benchmark, per-system scores with 95% intervals, and per-category breakdowns.

Rates (accuracies, refusal rates) get Wilson intervals; MT-Bench ratings get Student-t intervals. IFEval's
instruction-level intervals treat instructions as independent although instructions of one prompt share an answer,
so they are somewhat too narrow; the prompt-level intervals have no such issue.

Empty (whitespace-only) answers are counted per benchmark (``n_empty``): IFEval keeps them in every denominator (an
empty answer follows no instruction); XSTest and HarmBench leave them out of the refusal and compliance rates (an
empty answer neither refuses nor complies), so those rates are over the answers that said something; MT-Bench
counts empty turns (``empty_turns``, not rated) apart from the judge's failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drpo_dspy.adapters.answer_checks import EMPTY_FAILURE, is_empty
from drpo_dspy.evaluation.benchmarks.loaders import BENCHMARKS, HARMBENCH, IFEVAL, MTBENCH, XSTEST
from drpo_dspy.evaluation.stats import mean_ci, wilson


def _rate(flags: list[bool]) -> dict[str, Any]:
    return wilson(sum(bool(f) for f in flags), len(flags))


def _n_empty(rows: list[dict[str, Any]]) -> int:
    return sum(1 for r in rows if is_empty(r.get("answer")))


def summarize_ifeval(rows: list[dict[str, Any]]) -> dict[str, Any]:
    instructions = [r for row in rows for r in row["bench"]["instructions"]]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in instructions:
        by_id.setdefault(r["id"], []).append(r)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in instructions:
        by_group.setdefault(r["id"].split(":")[0], []).append(r)
    return {
        "n_prompts": len(rows), "n_instructions": len(instructions), "n_empty": _n_empty(rows),
        "prompt_strict": _rate([row["bench"]["prompt_strict"] for row in rows]),
        "prompt_loose": _rate([row["bench"]["prompt_loose"] for row in rows]),
        "instruction_strict": _rate([r["strict"] for r in instructions]),
        "instruction_loose": _rate([r["loose"] for r in instructions]),
        "checker_errors": sum(1 for r in instructions if r.get("error")),
        "by_instruction": {k: {"strict": _rate([r["strict"] for r in v]), "loose": _rate([r["loose"] for r in v])}
                           for k, v in sorted(by_id.items())},
        "by_group": {k: {"strict": _rate([r["strict"] for r in v]), "loose": _rate([r["loose"] for r in v])}
                     for k, v in sorted(by_group.items())},
    }


def _refusals(rows: list[dict[str, Any]], field: str) -> list[bool]:
    return [bool(r["bench"].get(field)) for r in rows if r["bench"].get(field) is not None]


def summarize_xstest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    safe = [r for r in rows if r["bench"]["label"] == "safe"]
    unsafe = [r for r in rows if r["bench"]["label"] != "safe"]
    out: dict[str, Any] = {"n_prompts": len(rows), "n_safe": len(safe), "n_unsafe": len(unsafe),
                           "n_empty": _n_empty(rows), "n_empty_safe": _n_empty(safe),
                           "n_empty_unsafe": _n_empty(unsafe)}
    for method, field in (("strmatch", "strmatch_refusal"), ("judged", "judged_refusal")):
        out[method] = {
            "over_refusal_safe": _rate(_refusals(safe, field)),
            "compliance_unsafe": _rate([not f for f in _refusals(unsafe, field)]),
        }
    types: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        types.setdefault(r["bench"]["type"], []).append(r)
    out["by_type"] = {t: {"label": v[0]["bench"]["label"], "strmatch_refusal": _rate(_refusals(v, "strmatch_refusal")),
                          "judged_refusal": _rate(_refusals(v, "judged_refusal"))} for t, v in sorted(types.items())}
    return out


def summarize_harmbench(rows: list[dict[str, Any]]) -> dict[str, Any]:
    both = [r for r in rows if r["bench"].get("judged_refusal") is not None]
    categories: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        categories.setdefault(r.get("category") or "?", []).append(r)
    return {
        "n_prompts": len(rows), "n_empty": _n_empty(rows),
        "lexical_refusal": _rate(_refusals(rows, "lexical_refusal")),
        "judged_refusal": _rate(_refusals(rows, "judged_refusal")),
        "agreement": _rate([r["bench"]["lexical_refusal"] == r["bench"]["judged_refusal"] for r in both]),
        "by_category": {c: {"lexical_refusal": _rate(_refusals(v, "lexical_refusal")),
                            "judged_refusal": _rate(_refusals(v, "judged_refusal"))}
                        for c, v in sorted(categories.items())},
    }


def summarize_mtbench(rows: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [t for r in rows for t in r["bench"].get("turns", [])]
    n_turns = max((len(r["bench"].get("turns", [])) for r in rows), default=0)
    categories: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        categories.setdefault(r.get("category") or "?", []).append(r)

    def ratings(rs: list[dict[str, Any]], turn: int | None = None) -> list[int]:
        return [t["rating"] for r in rs for i, t in enumerate(r["bench"].get("turns", []))
                if t.get("rating") is not None and (turn is None or i == turn)]

    return {
        "n_prompts": len(rows),
        "overall": mean_ci(ratings(rows)),
        "per_turn": [mean_ci(ratings(rows, i)) for i in range(n_turns)],
        "judge_failures": sum(1 for t in turns if t.get("failure") and t.get("failure") != EMPTY_FAILURE),
        "empty_turns": sum(1 for t in turns if t.get("failure") == EMPTY_FAILURE),
        "by_category": {c: mean_ci(ratings(v)) for c, v in sorted(categories.items())},
    }


SUMMARIZERS = {IFEVAL: summarize_ifeval, XSTEST: summarize_xstest, HARMBENCH: summarize_harmbench,
               MTBENCH: summarize_mtbench}


def summarize_benchmarks(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    """``{benchmark: {system: scores}}`` for every benchmark present in ``rows`` (answered rows only)."""
    out: dict[str, Any] = {}
    for name in BENCHMARKS:
        mine = [r for r in rows if r.get("set") == name and isinstance(r.get("bench"), dict) and not r.get("error")]
        if not any(r.get("set") == name for r in rows):
            continue
        out[name] = {s: SUMMARIZERS[name]([r for r in mine if r["system"] == s]) for s in systems}
    return out
