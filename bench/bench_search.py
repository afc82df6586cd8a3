"""Compile wall time with simulated API latency: parallel vs sequential vs the critical-path bound; and LM requests
against what the original algorithm makes for the same search, counted by an independent restatement of the
original loop (``tests/original_loop.py``, which shares no code with drpo_dspy) run on the same scripted world.

Run: python bench/bench_search.py [--latency 0.2] [--depth 10] [--beam 2] [--actions 3]

Every role is a scripted litellm provider that sleeps ``latency`` seconds per call, so the numbers measure the
search's scheduling, not a model. Within a level the longest chain of dependent calls is three (rewrite, answer,
judge; at level 1 aspect selection, answer, judge), so no schedule can beat ``levels x 3 x latency``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from original_loop import run_original
from test_paper_mode import PaperWorld
from world import World

from drpo_dspy import DRPO, AlignedResponder

QUERIES = [f"query {i}" for i in range(40)]
ASPECTS = ["Helpfulness", "Clarity"]


def scores(prompt: str, query: str) -> list[int]:
    digest = hashlib.sha256(f"{prompt}|{query}".encode()).digest()
    return [1 + digest[0] % 5, 1 + digest[1] % 5]


def compile_once(args: argparse.Namespace, threads: int, *, paper: bool = False) -> tuple[float, object, World]:
    world = (PaperWorld if paper else World)(scores, latency=args.latency)
    options = {"paper_mode": True} if paper else {"holdout": 0}
    drpo = DRPO(**world.roles(), beam_size=args.beam, n_actions=args.actions, depth=args.depth,
                max_depth_increase=args.increase, k=0, num_threads=threads, progress=False, **options)
    start = time.perf_counter()
    program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    return time.perf_counter() - start, program, world


def original_requests(args: argparse.Namespace) -> tuple[dict[str, int], str]:
    """Requests per role and the final prompt of the original loop, restated independently, on the same world."""
    def judge(query: str, output: str, aspects: list[str]) -> dict:
        prompt = output.split("prompt=<", 1)[1].split("> query=<", 1)[0]
        return {a: {"rationale": f"r-{a}", "score": s} for a, s in zip(aspects, scores(prompt, query))}

    run = run_original(QUERIES, "You are a helpful assistant.", beam_size=args.beam, n_actions=args.actions,
                       depth=args.depth, max_depth_increase=args.increase,
                       answer=lambda p, q: f"ANSWER prompt=<{p}> query=<{q}>", select=lambda q: list(ASPECTS),
                       judge=judge, optimize=lambda inputs, n: [f"{inputs['current_system_prompt']}/{i}"
                                                                for i in range(n)])
    return dict(run.calls), run.final_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--actions", type=int, default=3)
    parser.add_argument("--increase", type=int, default=0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    sequential, seq_program, _ = compile_once(args, 1)
    parallel, par_program, _ = compile_once(args, args.threads)
    levels = par_program.drpo_result.num_levels
    bound = levels * 3 * args.latency
    same = seq_program.instructions == par_program.instructions
    ours = {role: row["lm_calls"] for role, row in par_program.drpo_result.usage.items()}
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in par_program.drpo_result.usage.values())
    _, paper_program, _ = compile_once(args, args.threads, paper=True)
    paper = {role: row["lm_calls"] for role, row in paper_program.drpo_result.usage.items()}
    theirs, their_prompt = original_requests(args)
    result = {
        "settings": vars(args), "levels": levels, "sequential_s": round(sequential, 3),
        "parallel_s": round(parallel, 3), "critical_path_bound_s": round(bound, 3),
        "speedup_vs_sequential": round(sequential / parallel, 2), "ratio_to_bound": round(parallel / bound, 3),
        "same_result": same, "lm_calls": ours, "lm_calls_total": sum(ours.values()), "tokens_total": tokens,
        "paper_mode_lm_calls": paper, "paper_mode_same_prompt_as_original": paper_program.instructions == their_prompt,
        "original_requests": theirs, "original_requests_total": sum(theirs.values()),
    }
    print(f"| levels | sequential | parallel ({args.threads} threads) | critical-path bound | speed-up | "
          f"parallel / bound | same prompt |\n|---|---|---|---|---|---|---|\n"
          f"| {levels} | {sequential:.2f} s | {parallel:.2f} s | {bound:.2f} s | {sequential / parallel:.1f}x | "
          f"{parallel / bound:.2f} | {same} |")
    print(f"\nLM requests per role, ours (default mode): {ours} (total {sum(ours.values())})")
    print(f"LM requests per role, ours (paper mode): {paper} (total {sum(paper.values())}); same final prompt as "
          f"the original: {result['paper_mode_same_prompt_as_original']}")
    print(f"LM requests per role, the original loop restated: {theirs} (total {sum(theirs.values())})")
    out = Path(__file__).resolve().parent / "results" / "search.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(Path(__file__).resolve().parents[1])}")


if __name__ == "__main__":
    main()
