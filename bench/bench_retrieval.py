"""Benchmark top-k retrieval of in-context examples: drpo_dspy.retrievers.vector_index vs a per-example Python loop.

For each bank size it measures, in one run: index build time, single-query top-k latency (p50/p99), recall@k
against exact search, and the speed-up over a Python loop that computes the cosine one example at a time (the
way the original DRPO code retrieves). For large banks the loop is timed on a prefix of the bank and a few
queries, then extrapolated linearly in the bank size (its cost is linear); the table marks those cells.

Data: random unit vectors. "clustered" (default) draws each vector around one of n/cluster_size random centres
(cosine ~0.7 to its centre, ~0.5 to its cluster mates), like embeddings of queries that come in topics; queries
are fresh draws from the same distribution, not bank members. "uniform" (worst case: no neighbourhood structure,
every neighbour is a near-tie) is run at --uniform-sizes.

    python bench/bench_retrieval.py --sizes 1000,10000,100000,1000000 --dim 384 --queries 200
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_dspy.retrievers.vector_index import EXACT_MAX, VectorIndex, exact_topk


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Normalise rows in place."""
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def make_data(n: int, m: int, dim: int, mode: str, cluster_size: int, spread: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` bank vectors and ``m`` query vectors, float32 unit rows (generated in chunks to bound memory)."""
    if mode == "uniform":
        return (unit_rows(rng.standard_normal((n, dim), dtype=np.float32)),
                unit_rows(rng.standard_normal((m, dim), dtype=np.float32)))
    centres = unit_rows(rng.standard_normal((max(1, n // cluster_size), dim), dtype=np.float32))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):
            stop = min(count, start + 100_000)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
            out[start:stop] = centres[rng.integers(0, len(centres), stop - start)] + noise
        return unit_rows(out)

    return draw(n), draw(m)


def python_loop_topk(query: np.ndarray, bank: np.ndarray, k: int) -> list[int]:
    """Baseline: a Python loop computing one cosine per example, then a sort (as the original code does)."""
    sims = []
    qnorm = np.linalg.norm(query)
    for i in range(len(bank)):
        row = bank[i]
        sims.append((float(np.dot(query, row) / (qnorm * np.linalg.norm(row))), i))
    sims.sort(key=lambda t: -t[0])
    return [i for _, i in sims[:k]]


def time_single(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query latency (seconds) of one-query searches, and the ids found."""
    lat, ids = np.empty(len(queries)), np.empty((len(queries), k), dtype=np.int64)
    index.search(queries[:1], k)  # warm-up
    for i in range(len(queries)):
        t0 = time.perf_counter()
        _, found = index.search(queries[i : i + 1], k)
        lat[i] = time.perf_counter() - t0
        ids[i] = found[0]
    return lat, ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def time_loop(bank: np.ndarray, queries: np.ndarray, k: int, max_examples: int, n_queries: int) -> dict:
    """Per-query seconds of the Python loop, extrapolated linearly when timed on a prefix of the bank."""
    sub = bank[: min(len(bank), max_examples)]
    t0 = time.perf_counter()
    for q in queries[:n_queries]:
        python_loop_topk(q, sub, k)
    per_query = (time.perf_counter() - t0) / n_queries
    return {"loop_s_per_query": per_query * len(bank) / len(sub), "loop_timed_examples": len(sub),
            "loop_timed_queries": n_queries, "loop_extrapolated": len(sub) < len(bank)}


def run_size(n: int, args: argparse.Namespace, mode: str, rng: np.random.Generator) -> list[dict]:
    t0 = time.perf_counter()
    bank, queries = make_data(n, args.queries, args.dim, mode, args.cluster_size, args.spread, rng)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = exact_topk(queries, bank, args.k)
    truth_s = time.perf_counter() - t0
    loop = time_loop(bank, queries, args.k, args.loop_examples, args.loop_queries)
    rows = []
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        index = VectorIndex.build(bank, kind=kind, seed=args.seed)
        build_s = time.perf_counter() - t0
        lat, found = time_single(index, queries, args.k)
        p50 = float(np.percentile(lat, 50))
        rows.append({"data": mode, "n": n, "requested": kind, "kind": index.kind, "params": index.params,
                     "build_s": build_s, "p50_ms": p50 * 1e3, "p99_ms": float(np.percentile(lat, 99)) * 1e3,
                     "recall": recall_at_k(found, truth), **loop, "speedup_vs_loop": loop["loop_s_per_query"] / p50,
                     "data_gen_s": gen_s, "exact_batch_truth_s": truth_s})
        print(f"  {mode:9s} n={n:>9,} {kind:5s}->{index.kind:5s} build {build_s:7.2f}s  p50 {p50 * 1e3:8.3f} ms  "
              f"recall@{args.k} {rows[-1]['recall']:.4f}", flush=True)
        del index
        gc.collect()
    return rows


def markdown(rows: list[dict], k: int) -> str:
    head = (f"| data | n | index (requested→used) | build s | p50 ms | p99 ms | recall@{k} | loop ms/query | "
            "speed-up vs loop |\n|---|---:|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        p = r["params"]
        used = r["kind"] + (f" nlist={p['nlist']} nprobe={p['nprobe']}" if r["kind"] == "ivf" else "")
        used += f" ef={p['ef_search']}" if r["kind"] == "hnsw" else ""
        used += " (IVF fell back)" if "fallback" in p else ""
        loop = f"{r['loop_s_per_query'] * 1e3:,.0f}" + ("*" if r["loop_extrapolated"] else "")
        lines.append(f"| {r['data']} | {r['n']:,} | {r['requested']}→{used} | {r['build_s']:.2f} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['recall']:.4f} | {loop} | {r['speedup_vs_loop']:,.0f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="bank sizes (clustered data)")
    parser.add_argument("--uniform-sizes", default="1000,10000,100000", help="sizes for uniform data ('' = none)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--kinds", default="auto,exact", help="index kinds to build: auto,exact,ivf,hnsw")
    parser.add_argument("--cluster-size", type=int, default=100)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the cluster centre")
    parser.add_argument("--loop-examples", type=int, default=20_000, help="bank prefix the Python loop is timed on")
    parser.add_argument("--loop-queries", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "retrieval.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    plan = [("clustered", int(s)) for s in args.sizes.split(",") if s.strip()]
    plan += [("uniform", int(s)) for s in args.uniform_sizes.split(",") if s.strip()]
    rows: list[dict] = []
    t_all = time.perf_counter()
    for mode, n in plan:
        rows.extend(run_size(n, args, mode, rng))
    import faiss

    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "numpy": np.__version__, "faiss": faiss.__version__, "exact_max": EXACT_MAX}
    table = markdown(rows, args.k)
    print("\n" + table)
    print(f"\n* loop timed on the first {args.loop_examples:,} examples and {args.loop_queries} queries, then "
          f"extrapolated linearly to n. Total bench time {time.perf_counter() - t_all:.0f}s on {machine['cpus']} CPUs.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()}
    args.out.write_text(json.dumps({"config": config, "machine": machine, "results": rows, "markdown": table},
                                   indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
