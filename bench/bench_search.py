"""Compile wall time with simulated API latency: parallel vs sequential vs the critical-path bound; and LM calls
and tokens against what the original algorithm makes for the same search.

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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from world import World

from drpo_dspy import DRPO, AlignedResponder


def scores(prompt: str, query: str) -> list[int]:
    digest = hashlib.sha256(f"{prompt}|{query}".encode()).digest()
    return [1 + digest[0] % 5, 1 + digest[1] % 5]


def compile_once(args: argparse.Namespace, threads: int) -> tuple[float, object]:
    world = World(scores, latency=args.latency)
    drpo = DRPO(**world.roles(), beam_size=args.beam, n_actions=args.actions, depth=args.depth,
                max_depth_increase=args.increase, k=0, num_threads=threads, progress=False)
    start = time.perf_counter()
    program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=[f"query {i}" for i in range(40)])
    return time.perf_counter() - start, program


def original_calls(best_trace: dict, n_actions: int) -> dict[str, int]:
    """Requests the original code makes for the same tree: one n-sample rewrite request per expanded node."""
    nodes = best_trace["nodes"]
    by_level: dict[int, list[dict]] = {}
    for node in nodes:
        by_level.setdefault(node["level"], []).append(node)
    calls = {"base": 0, "metrics": len({n["query"] for n in nodes}), "judge": 0, "optimizer": 0}
    for level_nodes in by_level.values():
        calls["base"] += len(level_nodes)
        calls["judge"] += len(level_nodes)
        expanded = {n["parent_id"] for n in level_nodes if not n["carried"] and n["parent_id"] is not None}
        calls["optimizer"] += len(expanded)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--actions", type=int, default=3)
    parser.add_argument("--increase", type=int, default=0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    sequential, seq_program = compile_once(args, 1)
    parallel, par_program = compile_once(args, args.threads)
    levels = par_program.drpo_result.levels
    bound = levels * 3 * args.latency
    same = seq_program.instructions == par_program.instructions
    ours = {role: row["lm_calls"] for role, row in par_program.drpo_result.usage.items()}
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in par_program.drpo_result.usage.values())
    # Rebuild the full tree from a traced run (its run directory's trace.jsonl) to count the original's requests.
    with tempfile.TemporaryDirectory() as tmp:
        drpo = DRPO(**World(scores).roles(), beam_size=args.beam, n_actions=args.actions, depth=args.depth,
                    max_depth_increase=args.increase, k=0, num_threads=args.threads, progress=False,
                    log_dir=Path(tmp) / "run")
        drpo.compile(AlignedResponder(examples=[], k=0), trainset=[f"query {i}" for i in range(40)])
        trace = (Path(tmp) / "run" / "trace.jsonl").read_text().splitlines()
    theirs = original_calls({"nodes": [json.loads(line) for line in trace]}, args.actions)
    result = {
        "settings": vars(args), "levels": levels, "sequential_s": round(sequential, 3),
        "parallel_s": round(parallel, 3), "critical_path_bound_s": round(bound, 3),
        "speedup_vs_sequential": round(sequential / parallel, 2), "ratio_to_bound": round(parallel / bound, 3),
        "same_result": same, "lm_calls": ours, "lm_calls_total": sum(ours.values()),
        "original_requests": theirs, "original_requests_total": sum(theirs.values()), "tokens_total": tokens,
    }
    print(f"| levels | sequential | parallel ({args.threads} threads) | critical-path bound | speed-up | "
          f"parallel / bound | same prompt |\n|---|---|---|---|---|---|---|\n"
          f"| {levels} | {sequential:.2f} s | {parallel:.2f} s | {bound:.2f} s | {sequential / parallel:.1f}x | "
          f"{parallel / bound:.2f} | {same} |")
    print(f"\nLM requests per role, ours: {ours} (total {sum(ours.values())})")
    print(f"LM requests per role, original algorithm on the same tree: {theirs} (total {sum(theirs.values())})")
    out = Path(__file__).parent / "results" / "search.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
