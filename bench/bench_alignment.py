"""Alignment on public benchmarks with judge-free scores: base vs URIAL vs a DRPO-compiled program.

Run (the table in BENCHMARKS.md; embedded SmolLM2-135M, a stratified seeded sample of 150 prompts per set):

    nice python bench/bench_alignment.py --sample 150 --max-tokens 160

Full sets, any model (not run here), e.g. a vLLM server as base and GPT-4o as judge for XSTest's judged refusals:

    python bench/bench_alignment.py --full --max-tokens 1024 --program runs/mistral/program.json \\
        --base-model hosted_vllm/mistralai/Mistral-7B-Instruct-v0.2 --base-api-base http://localhost:8000/v1 \\
        --judge-model openai/gpt-4o --out runs/bench-alignment-mistral --results bench/results/alignment_mistral.json

IFEval is scored by the official checkers (prompt- and instruction-level accuracy, strict and loose), XSTest by its
paper's string match (over-refusal on safe prompts, compliance on unsafe ones) and, with ``--judge-model``, by the
judge's refusal verdict too. Without ``--program`` the script first compiles one with ``drpo optimize --quick``.
Prompts are answered in a seeded shuffled order, in chunks, every system on every chunk, so an interrupted run has
comparable partial numbers; rerunning the same command resumes (answers are kept in ``OUT/eval/records.jsonl``).
``--report-only`` summarises what is finished without answering anything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", default="ifeval,xstest", help="comma-separated benchmark names (default: ifeval,xstest)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--sample", type=int, default=150, help="stratified seeded sample per set (default: 150)")
    size.add_argument("--full", action="store_true", help="every prompt of every set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=160, help="answer length cap (default: 160)")
    p.add_argument("--program", type=Path, help="a compiled program.json (default: compile one with --quick)")
    p.add_argument("--base-model", help="litellm model string (default: embedded/smollm2-135m)")
    p.add_argument("--base-api-base")
    p.add_argument("--base-model-type", choices=["chat", "text"])
    p.add_argument("--judge-model", help="optional judge for XSTest's judged refusal (none by default)")
    p.add_argument("--judge-api-base")
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-alignment")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "alignment.json")
    p.add_argument("--report-only", action="store_true", help="summarise finished answers; answer nothing")
    return p.parse_args(argv)


def make_lm(model: str | None, api_base: str | None = None, model_type: str | None = None, **kwargs: Any) -> Any:
    import dspy

    model = model or "embedded/smollm2-135m"
    if model.startswith("embedded/"):
        from drpo_dspy.clients.embedded import register_embedded_provider

        register_embedded_provider()
        kwargs.setdefault("engine", "litellm")
    if api_base:
        kwargs["api_base"] = api_base
    return dspy.LM(model, model_type=model_type or "chat", temperature=0.0, **kwargs)


def compile_program(args: argparse.Namespace) -> tuple[Path, float | None, list[str] | None]:
    """The program to evaluate: ``--program``, or one compiled (once; reused on reruns) with the quick settings."""
    if args.program:
        return args.program, None, None
    run_dir = args.out / "drpo-quick"
    program = run_dir / "program.json"
    command = ["drpo", "optimize", "--quick", "--seed", str(args.seed), "--log-dir", relative(run_dir),
               "--no-progress"]
    if args.base_model:
        command += ["--base-model", args.base_model]
    if program.is_file():
        summary = run_dir / "summary.json"
        wall = json.loads(summary.read_text(encoding="utf-8")).get("wall_time_s") if summary.is_file() else None
        return program, wall, command
    if args.report_only:
        raise SystemExit(f"no program at {program}: run without --report-only first")
    print("compiling:", " ".join(command), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return program, time.perf_counter() - started, command


def answer_seconds(records_path: Path, keys: set[str]) -> dict[str, float]:
    """Seconds spent answering, per system, over the finished records of this run's prompts."""
    totals: dict[str, float] = {}
    if not records_path.exists():
        return totals
    for line in records_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("key") in keys and record.get("answer_seconds") is not None:
            totals[record["system"]] = totals.get(record["system"], 0.0) + float(record["answer_seconds"])
    return totals


def finished_rows(systems: list[Any], prompts: list[dict], out: Path, judge_id: str | None) -> list[dict]:
    """Rows for the (system, prompt) pairs already saved, without answering anything."""
    from drpo_dspy.evaluation.benchmarks.scoring import judge_scope
    from drpo_dspy.evaluation.runner import RECORDS_FILE, RecordStore, _row, record_key

    store = RecordStore(out / RECORDS_FILE)
    rows = []
    for system in systems:
        for item in prompts:
            record = store.get(record_key(system.identity, item["instruction"], judge_scope(item, judge_id)))
            if record is not None:
                rows.append(_row(system, item, record))
    return rows


