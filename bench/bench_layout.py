"""Empty, leaked-marker and copied answers per prompt layout × embedded model × system, in one run.

Run (the figures in BENCHMARKS.md; greedy, judge-free, both embedded models, resumable):

    nice python bench/bench_layout.py --per-set 10 --layouts before,open,plain      # stage 1: candidates
    nice python bench/bench_layout.py --per-set 150 --layouts before,open                  # stage 2: before/after

Models: ``embedded/smollm2-135m`` (SmolLM2-135M-Instruct, chat template) and ``embedded/gemma-3-270m``
(Gemma-3-270M base, raw text completion). Systems: ``base`` (the default prompt, zero-shot), ``urial`` (the
URIAL-style prompt with its three fixed examples) and ``retrieved`` (the default prompt with the two nearest of the
package's seed examples, as a compiled program retrieves them); ``--systems retrieved-floor`` adds the same with a
similarity floor (``min_similarity=0.25``: examples less similar are not shown). Prompts: a stratified seeded sample
of IFEval and
XSTest (safe and unsafe in proportion). Layouts:

- ``before``: the layout before this benchmark: the user turn ends at ``<START>``, stops at ``<END>`` only, and
  the answer is the text before the first ``<END>``;
- ``marked``: the same prompt with today's stops and answer reading (derived from ``before``'s raw completions:
  greedy decoding writes the same text up to the first stop, and today's reading cuts at every stop it adds);
- ``open``: the user turn ends at ``# Answer:``, nothing after it;
- ``plain``: ``open`` without any ``<START>``/``<END>`` markers in the examples either (the default layout, chosen
  on these figures).

Rates per cell: empty answers, answers holding layout text (a marker in any spelling, a ``# Query:`` or
``# Answer:`` heading), answers copying a run of 40+ characters from a shown example. Raw completions are kept in
``OUT/records.jsonl`` so a rerun resumes and the rates can be recomputed; ``--report-only`` only summarises.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("embedded/smollm2-135m", "embedded/gemma-3-270m")
SYSTEMS = ("base", "urial", "retrieved")
FLOOR = 0.25  # "retrieved-floor": the seed bank's median top-1 cosine to these prompts is about 0.24
LAYOUT_CHOICES = ("before", "open", "plain")
BEFORE_STOPS = ["<END>", "<END", "<|eot_id|>"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-set", type=int, default=15, help="prompts per set (IFEval, XSTest; default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layouts", default="before,open,plain")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "layout")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "layout.json")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def before_answer(completion: str) -> str:
    """How answers were read before: the text before the first ``<END>``, without a leading ``<START>``."""
    text = completion or ""
    for stop in BEFORE_STOPS:
        if (cut := text.find(stop)) != -1:
            text = text[:cut]
    text = text.strip()
    return text[len("<START>"):].strip() if text.startswith("<START>") else text


def prompts(per_set: int, seed: int) -> list[dict[str, Any]]:
    from drpo_dspy.evaluation.benchmarks.eval_sets import cut
    from drpo_dspy.evaluation.benchmarks.loaders import load_benchmark

    chosen = []
    for name in ("ifeval", "xstest"):
        for p in cut(load_benchmark(name), limit=None, sample=per_set, seed=seed):
            meta = p.get("meta") or {}
            chosen.append({**p, "id": str(meta.get("key", meta.get("id", p["instruction"][:80])))})
    return chosen


def responders() -> dict[str, Any]:
    from drpo_dspy import AlignedResponder
    from drpo_dspy.evaluation import systems

    return {
        "base": systems.StaticPromptResponder(systems.BASE_INSTRUCTIONS, []),
        "urial": systems.StaticPromptResponder(systems.URIAL_INSTRUCTIONS, systems.urial_examples()),
        "retrieved": AlignedResponder(systems.BASE_INSTRUCTIONS, None, k=2),
        "retrieved-floor": AlignedResponder(systems.BASE_INSTRUCTIONS, None, k=2, min_similarity=FLOOR),
    }


def record_key(r: dict[str, Any]) -> tuple:
    return (r["model"], r["layout"], r["system"], r["set"], r["id"])


def answer(lm: Any, responder: Any, layout: str, prompt: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """One raw completion for a prompt under a layout (the responder's own messages and stops)."""
    from drpo_dspy.adapters.drpo_layout import stop_sequences

    query = prompt["instruction"]
    shown_layout = "marked" if layout == "before" else layout
    with responder_lock:
        responder.layout = shown_layout
        messages = responder.messages_for(query)
        shown = [(e.shown_query, e.answer) for e in responder.retrieve(query)]
    stops = BEFORE_STOPS if layout == "before" else stop_sequences()
    started = time.perf_counter()
    completion = lm(messages=messages, stop=stops, max_tokens=max_tokens, temperature=0.0)[0]
    return {"completion": completion if isinstance(completion, str) else completion.get("text", ""),
            "examples": [list(pair) for pair in shown], "seconds": round(time.perf_counter() - started, 2)}


responder_lock = threading.Lock()


def run(args: argparse.Namespace) -> None:
    from drpo_dspy.clients.embedded import embedded_lm
    from drpo_dspy.clients.raw_text import raw_completion_lm

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "records.jsonl"
    done = {record_key(r) for r in read_records(store)}
    chosen = prompts(args.per_set, args.seed)
    systems = {name: r for name, r in responders().items() if name in args.systems.split(",")}
    lock = threading.Lock()
    for model in args.models.split(","):
        lm = embedded_lm(model, cache=False)
        call_lm = raw_completion_lm(lm) if lm.model_type == "text" else lm
        for layout in args.layouts.split(","):
            for system, responder in systems.items():
                todo = [p for p in chosen
                        if (model, layout, system, p["set"], p["id"]) not in done]
                if not todo:
                    continue
                started = time.perf_counter()

                def one(p: dict[str, Any], *, _r: Any = responder, _layout: str = layout, _system: str = system,
                        _model: str = model, _lm: Any = call_lm) -> None:
                    out = answer(_lm, _r, _layout, p, args.max_tokens)
                    row = {"model": _model, "layout": _layout, "system": _system, "set": p["set"], "id": p["id"],
                           "category": p.get("category"), "label": (p.get("meta") or {}).get("label"),
                           "query": p["instruction"], **out}
                    with lock, store.open("a") as f:
                        f.write(json.dumps(row) + "\n")

                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(one, todo))
                print(f"{model} {layout:7} {system:9} {len(todo)} answers in {time.perf_counter() - started:.0f}s",
                      flush=True)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from drpo_dspy.adapters.answer_checks import find_copy
    from drpo_dspy.adapters.drpo_layout import extract_answer, leaked_layout
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault((r["model"], r["layout"], r["system"]), []).append(r)
        if r["layout"] == "before":
            cells.setdefault((r["model"], "marked", r["system"]), []).append(r)
    rows = []
    for (model, layout, system), group in sorted(cells.items()):
        answers = [before_answer(r["completion"]) if layout == "before" else extract_answer(r["completion"])
                   for r in group]  # "marked": before's completions, read as today
        n = len(group)
        empty = sum(not a.strip() for a in answers)
        leaked = sum(leaked_layout(a) for a in answers)
        copied = sum(find_copy(a, [tuple(pair) for pair in r["examples"]], query=r.get("query")) is not None
                     for a, r in zip(answers, group))
        by_set = {}
        for name in ("ifeval", "xstest"):
            sub = [a for a, r in zip(answers, group) if r["set"] == name]
            by_set[name] = {"n": len(sub), "empty": sum(not a.strip() for a in sub)}
        lengths = sorted(len(a) for a in answers)
        rows.append({"model": model, "layout": layout, "system": system, "n": n, "empty": empty,
                     "empty_rate": round(empty / n, 3), "leaked": leaked, "leaked_rate": round(leaked / n, 3),
                     "copied": copied, "copied_rate": round(copied / n, 3),
                     "by_set": by_set, "median_chars": lengths[n // 2],
                     "seconds_per_answer": round(sum(r["seconds"] for r in group) / n, 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bad = [name for name in args.layouts.split(",") if name not in LAYOUT_CHOICES]
    if bad:
        print(f"unknown layouts {bad}; choose from {LAYOUT_CHOICES}", file=sys.stderr)
        return 2
    if not args.report_only:
        run(args)
    rows = summarise(read_records(args.out / "records.jsonl"))
    print(f"{'model':24} {'layout':7} {'system':9} {'n':>4} {'empty':>7} {'leaked':>7} {'copied':>7} {'chars':>6}")
    for r in rows:
        copied = f"{r['copied_rate']:.1%}"
        print(f"{r['model']:24} {r['layout']:7} {r['system']:9} {r['n']:>4} {r['empty_rate']:>7.1%} "
              f"{r['leaked_rate']:>7.1%} {copied:>7} {r['median_chars']:>6}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"command": "python bench/bench_layout.py " + " ".join(argv or sys.argv[1:]),
                                        "max_tokens": args.max_tokens, "seed": args.seed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
