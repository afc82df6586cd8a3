"""``drpo optimize-icl``: optimize the answers of an in-context example bank and save it with provenance."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import (
    EMBEDDED,
    EMBEDDED_MAX_TOKENS,
    Interrupted,
    InterruptWatch,
    add_command,
    check_settings,
    make_lm,
    non_negative_int,
    positive_float,
    positive_int,
)
from drpo_dspy.cli.optimize_options import EXAMPLES_HELP

ICL_ROLES = ("metrics", "judge", "rewriter")
DESCRIPTION = """\
Offline ICL optimization, the paper's harsher critic: per example, pick 3-6 aspects, judge the answer, then
rewrite and re-judge it for up to --rounds rounds, keeping the best answer (ties go to the newer one; all-5 scores
stop early). The optimized bank, with every round in its provenance, is written to --out for drpo optimize
--examples.

Ctrl-C stops gracefully: the rounds in flight end at their next call, every example keeps its best answer so far,
--out is still written, and the command exits with 130 (press Ctrl-C again to stop at once, saving nothing)."""
EXAMPLES = """\
  drpo optimize-icl --limit 3 --rounds 2 --out runs/icl-bank.json        # a few examples on the embedded model
  drpo optimize-icl --examples my_examples.jsonl --judge-model openai/gpt-4o --metrics-model openai/gpt-4o \\
      --optimizer-model openai/gpt-4o --max-cost-usd 2 --out runs/icl-bank.json
  drpo optimize --examples runs/icl-bank.json                            # then search with the optimized bank"""


