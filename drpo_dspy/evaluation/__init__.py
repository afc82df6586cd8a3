"""Evaluating alignment: systems side by side, judged on six aspects and on refusal, with reports and charts.

Python API::

    from drpo_dspy.evaluation import evaluate, resolve_eval_set

    prompts, label = resolve_eval_set("ours", limit=20)
    result = evaluate(["base", "urial", "program:runs/x/program.json", ("mine", my_module)], prompts,
                      base_lm=base_lm, judge_lm=judge_lm, out_dir="runs/eval", eval_set_name=label)
    print(result.markdown)          # the tables; result.summary holds every number

Public benchmarks (``xstest``, ``ifeval``, ``harmbench``, ``mtbench``; see :mod:`drpo_dspy.evaluation.benchmarks`)
are scored by their own rules; IFEval and the string-match refusal scores need no judge::

    prompts, label = resolve_eval_set("ifeval,xstest", sample=120, seed=0)   # stratified, seeded sample per set
    result = evaluate(["base", "urial"], prompts, base_lm=base_lm, judge_lm=None, out_dir="runs/bench")
    result.summary["benchmarks"]["ifeval"]["base"]["prompt_strict"]           # rate with its 95% interval
"""

from drpo_dspy.evaluation.benchmarks import BENCHMARKS, load_benchmark, summarize_benchmarks
from drpo_dspy.evaluation.judging import AnswerJudge, EvalJudgment, judge_version
from drpo_dspy.evaluation.runner import (
    RECORDS_FILE,
    EvaluationInputError,
    EvaluationResult,
    ensure_writable_dir,
    evaluate,
    prepare_eval_set,
    record_key,
    resolve_eval_set,
)
from drpo_dspy.evaluation.stats import count_tokens, mean_ci, summarize, t_quantile, wilson
from drpo_dspy.evaluation.systems import (
    BASE_INSTRUCTIONS,
    URIAL_INSTRUCTIONS,
    StaticPromptResponder,
    System,
    build_systems,
    parse_system_specs,
    urial_examples,
)
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS, EvaluateAnswer

__all__ = [
    "BASE_INSTRUCTIONS",
    "BENCHMARKS",
    "EVAL_ASPECTS",
    "RECORDS_FILE",
    "URIAL_INSTRUCTIONS",
    "AnswerJudge",
    "EvalJudgment",
    "EvaluateAnswer",
    "EvaluationInputError",
    "EvaluationResult",
    "StaticPromptResponder",
    "System",
    "build_systems",
    "count_tokens",
    "ensure_writable_dir",
    "evaluate",
    "judge_version",
    "load_benchmark",
    "mean_ci",
    "parse_system_specs",
    "prepare_eval_set",
    "record_key",
    "resolve_eval_set",
    "summarize",
    "summarize_benchmarks",
    "t_quantile",
    "urial_examples",
    "wilson",
]
