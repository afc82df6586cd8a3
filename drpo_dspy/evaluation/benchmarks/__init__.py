"""Public benchmarks as evaluation sets, scored by their own rules where they have them.

Bundled (verbatim, with LICENSE files and a NOTICE): XSTest (over-refusal), IFEval (verifiable instruction
following), HarmBench text behaviours (refusal of harmful requests; without the contextual rows' third-party text)
and MT-Bench (two-turn chat). ``resolve_eval_set("ifeval")`` and friends return prompts that
:func:`drpo_dspy.evaluation.evaluate` scores with the benchmark's scorer: the official IFEval checkers, XSTest's and
HarmBench's string matching, and the judge where the benchmark needs one (MT-Bench ratings, judged refusals).
"""

from drpo_dspy.evaluation.benchmarks.eval_sets import ALL, ALL_BENCHMARKS, OURS, set_names
from drpo_dspy.evaluation.benchmarks.loaders import (
    BENCHMARKS,
    HARMBENCH,
    IFEVAL,
    MTBENCH,
    XSTEST,
    BenchmarkFormatError,
    data_path,
    load_benchmark,
    load_hf_dataset,
    read_benchmark_file,
)
from drpo_dspy.evaluation.benchmarks.refusal import (
    harmbench_lexical_refusal,
    xstest_strmatch_label,
    xstest_strmatch_refusal,
)
from drpo_dspy.evaluation.benchmarks.sampling import stratified_sample
from drpo_dspy.evaluation.benchmarks.scoring import judge_free_scores
from drpo_dspy.evaluation.benchmarks.summary import summarize_benchmarks

__all__ = [
    "ALL",
    "ALL_BENCHMARKS",
    "BENCHMARKS",
    "HARMBENCH",
    "IFEVAL",
    "MTBENCH",
    "OURS",
    "XSTEST",
    "BenchmarkFormatError",
    "data_path",
    "harmbench_lexical_refusal",
    "judge_free_scores",
    "load_benchmark",
    "load_hf_dataset",
    "read_benchmark_file",
    "set_names",
    "stratified_sample",
    "summarize_benchmarks",
    "xstest_strmatch_label",
    "xstest_strmatch_refusal",
]
