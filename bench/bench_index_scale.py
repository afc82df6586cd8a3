"""The vector index alone at large sizes: build time, memory, the search width chosen, p50/p99 and recall@k.

Runs ``VectorIndex.build`` (the code ``AlignmentBank`` uses) on synthetic unit vectors (see ``synthetic_vectors``)
for each ``--configs`` entry ("auto", "hnsw:M:efConstruction", "pq[:refine]", "ivf", "exact"), then times single
queries on one thread, every index taking turns on each query (the load of a shared machine falls on all alike),
against exact search measured in the same run. Builds use every core (``--build-threads``); queries use one.

It needs only numpy and faiss: on a host without DSPy (a bare accelerator machine) the retrieval modules are loaded
without the package's DSPy parts.

    nice python bench/bench_index_scale.py --n 1000000 --configs auto,hnsw:32:200 --out bench/results/index_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
try:
    import dspy  # noqa: F401
except ImportError:  # load drpo_dspy.retrievers without drpo_dspy/__init__.py, which imports DSPy
    for name in ("drpo_dspy", "drpo_dspy.retrievers"):
        stub = types.ModuleType(name)
        stub.__path__ = [str(ROOT.joinpath(*name.split(".")))]
        sys.modules[name] = stub

import faiss  # noqa: E402

from bench.peer_timing import interleaved  # noqa: E402
from bench.synthetic_vectors import synthetic  # noqa: E402
from drpo_dspy.retrievers.exact_search import exact_topk  # noqa: E402
from drpo_dspy.retrievers.vector_index import VectorIndex  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def build(config: str, bank: np.ndarray, seed: int) -> VectorIndex:
    kind, *rest = config.split(":")
    if kind == "hnsw" and rest:
        return VectorIndex.build(bank, kind="hnsw", seed=seed, hnsw_m=int(rest[0]), ef_construction=int(rest[1]))
    if kind == "pq" and rest:
        return VectorIndex.build(bank, kind="pq", seed=seed, pq_refine=int(rest[0]))
    return VectorIndex.build(bank, kind=kind, seed=seed)


def describe(index: VectorIndex) -> str:
    p = index.params
    if index.kind == "hnsw":
        return f"hnsw M={p['M']} efC={p['ef_construction']} ef={p['ef_search']}"
    if index.kind == "ivf":
        return f"ivf nlist={p['nlist']} nprobe={p['nprobe']}" + (" (fallback)" if "fallback" in p else "")
    if index.kind == "pq":
        return f"pq m={p['pq_m']}x4bit refine={p['refine']}" + (" (graph fell back)" if "fallback" in p else "")
    return "exact" + (" (fallback)" if "fallback" in p else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--configs", default="auto",
                        help="comma list: auto, exact, ivf, pq[:refine], hnsw:M:efConstruction")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-bank", type=Path, default=None,
                        help="save the 'auto' index as an AlignmentBank folder for bench_responder.py --bank-1m")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "index_scale.json")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    bank, queries = synthetic(args.n, args.queries, args.dim, args.data, np.random.default_rng(args.seed))
    faiss.omp_set_num_threads(args.build_threads)
    truth = exact_topk(queries, bank, args.k)[1]
    print(f"{args.data} n={args.n:,} d={args.dim}: data and exact truth in {time.perf_counter() - t0:.0f}s",
          flush=True)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "numpy": np.__version__, "faiss": faiss.__version__, "build_threads": args.build_threads,
               "query_threads": 1, "load_average_at_start": os.getloadavg()}
    indexes: dict[str, VectorIndex] = {}
    rows: dict[str, dict] = {}
    for config in args.configs.split(","):
        faiss.omp_set_num_threads(args.build_threads)
        rss0, t0 = rss_mb(), time.perf_counter()
        index = build(config, bank, args.seed)
        rows[config] = {"config": config, "index": describe(index), "build_s": round(time.perf_counter() - t0, 2),
                        "rss_growth_mb": round(rss_mb() - rss0), "memory_mb": round(index.memory_bytes() / 2**20),
                        "params": {k: v for k, v in index.params.items() if k != "fallback"},
                        "fallback": index.params.get("fallback")}
        indexes[config] = index
        print(f"  built {config}: {rows[config]['index']} in {rows[config]['build_s']}s", flush=True)

    faiss.omp_set_num_threads(1)
    peers = {"exact scan": lambda q: exact_topk(q[None, :], bank, args.k)[1][0]}
    peers.update({config: (lambda q, ix=ix: ix.search(q, args.k)[1][0]) for config, ix in indexes.items()})
    timed = interleaved(peers, list(queries))
    lat = {name: timed[name][0] for name in peers}
    found = {name: timed[name][1] for name in peers}
    exact_p50 = float(np.percentile(lat["exact scan"], 50)) * 1e3
    results = []
    for name in peers:
        recall = float(np.mean([len(set(np.asarray(f).tolist()) & set(t.tolist())) for f, t in
                                zip(found[name], truth, strict=True)])) / args.k
        p50 = float(np.percentile(lat[name], 50)) * 1e3
        row = {**rows.get(name, {"config": name, "index": "exact scan (numpy/BLAS)", "build_s": 0.0,
                                 "memory_mb": round(bank.nbytes / 2**20)}),
               "p50_ms": round(p50, 4), "p99_ms": round(float(np.percentile(lat[name], 99)) * 1e3, 4),
               f"recall@{args.k}": round(recall, 4), "speedup_vs_exact_p50": round(exact_p50 / p50, 1)}
        results.append(row)
        print(f"  {name:18s} {row['index']:40s} p50 {p50:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  "
              f"recall@{args.k} {recall:.4f}  {row['speedup_vs_exact_p50']}x exact", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k not in ("out", "keep_bank")},
                                    "machine": machine, "results": results}, indent=1), encoding="utf-8")
    if args.keep_bank and "auto" in indexes:
        keep_bank(args.keep_bank, bank, indexes["auto"])
    return 0


class _VectorsOnly:
    """The embedder name of bench_responder.py's synthetic banks; the bank's vectors are given, never computed."""

    name = "bench-minilm"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        raise RuntimeError("this bank is for bench_responder.py, which loads it with its own embedder")


def keep_bank(folder: Path, vectors: np.ndarray, index: VectorIndex) -> None:
    """Save a bank of these vectors with the index just built (``bank_<n>.jsonl`` and its ``.index`` folder)."""
    from drpo_dspy.retrievers.bank import AlignmentBank

    n = len(vectors)
    bank = AlignmentBank.from_vectors([(f"doc:{i}", "answer") for i in range(n)], vectors,
                                      embedder=_VectorsOnly(vectors.shape[1]), query_cache_size=0)
    bank._attach(vectors, index)  # the index built and timed above, not a second build
    folder.mkdir(parents=True, exist_ok=True)
    print(f"  saved {bank.save(folder / f'bank_{n}.jsonl', save_index=True)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
