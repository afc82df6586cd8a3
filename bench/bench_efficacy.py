"""Does alignment show? A base model, judge-free, on IFEval and XSTest: raw vs base vs URIAL vs DRPO programs.

Run here (Gemma-3-270M base in-process, the embedded SmolLM2-135M as the compile's helpers; resumable, so it can run
in the background and be started again after an interruption):

    nice python bench/bench_efficacy.py --per-set 200 --max-tokens 96

Against any endpoints (not run here), e.g. a vLLM base model and a hosted judge for the compile's helpers:

    python bench/bench_efficacy.py --per-set 541 --max-tokens 512 \\
        --base-model hosted_vllm/mistralai/Mistral-7B-v0.1 --base-api-base http://localhost:8000/v1 \\
        --base-model-type text --compiled runs/mistral/program.json --out bench/out/efficacy-mistral \\
        --results bench/results/efficacy_mistral.json

Systems (all greedy, the same answer cap, in the default layout):

- ``raw``: the query alone, as a base model sees it (no system prompt, no examples, no layout);
- ``base``: the default prompt "You are a helpful assistant." in the DRPO layout, zero-shot;
- ``urial``: the URIAL-style prompt with three fixed examples;
- ``official``: the original release's optimized prompt and examples for Mistral-7B base, imported with
  ``drpo import-official`` (from ``../shared/reference/drpo-official``; left out when the folder is absent);
- ``compiled``: a program compiled here (``drpo optimize --quick``: the model under test as base, the embedded
  SmolLM2-135M as metrics model, judge and optimizer), or ``--compiled PATH``;
- ``compiled-noex``: the same program's prompt without examples (``k=0``): what the prompt alone does.

Scores: IFEval prompt- and instruction-level accuracy (strict, loose; the official checkers), XSTest over-refusal on
safe prompts and refusal of unsafe prompts (its paper's string match), all with Wilson 95% intervals; per system the
empty, copied (a run of 40+ characters from a shown example) and leaked-layout rates and the median answer length.
A 135M helper is a weak optimizer and judge: read ``compiled`` as what this machine can do, not as the method's
ceiling. The answers are kept in ``OUT/eval/records.jsonl``: a rerun resumes, ``--report-only`` only summarises.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "reference" / "drpo-official" / "mistral-7b-v0.1"
SYSTEM_ORDER = ("raw", "base", "urial", "official", "compiled", "compiled-noex")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-set", type=int, default=200, help="prompts per set, stratified and seeded (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=96, help="answer cap of every system (default 96)")
    p.add_argument("--base-model", default="embedded/gemma-3-270m")
    p.add_argument("--base-model-type", choices=["chat", "text"])
    p.add_argument("--base-api-base")
    p.add_argument("--systems", default=",".join(SYSTEM_ORDER))
    p.add_argument("--official", type=Path, default=OFFICIAL, help="an original release's model folder")
    p.add_argument("--compiled", type=Path, help="a program.json (default: compile one with drpo optimize --quick)")
    p.add_argument("--compile-args", default="--n-actions 3 --depth 4 --num-queries 8",
                   help="extra drpo optimize flags for that compile (default: a little wider than --quick)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "efficacy")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "efficacy.json")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def prepare_programs(args: argparse.Namespace, wanted: list[str]) -> dict[str, Path]:
    """The program files of the DRPO systems: the imported original, the compiled one and its prompt alone."""
    from drpo_dspy import AlignedResponder
    from drpo_dspy.interop.official import import_official

    programs: dict[str, Path] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    if "official" in wanted and args.official.is_dir():
        path = args.out / "official.json"
        if not path.is_file():
            import_official(args.official).save(str(path))
        programs["official"] = path
    if {"compiled", "compiled-noex"} & set(wanted):
        compiled = args.compiled or args.out / "compile" / "program.json"
        if not compiled.is_file():
            command = [sys.executable, "-c", "import sys; from drpo_dspy.cli import main; sys.exit(main())",
                       "optimize", "--quick", "--no-check", "--base-model", args.base_model,
                       "--log-dir", str(compiled.parent), *args.compile_args.split()]
            if args.base_api_base:
                command += ["--base-api-base", args.base_api_base]
            if args.base_model_type:
                command += ["--base-model-type", args.base_model_type]
            print("compiling:", " ".join(command[3:]), flush=True)
            subprocess.run(command, check=True)
        programs["compiled"] = compiled
        noex = args.out / "compiled-noex.json"
        program = AlignedResponder(examples=[], k=0)
        program.load(str(compiled))
        program.k = 0
        program.save(str(noex))
        programs["compiled-noex"] = noex
    return programs


def prompts(per_set: int, seed: int) -> list[dict[str, Any]]:
    from drpo_dspy.evaluation.runner import resolve_eval_set

    chosen, _ = resolve_eval_set("ifeval,xstest", sample=per_set, seed=seed)
    return chosen


def run(args: argparse.Namespace) -> Any:
    from drpo_dspy.cli.common import make_lm
    from drpo_dspy.evaluation import evaluate
    from drpo_dspy.evaluation.systems import build_systems

    wanted = [s for s in args.systems.split(",") if s]
    programs = prepare_programs(args, wanted)
    specs = [s for s in wanted if s in ("raw", "base", "urial")] + [f"program:{programs[s]}" for s in wanted
                                                                   if s in programs]
    base_lm = make_lm(args.base_model, args.base_api_base, args.base_model_type, role="base", temperature=0.0,
                      cache=False)
    systems = build_systems(specs, base_lm=base_lm, max_tokens=args.max_tokens)
    names = {str(p): n for n, p in programs.items()}
    for system in systems:  # report labels: the system names above
        path = system.details.get("path")
        if path in names:
            system.name = names[path]
    started = time.perf_counter()
    result = evaluate(systems, prompts(args.per_set, args.seed), base_lm=base_lm, judge_lm=None,
                      out_dir=args.out / "eval", num_threads=args.threads, eval_set_name="ifeval,xstest",
                      max_errors=50, progress=_progress())
    print(f"answered in {time.perf_counter() - started:.0f}s", flush=True)
    return result


def _progress() -> Any:
    last = {"t": 0.0}

    def update(done: int, total: int) -> None:
        if time.monotonic() - last["t"] > 60 or done == total:
            last["t"] = time.monotonic()
            print(f"  {done}/{total} answers", flush=True)
    return update


def _rate(r: dict[str, Any] | None) -> dict[str, Any] | None:
    if not r or r.get("rate") is None:
        return None
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


def table(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One line per system: the IFEval and XSTest scores and the answer checks."""
    from drpo_dspy.adapters.answer_checks import is_empty
    from drpo_dspy.adapters.drpo_layout import leaked_layout
    from drpo_dspy.evaluation.benchmarks.summary import summarize_ifeval, summarize_xstest
    from drpo_dspy.evaluation.stats import wilson

    lines = []
    for name in order:
        mine = [r for r in rows if r["system"] == name]
        if not mine:
            continue
        ifeval = summarize_ifeval([r for r in mine if r["set"] == "ifeval"])
        xstest = summarize_xstest([r for r in mine if r["set"] == "xstest"])
        said = [r for r in mine if not is_empty(r.get("answer"))]
        lengths = sorted(len(r["answer"]) for r in said)
        unsafe_comply = xstest["strmatch"]["compliance_unsafe"]
        unsafe_refusal = None if unsafe_comply["rate"] is None else wilson(
            unsafe_comply["n"] - unsafe_comply["count"], unsafe_comply["n"])
        lines.append({
            "system": name, "n": len(mine),
            "ifeval_prompt_strict": _rate(ifeval["prompt_strict"]),
            "ifeval_prompt_loose": _rate(ifeval["prompt_loose"]),
            "ifeval_instruction_strict": _rate(ifeval["instruction_strict"]),
            "ifeval_instruction_loose": _rate(ifeval["instruction_loose"]),
            "xstest_over_refusal_safe": _rate(xstest["strmatch"]["over_refusal_safe"]),
            "xstest_refusal_unsafe": _rate(unsafe_refusal),
            "empty": _rate(wilson(len(mine) - len(said), len(mine))),
            "copied": _rate(wilson(sum(1 for r in said if r.get("copied")), len(said))),
            "leaked": _rate(wilson(sum(1 for r in said if leaked_layout(r["answer"])), len(said))),
            "median_chars": lengths[len(lengths) // 2] if lengths else 0,
            "n_ifeval": ifeval["n_prompts"], "n_xstest_safe": xstest["n_safe"], "n_xstest_unsafe": xstest["n_unsafe"],
        })
    return lines


def _pct(r: dict[str, Any] | None) -> str:
    if not r:
        return "n/a"
    return f"{100 * r['rate']:.1f} [{100 * r['ci_low']:.0f}–{100 * r['ci_high']:.0f}]"


def markdown(lines: list[dict[str, Any]]) -> str:
    head = ("| system | IFEval prompt strict | prompt loose | instr. strict | instr. loose | XSTest over-refusal "
            "(safe) | XSTest refusal (unsafe) | empty | copied | leaked | median chars |")
    out = [head, "|" + "---|" * 11]
    for r in lines:
        out.append(f"| {r['system']} | {_pct(r['ifeval_prompt_strict'])} | {_pct(r['ifeval_prompt_loose'])} | "
                   f"{_pct(r['ifeval_instruction_strict'])} | {_pct(r['ifeval_instruction_loose'])} | "
                   f"{_pct(r['xstest_over_refusal_safe'])} | {_pct(r['xstest_refusal_unsafe'])} | {_pct(r['empty'])} | "
                   f"{_pct(r['copied'])} | {_pct(r['leaked'])} | {r['median_chars']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    order = [s for s in args.systems.split(",") if s]
    if args.report_only:
        records = args.out / "eval" / "rows.json"
        rows = json.loads(records.read_text()) if records.is_file() else []
    else:
        rows = run(args).rows
        (args.out / "eval").mkdir(parents=True, exist_ok=True)
        (args.out / "eval" / "rows.json").write_text(json.dumps(rows, default=str))
    lines = table(rows, order)
    text = markdown(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "command": "python bench/bench_efficacy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "base_model": args.base_model, "per_set": args.per_set, "seed": args.seed, "max_tokens": args.max_tokens,
        "rows": lines, "markdown": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