def pct(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("rate") is None:
        return "n/a"
    return f"{100 * stat['rate']:.1f} [{100 * stat['ci_low']:.1f}, {100 * stat['ci_high']:.1f}]"


def table(bench: dict[str, Any], systems: list[str], seconds: dict[str, float], counts: dict[str, int],
          empty: dict[str, int]) -> str:
    header = ["System", "IFEval prompt strict", "prompt loose", "instruction strict", "instruction loose",
              "XSTest over-refusal, safe (string match) ↓", "XSTest compliance, unsafe (string match) ↓",
              "answers (empty)", "answer latency, summed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name in systems:
        ife = bench.get("ifeval", {}).get(name, {})
        xs = bench.get("xstest", {}).get(name, {}).get("strmatch", {})
        lines.append("| " + " | ".join([
            name, pct(ife.get("prompt_strict")), pct(ife.get("prompt_loose")), pct(ife.get("instruction_strict")),
            pct(ife.get("instruction_loose")), pct(xs.get("over_refusal_safe")), pct(xs.get("compliance_unsafe")),
            f"{counts.get(name, 0)} ({empty.get(name, 0)})", f"{seconds.get(name, 0.0) / 60:.1f} min"]) + " |")
    return "\n".join(lines)


def effective_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, defaults spelled out."""
    parts = ["nice python bench/bench_alignment.py", "--sets", args.sets]
    parts += ["--full"] if args.full else ["--sample", str(args.sample)]
    parts += ["--seed", str(args.seed), "--max-tokens", str(args.max_tokens)]
    for flag in ("program", "base_model", "base_api_base", "base_model_type", "judge_model", "judge_api_base"):
        if getattr(args, flag):
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return " ".join(parts)


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from drpo_dspy.evaluation import build_systems, evaluate, resolve_eval_set
    from drpo_dspy.evaluation.judging import judge_version

    program, compile_s, compile_cmd = compile_program(args)
    prompts, label = resolve_eval_set(args.sets, sample=None if args.full else args.sample, seed=args.seed)
    base_lm = make_lm(args.base_model, args.base_api_base, args.base_model_type, max_tokens=args.max_tokens)
    judge_lm = make_lm(args.judge_model, args.judge_api_base, max_tokens=1024) if args.judge_model else None
    judge_id = None if judge_lm is None else f"{judge_lm.model}|judge-{judge_version()}"
    systems = build_systems(["base", "urial", f"program:{program}"], base_lm=base_lm, max_tokens=args.max_tokens)
    names = [s.name for s in systems]
    eval_dir = args.out / "eval"
    order = list(range(len(prompts)))
    random.Random(args.seed).shuffle(order)
    started = time.perf_counter()
    if not args.report_only:
        for start in range(0, len(order), CHUNK):
            chunk = [prompts[i] for i in order[start:start + CHUNK]]
            evaluate(systems, chunk, judge_lm=judge_lm, out_dir=eval_dir, num_threads=args.num_threads,
                     write_report=False, eval_set_name=label)
            done = min(start + CHUNK, len(order))
            print(f"{done}/{len(order)} prompts x {len(systems)} systems, "
                  f"{(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr, flush=True)
    rows = finished_rows(systems, prompts, eval_dir, judge_id)
    complete = len(rows) == len(systems) * len(prompts)
    if complete:  # the full report (HTML page with the benchmark section, charts, CSV); every answer is reused
        result = evaluate(systems, prompts, judge_lm=judge_lm, out_dir=eval_dir, eval_set_name=label)
        summary = result.summary
    else:
        from drpo_dspy.evaluation.benchmarks.summary import summarize_benchmarks

        summary = {"benchmarks": summarize_benchmarks(rows, names)}
    seconds = answer_seconds(eval_dir / "records.jsonl", {r["key"] for r in rows})
    counts = {n: sum(1 for r in rows if r["system"] == n) for n in names}
    empty = {n: sum(1 for r in rows if r["system"] == n and not (r.get("answer") or "").strip()) for n in names}
    markdown = table(summary["benchmarks"], names, seconds, counts, empty)
    by_set = {name: sum(1 for p in prompts if p["set"] == name) for name in args.sets.split(",")}
    results = {
        "complete": complete,
        "finished_pairs": len(rows), "total_pairs": len(systems) * len(prompts),
        "settings": {"sets": by_set, "sample_per_set": None if args.full else args.sample,
                     "sampling": "full sets" if args.full else "stratified (IFEval: first instruction id; XSTest: "
                                                              "type), seeded, proportional allocation",
                     "seed": args.seed, "max_tokens": args.max_tokens, "base_model": base_lm.model,
                     "judge_model": judge_lm.model if judge_lm is not None else None,
                     "program": relative(program.resolve()),
                     "systems": {s.name: s.details for s in systems}},
        "commands": {"bench": effective_command(args),
                     "compile": " ".join(compile_cmd) if compile_cmd else None},
        "wall_seconds": {"compile": compile_s, "this_run": round(time.perf_counter() - started, 1),
                         "answering_per_system": {k: round(v, 1) for k, v in seconds.items()}},
        "empty_answers": {n: {name: sum(1 for r in rows if r["system"] == n and r["set"] == name
                                        and not (r.get("answer") or "").strip()) for name in by_set} for n in names},
        "benchmarks": summary["benchmarks"],
        "table_markdown": markdown,
    }
    if args.report_only and args.results.is_file():  # keep the wall time of the run that answered
        previous = json.loads(args.results.read_text(encoding="utf-8")).get("wall_seconds", {})
        results["wall_seconds"]["this_run"] = previous.get("this_run")
        results["wall_seconds"]["rescored"] = True
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown)
    state = "complete" if complete else f"PARTIAL: {len(rows)}/{len(systems) * len(prompts)} answers"
    print(f"{state}; results in {args.results}; report in {eval_dir / 'report.html'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
