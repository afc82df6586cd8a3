"""``drpo evaluate``: compare systems on an evaluation set with a judge, and write the reports.

Wire it into a parent parser with ``add_evaluate_parser(subparsers)``; the subcommand's handler is
``run_evaluate(args) -> int`` (also set as ``args.func``).

Keys: each role reads its provider's usual environment variable (``OPENAI_API_KEY``, ``HOSTED_VLLM_API_KEY``, ...,
as litellm does), or takes ``--base-api-key`` / ``--judge-api-key``. A key given either way is sent to its provider
only: it is never printed, logged or written (``summary.json``, the records and the reports hold the model string
and secret-free settings, and every text written passes the redactor, which knows the keys of both roles). Prefer
the environment: a flag's value can be seen in the shell history and by ``ps``.

Exit status (the scheme of every ``drpo`` command, :mod:`drpo_dspy.cli.common`): 0 done (or stopped by a budget:
run again to finish), 1 a runtime failure, 2 bad input (before any LM call), 3 a role cannot work
(``SystemicFailure``: bad key, unknown model, or every call failing, e.g. no server), 130 interrupted. The answers
finished before a stop are saved in the output directory, so the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import (
    EMBEDDED,
    add_command,
    check_settings,
    make_lm,
    non_negative_int,
    positive_float,
    positive_int,
    replica_lines,
    run_reporting_errors,
)

DEFAULT_MAX_TOKENS = 512
DEFAULT_JUDGE_MAX_TOKENS = 1024
PROG = "drpo evaluate"
EXAMPLES = """\
  drpo evaluate --eval-set ifeval --limit 20 --no-judge       # judge-free: IFEval's checkers, embedded model
  drpo evaluate --systems base,urial,program:runs/<timestamp>/program.json --eval-set regular --limit 10
  drpo evaluate --systems base,program:aligned.json --eval-set benchmarks --sample 50 \\
      --base-model hosted_vllm/mistralai/Mistral-7B-v0.1 --base-api-base http://localhost:8000/v1 \\
      --base-model-type text --judge-model openai/gpt-4o --max-cost-usd 5 --out runs/eval-mistral"""


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = add_command(
        subparsers, "evaluate", help="judge systems side by side on an evaluation set (six aspects, refusals, charts)",
        description="Answer every prompt of an evaluation set with each system, judge every answer on six aspects "
                    "(helpfulness, clarity, factuality, depth, engagement, safety) and on refusal, and write JSON, "
                    "CSV, Markdown, PNG charts and a self-contained HTML report. Re-running with the same --out "
                    "resumes: finished judgments are not paid for again.", examples=EXAMPLES,
        usage="drpo evaluate [options]")
    p.add_argument("--systems", default="base,urial",
                   help="comma-separated: raw (the query alone, no system prompt, no layout: what a base model "
                        "sees untouched), base (the default prompt 'You are a helpful assistant.', zero-shot, in the "
                        "DRPO layout), urial (a static URIAL-style prompt with 3 fixed examples), program:PATH (a "
                        "program.json from drpo optimize or drpo import-official; --max-tokens replaces its own "
                        "cap); default: base,urial")
    p.add_argument("--eval-set", default="regular",
                   help="our sets: regular | harmful | benign_risky | ours (the three); public benchmarks, bundled: "
                        "xstest | ifeval | harmbench | mtbench | benchmarks (the four); all (everything); "
                        "just-eval (just-eval-instruct, the DRPO/URIAL papers' set, from the Hugging Face hub: not "
                        "bundled, research-only; judged on five aspects for regular prompts, safety for safety ones); "
                        "or a comma-separated list of these; or PATH: a file in a benchmark's own format "
                        "(XSTest/HarmBench CSV, IFEval/MT-Bench/just-eval JSONL) or JSONL with one "
                        "{\"instruction\": ...} per line; or "
                        "hf:OWNER/NAME[:SPLIT] (a Hugging Face dataset in a benchmark's format; needs network). "
                        "IFEval is scored by its official checkers, XSTest and HarmBench also by string match; "
                        "default: regular")
    p.add_argument("--limit", type=positive_int, help="only the first N prompts of each named set")
    p.add_argument("--sample", type=positive_int, help="a stratified, seeded sample of N prompts of each named set")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of --sample (0)")
    p.add_argument("--no-judge", action="store_true",
                   help="judge-free scores only (IFEval, XSTest and HarmBench string match); no judge model")
    p.add_argument("--base-model", help=f"litellm model string the systems answer with (default: {EMBEDDED})")
    p.add_argument("--base-api-base", help="API base URL for the base model (vLLM, Ollama, proxies); URL1,URL2,...: "
                                           "a pool of servers of the same model (docs/scale-out.md)")
    p.add_argument("--base-router", metavar="FILE", help="a litellm Router configuration (YAML/JSON: model_list, "
                                                          "routing_strategy) serving the base model from a pool")
    p.add_argument("--base-model-type", choices=["chat", "text"], default=None,
                   help="'text' for base (non-chat) models served by text completion")
    p.add_argument("--base-api-key", help="API key of the base model (default: the provider's environment variable, "
                                          "e.g. OPENAI_API_KEY or HOSTED_VLLM_API_KEY, which keeps it out of the "
                                          "shell history); never printed or saved")
    p.add_argument("--judge-model", help=f"litellm model string for the judge (default: {EMBEDDED})")
    p.add_argument("--judge-api-base", help="API base URL for the judge model; URL1,URL2,...: a pool")
    p.add_argument("--judge-router", metavar="FILE", help="a litellm Router configuration serving the judge")
    p.add_argument("--judge-api-key", help="API key of the judge model (default: the provider's environment "
                                           "variable); never printed or saved")
    p.add_argument("--out", type=Path, help="output directory (default: runs/eval-<eval set>); reuse it to resume")
    p.add_argument("--num-threads", type=positive_int,
                   help="concurrent (system, prompt) pairs (default: 4, or 4 per replica of the largest pool, at most "
                        "64)")
    p.add_argument("--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS,
                   help=f"cap on each system's answer length (default: {DEFAULT_MAX_TOKENS})")
    p.add_argument("--judge-max-tokens", type=positive_int, default=DEFAULT_JUDGE_MAX_TOKENS,
                   help=f"cap on each judgment's length (default: {DEFAULT_JUDGE_MAX_TOKENS})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--max-calls", type=positive_int, help="hard budget: LM calls (answers and judgments)")
    p.add_argument("--max-total-tokens", type=positive_int, help="hard budget: tokens across answers and judgments")
    p.add_argument("--max-cost-usd", type=positive_float, help="hard budget: dollars (litellm prices)")
    p.add_argument("--max-errors", type=non_negative_int, default=10,
                   help="errors a role may have before the run stops (10)")
    p.add_argument("--stop-file", type=Path, help="stop starting new answers when this file appears (resume later)")
    p.set_defaults(handler=run_evaluate, func=run_evaluate)
    return p


def _key(value: str | None) -> dict[str, str]:
    """``{"api_key": value}`` for a key given on the command line, else nothing (the provider's environment)."""
    if value is not None and not value.strip():
        raise ValueError("an API key option was given an empty value")
    return {"api_key": value} if value else {}


def _positive(name: str, value: Any) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def _progress_bar(total_hint: bool):
    if not total_hint:
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc="evaluate", unit="answer", file=sys.stderr, leave=False)
        bar["bar"].update(done - bar["bar"].n)

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return update, close


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``drpo evaluate``; returns the exit status (2 for bad input, reported before any LM call; see the module
    docstring), with errors reported as ``drpo evaluate: error: ...``."""
    return run_reporting_errors(lambda: _run_evaluate(args), prog=PROG, hint=lambda: getattr(args, "resume_hint", None))


def _run_evaluate(args: argparse.Namespace) -> int:
    # Input checks first: nothing below them is allowed to call a model.
    for name in ("limit", "sample", "num_threads", "max_tokens", "judge_max_tokens", "max_calls",
                 "max_total_tokens"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name, None))  # argparse checks the flags too

    from drpo_dspy.evaluation.runner import ensure_writable_dir, evaluate, resolve_eval_set
    from drpo_dspy.evaluation.systems import build_systems, parse_system_specs

    specs = parse_system_specs(args.systems)
    prompts, label = resolve_eval_set(args.eval_set, limit=args.limit, sample=args.sample, seed=args.seed)
    if not prompts:
        raise ValueError(f"evaluation set {args.eval_set} is empty: nothing to evaluate")
    out = ensure_writable_dir(args.out or Path("runs") / f"eval-{Path(label).stem}")
    for flag in ("base_router", "judge_router"):
        if getattr(args, flag, None) and not Path(getattr(args, flag)).is_file():
            raise FileNotFoundError(f"--{flag.replace('_', '-')} {getattr(args, flag)} does not exist")
    base_lm = make_lm(args.base_model, args.base_api_base, args.base_model_type, role="base", temperature=0.0,
                      router=getattr(args, "base_router", None), **_key(getattr(args, "base_api_key", None)))
    judge_lm = None if args.no_judge else make_lm(args.judge_model, args.judge_api_base, role="judge",
                                                  temperature=0.0, max_tokens=args.judge_max_tokens,
                                                  router=getattr(args, "judge_router", None),
                                                  **_key(getattr(args, "judge_api_key", None)))
    if getattr(args, "num_threads", None) is None:
        from drpo_dspy.clients.replica_pool import derived_num_threads

        args.num_threads = derived_num_threads([base_lm, judge_lm], floor=4)
    for role, lm in (("base", base_lm), ("judge", judge_lm)):
        if lm is not None:
            check_settings(role, lm)  # a missing key or server address: exit 2, before any call
    systems = build_systems(specs, base_lm=base_lm, max_tokens=args.max_tokens)

    judge_name = judge_lm.model if judge_lm is not None else "none (judge-free scores)"
    print(f"Evaluating {', '.join(s.name for s in systems)} on {label} ({len(prompts)} prompts); "
          f"base model {base_lm.model}, judge {judge_name}; answers capped at {args.max_tokens} tokens for every "
          f"system (--max-tokens); output {out}", file=sys.stderr)
    args.resume_hint = (f"answers and judgments finished before the stop are saved in {out}; fix the cause if any, "
                        "then run the same command to resume.")
    update, close = _progress_bar(not args.no_progress)
    try:
        result = evaluate(systems, prompts, judge_lm=judge_lm, out_dir=out, num_threads=args.num_threads,
                          progress=update, eval_set_name=label, max_calls=args.max_calls,
                          max_total_tokens=args.max_total_tokens, max_cost_usd=args.max_cost_usd,
                          max_errors=args.max_errors, stop_file=args.stop_file)
    finally:
        if close is not None:
            close()
    print(result.markdown)
    usage = result.usage
    calls = ", ".join(f"{role}={row['lm_calls']}" for role, row in usage.items()) or "none"
    print(f"Reused {result.reused} finished judgments, computed {result.computed}; LM calls this run: {calls}.",
          file=sys.stderr)
    for line in replica_lines(usage):
        print(line, file=sys.stderr)
    print(f"Report: {out / 'report.html'}  (also report.md, summary.json, *.csv, *.png, records.jsonl)",
          file=sys.stderr)
    if result.stopped:
        print(f"Stopped early: {result.stopped}; run the same command again to finish.", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m drpo_dspy.cli.evaluate evaluate ...``); ``drpo evaluate`` is the same."""
    parser = argparse.ArgumentParser(prog="drpo")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