def add_optimize_icl_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``optimize-icl`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = add_command(subparsers, "optimize-icl",
                         help="improve in-context example answers with a strict critic and a rewriter",
                         description=DESCRIPTION, examples=EXAMPLES)
    parser.add_argument("--examples", type=Path, help=EXAMPLES_HELP)
    models = parser.add_argument_group(f"models (any litellm model string; default: {EMBEDDED})")
    models.add_argument("--metrics-model", metavar="MODEL", help="picks the aspects each answer is judged on")
    models.add_argument("--judge-model", metavar="MODEL", help="scores each answer 1-5 per aspect")
    models.add_argument("--optimizer-model", "--rewriter-model", dest="rewriter_model", metavar="MODEL",
                        help="rewrites each answer from the critique (--rewriter-model: the same option, its "
                             "former name)")
    models.add_argument("--api-base", metavar="URL", help="API base URL for the models (vLLM, Ollama, proxies); "
                                                          "URL1,URL2,...: a pool of servers (docs/scale-out.md)")
    parser.add_argument("--max-tokens", type=positive_int,
                        help=f"cap on each completion (default: {EMBEDDED_MAX_TOKENS['rewriter']} for the embedded "
                             "model, else the provider's)")
    parser.add_argument("--rounds", type=non_negative_int, default=5,
                        help="rewrite rounds per example; 0 only judges the seeds (default: 5)")
    parser.add_argument("--num-threads", type=positive_int,
                        help="examples optimized concurrently (default: 8, or 4 per replica of the largest pool, at "
                             "most 64)")
    parser.add_argument("--limit", type=positive_int, help="optimize only the first N examples")
    parser.add_argument("--out", type=Path, help="write the optimized bank (JSON, with provenance) here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--max-calls", type=positive_int, help="hard budget: LM calls across all roles")
    parser.add_argument("--max-total-tokens", type=positive_int, help="hard budget: tokens across all roles")
    parser.add_argument("--max-cost-usd", type=positive_float,
                        help="hard budget: dollars across all roles (litellm prices)")
    parser.add_argument("--max-errors", type=non_negative_int, default=10,
                        help="errors a role may have before the run stops (default: 10)")
    parser.add_argument("--stop-file", type=Path,
                        help="stop (keeping the best answers so far) when this file appears; Ctrl-C also stops")
    parser.set_defaults(handler=run_optimize_icl)
    return parser


def _cell(value: int | None, top: int | None) -> str:
    return "n/a" if value is None else f"{value}/{top}"


def format_table(examples: list[Any]) -> str:
    """A per-example table of the seed (before) and best (after) totals."""
    from drpo_dspy.teleprompt.icl_optimization import optimization_summary

    header = f"{'#':>3}  {'before':>7}  {'after':>7}  {'rounds':>6}  {'fail':>4}  query"
    lines = [header, "-" * len(header)]
    for i, example in enumerate(examples, start=1):
        s = optimization_summary(example)
        query = " ".join(example.query.split())
        query = query if len(query) <= 60 else query[:57] + "..."
        lines.append(f"{i:>3}  {_cell(s['seed_total'], s['max_total']):>7}  {_cell(s['best_total'], s['max_total']):>7}"
                     f"  {s['rounds']:>6}  {s['failures']:>4}  {query}")
    return "\n".join(lines)


def run_optimize_icl(args: argparse.Namespace, *, lms: dict[str, Any] | None = None) -> int:
    """Run ``drpo optimize-icl``; ``lms`` (``{"metrics"|"judge"|"rewriter": LM}``) overrides the model flags."""
    from drpo_dspy.clients.budget import Budget, StopSignal
    from drpo_dspy.clients.failures import FailurePolicy
    from drpo_dspy.clients.metering import Meter
    from drpo_dspy.teleprompt.icl_optimization import optimize_bank

    for flag, value, least in (("--rounds", args.rounds, 0), ("--num-threads", args.num_threads, 1),
                               ("--max-tokens", args.max_tokens, 1), ("--limit", args.limit, 1)):
        if value is not None and value < least:  # argparse checks the flags; this guards calls from code
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    from drpo_dspy.retrievers.bank_loading import load_bank

    bank = load_bank(args.examples, args.limit)
    if not len(bank):
        raise ValueError("no examples to optimize")
    lms = dict(lms or {})
    for role in ICL_ROLES:
        if role not in lms:
            cap = {"max_tokens": args.max_tokens} if args.max_tokens else {}
            # the embedded model gets the rewriter's cap (1024) for every ICL role unless --max-tokens says otherwise
            lms[role] = make_lm(getattr(args, f"{role}_model", None), args.api_base, role="rewriter", **cap)
            check_settings(role, lms[role])  # a missing key or server address: exit 2, before any call
    if args.num_threads is None:
        from drpo_dspy.clients.replica_pool import derived_num_threads

        args.num_threads = derived_num_threads(list(lms.values()), floor=8)
    meter = Meter(FailurePolicy(args.max_errors))
    stop = StopSignal(args.stop_file)
    budget = Budget(meter, max_calls=args.max_calls, max_total_tokens=args.max_total_tokens,
                    max_cost_usd=args.max_cost_usd, stop=stop)
    print(f"ICL optimization: {len(bank)} examples, up to {args.rounds} rounds each; models: "
          + ", ".join(f"{r}={getattr(lms[r], 'model', lms[r])}" for r in ICL_ROLES))
    # The first Ctrl-C asks the rounds in flight to stop at their next call (the best answers so far are kept and
    # saved); a second one quits at once, saving nothing.
    with InterruptWatch(request_stop=lambda: stop.request("interrupted (Ctrl-C)"),
                        quit_message=lambda: "drpo optimize-icl: interrupted; nothing saved") as watch:
        optimized = optimize_bank(bank, metrics_lm=lms["metrics"], judge_lm=lms["judge"],
                                  rewriter_lm=lms["rewriter"], rounds=args.rounds, num_threads=args.num_threads,
                                  meter=meter, progress=not args.no_progress, budget=budget)
    if budget.exhausted:
        print(f"Stopped early: {budget.exhausted} (the answers keep their best version so far)")
    print(format_table(optimized.examples))
    usage = meter.summary()
    print("LM calls per role: " + ", ".join(f"{r}={u['lm_calls']}" for r, u in usage.items()))
    failures = {r: u["failures"] for r, u in usage.items() if u["failures"]}
    if failures:
        print(f"Unreadable or failed outputs: {failures}")
    if args.out:
        optimized.save(args.out)
        print(f"Optimized bank written to {args.out}")
    else:
        print("(not saved: pass --out PATH to write the optimized bank)")
    if watch.pressed:
        raise Interrupted("the answers keep their best version so far" + (f", written to {args.out}" if args.out
                                                                           else ""))
    return 0
