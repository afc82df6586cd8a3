"""``drpo optimize-icl``: optimize the answers of an in-context example bank and save it with provenance."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import EMBEDDED, EMBEDDED_MAX_TOKENS, make_lm

ICL_ROLES = ("metrics", "judge", "rewriter")


def add_optimize_icl_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``optimize-icl`` sub-command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    parser = subparsers.add_parser(
        "optimize-icl", help="improve in-context example answers with a strict critic and a rewriter",
        description="Offline ICL optimization: per example, pick 3-6 aspects, judge the answer, then rewrite and "
                    "re-judge it for up to --rounds rounds, keeping the best answer.")
    parser.add_argument("--examples", type=Path,
                        help="examples: .json list or .jsonl of {query, answer}, a saved bank, or the published "
                             "{query: answer} JSON (default: the built-in seed examples)")
    for role in ICL_ROLES:
        parser.add_argument(f"--{role}-model", help=f"litellm model string for the {role} role (default: {EMBEDDED})")
    parser.add_argument("--api-base", help="API base URL for the models (vLLM, Ollama, proxies)")
    parser.add_argument("--max-tokens", type=int,
                        help=f"cap on each completion (default: {EMBEDDED_MAX_TOKENS['rewriter']} for the embedded "
                             "model, else the provider's)")
    parser.add_argument("--rounds", type=int, default=5, help="rewrite rounds per example (5)")
    parser.add_argument("--num-threads", type=int, default=8, help="examples optimized concurrently (8)")
    parser.add_argument("--limit", type=int, help="optimize only the first N examples")
    parser.add_argument("--out", type=Path, help="write the optimized bank (JSON, with provenance) here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--max-calls", type=int, help="hard budget: LM calls across all roles")
    parser.add_argument("--max-total-tokens", type=int, help="hard budget: tokens across all roles")
    parser.add_argument("--max-cost-usd", type=float, help="hard budget: dollars across all roles (litellm prices)")
    parser.add_argument("--max-errors", type=int, default=10, help="errors a role may have before the run stops (10)")
    parser.add_argument("--stop-file", type=Path,
                        help="stop (keeping the best answers so far) when this file appears; Ctrl-C also stops")
    parser.set_defaults(handler=run_optimize_icl)
    return parser


def _records_from_jsonl(path: Path, text: str) -> list[Any]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from exc
    return records


def load_bank(path: Path | None, limit: int | None = None) -> Any:
    """An AlignmentBank from ``path`` (see ``--examples``; default: the built-in seed examples), first ``limit`` only.

    Every example is validated here (markers, empty answers, duplicate queries), before any LM is called.
    """
    from drpo_dspy.retrievers.bank import AlignmentBank
    from drpo_dspy.teleprompt.icl_optimization import bank_like, coerce_example

    if path is None:
        from drpo_dspy.datasets import load_seed_examples

        bank = AlignmentBank([coerce_example(e, i) for i, e in enumerate(load_seed_examples())])
    elif not path.is_file():
        raise FileNotFoundError(f"examples file {path} does not exist")
    else:
        bank = _read_bank(path)
    if limit is not None and limit < len(bank):
        bank = bank_like(bank, bank.examples[:limit])
    return bank


def _read_bank(path: Path) -> Any:
    from drpo_dspy.retrievers.bank import AlignmentBank
    from drpo_dspy.teleprompt.icl_optimization import coerce_example

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    if path.suffix == ".jsonl":
        records = _records_from_jsonl(path, text)
        if records and isinstance(records[0], dict) and "format" in records[0]:  # a bank saved as JSONL
            return AlignmentBank.load(path)
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
            return AlignmentBank.from_published_json(path)
        if isinstance(data, dict) and "examples" in data:
            return AlignmentBank.load(path)
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a list of {{query, answer}} objects, a saved bank, "
                             "or a {query: answer} object")
        records = data
    else:
        raise ValueError(f"{path}: unsupported examples format {path.suffix!r} (use .json or .jsonl)")
    try:
        return AlignmentBank([coerce_example(r, i) for i, r in enumerate(records)])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


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

    if args.rounds < 0:
        raise ValueError(f"--rounds must be >= 0, got {args.rounds}")
    if args.num_threads < 1:
        raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    bank = load_bank(args.examples, args.limit)
    if not len(bank):
        raise ValueError("no examples to optimize")
    lms = dict(lms or {})
    for role in ICL_ROLES:
        if role not in lms:
            cap = {"max_tokens": args.max_tokens} if args.max_tokens else {}
            # the embedded model gets the rewriter's cap (1024) for every ICL role unless --max-tokens says otherwise
            lms[role] = make_lm(getattr(args, f"{role}_model", None), args.api_base, role="rewriter", **cap)
    meter = Meter(FailurePolicy(args.max_errors))
    stop = StopSignal(args.stop_file)
    budget = Budget(meter, max_calls=args.max_calls, max_total_tokens=args.max_total_tokens,
                    max_cost_usd=args.max_cost_usd, stop=stop)
    print(f"ICL optimization: {len(bank)} examples, up to {args.rounds} rounds each; models: "
          + ", ".join(f"{r}={getattr(lms[r], 'model', lms[r])}" for r in ICL_ROLES))
    optimized = optimize_bank(bank, metrics_lm=lms["metrics"], judge_lm=lms["judge"], rewriter_lm=lms["rewriter"],
                              rounds=args.rounds, num_threads=args.num_threads, meter=meter,
                              progress=not args.no_progress, budget=budget)
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
    return 0
