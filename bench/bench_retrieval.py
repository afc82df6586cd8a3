"""Retrieval of in-context examples: our AlignmentBank against dspy.retrievers.Embeddings and numpy brute force.

All three search the same vectors in the same run, at each bank size:

- **index-only**: one query vector at a time (the query is already embedded); p50/p99 latency and recall@k
  against exact search (``exact_topk`` over all vectors, ties by id);
- **end to end**: one query *text* at a time, embedded by the packaged all-MiniLM-L6-v2 inside the timed call.

The peers take turns on every query (so the load of the shared machine falls on all alike), one thread each.

Peers: ``AlignmentBank.search`` (query-vector cache off, so every query is embedded); ``dspy.retrievers.Embeddings``
(DSPy 3.4: brute force below 20k passages, else an IVF-PQ index of 32-byte codes with nprobe=16 and an exact
re-rank of 10k candidates; its public call goes through ``Unbatchify``, which waits up to 0.1 s to fill a batch, so
both the public call and its batch function ``_batch_forward`` are timed); numpy brute force (``vectors @ q`` and
``argpartition``).

Data: at ``--real-max`` examples and below, bank and query texts are templated questions embedded by MiniLM. Above
it, embedding the bank is impossible here (1M texts take hours on 2 cores), so bank vectors are synthetic unit
vectors ("clustered": about 100 points around each random centre, like queries in topics; "uniform": pure noise,
every neighbour a near-tie); end to end, the query text is still embedded by MiniLM inside the timed call and the
search then uses a synthetic query vector from the bank's distribution, so recall stays meaningful.

    nice python bench/bench_retrieval.py --sizes 1000,10000,100000,1000000 --uniform-sizes 10000,100000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    from threadpoolctl import threadpool_limits  # comes with scikit-learn, a sentence-transformers dependency
except ImportError:  # pragma: no cover
    from contextlib import nullcontext as threadpool_limits  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peer_timing import interleaved  # noqa: E402
from bench.synthetic_vectors import synthetic  # noqa: E402
from drpo_dspy.retrievers.bank import AlignmentBank  # noqa: E402
from drpo_dspy.retrievers.embedders import load_embedder  # noqa: E402
from drpo_dspy.retrievers.vector_index import (  # noqa: E402
    EXACT_MAX,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    VectorIndex,
    exact_topk,
)

VERBS = ["cook", "fix", "learn", "plan", "explain", "write", "clean", "grow", "train", "choose", "repair", "budget"]
THINGS = ["a sourdough loaf", "a leaking tap", "Spanish", "a trip to Lisbon", "quantum computing", "a cover letter",
          "a cast-iron pan", "tomatoes", "a puppy", "a laptop", "a bicycle chain", "a wedding", "Python decorators",
          "a garden shed", "a job interview", "tax returns", "a marathon", "a chess opening", "a podcast", "a resume"]
WAYS = ["quickly", "on a budget", "for beginners", "safely", "at home", "with kids", "in winter", "step by step"]


def question(i: int) -> str:
    """The i-th templated question (distinct for every i)."""
    verb, thing, way = VERBS[i % 12], THINGS[(i // 12) % 20], WAYS[(i // 240) % 8]
    return f"How do I {verb} {thing} {way}? (case {i})"


class QueryEmbedder:
    """MiniLM for query texts (always run, so its cost is timed); the vector returned is MiniLM's, or, for synthetic
    banks, the synthetic query vector of that text. Corpus texts ``doc:<i>`` map to bank row i without embedding."""

    name = "bench-minilm"

    def __init__(self, model, bank: np.ndarray, queries: list[str], substitutes: np.ndarray | None) -> None:
        self.model, self.bank, self.dim = model, bank, bank.shape[1]
        self.substitutes = None if substitutes is None else dict(zip(queries, substitutes, strict=True))

    def encode(self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        if texts and texts[0].startswith("doc:"):
            return self.bank[[int(t[4:]) for t in texts]]
        vectors = self.model.encode(list(texts))
        return vectors if self.substitutes is None else np.stack([self.substitutes[t] for t in texts])

    __call__ = encode  # dspy.retrievers.Embeddings calls its embedder with a list of texts


def summary(lat: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(lat, 50)) * 1e3, "p99_ms": float(np.percentile(lat, 99)) * 1e3,
            "queries": len(lat)}


def recall_at_k(found: list, truth: np.ndarray) -> float:
    return float(np.mean([len(set(np.asarray(f).tolist()) & set(t.tolist())) for f, t in
                          zip(found, truth, strict=True)])) / truth.shape[1]


def numpy_topk(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ q
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def run_size(mode: str, n: int, args: argparse.Namespace, model, rng: np.random.Generator) -> list[dict]:
    k, m, e2e_m = args.k, args.queries, args.e2e_queries
    real = mode == "clustered" and n <= args.real_max
    t0 = time.perf_counter()
    query_texts = [question(10_000_000 + i) for i in range(m)]
    if real:
        bank = model.encode([question(i) for i in range(n)], batch_size=128)
        queries = model.encode(query_texts)
    else:
        bank, queries = synthetic(n, m, args.dim, mode, rng)
    data_s = time.perf_counter() - t0
    _, truth = exact_topk(queries, bank, k)
    embedder = QueryEmbedder(model, bank, query_texts, None if real else queries)
    base = {"data": mode, "n": n, "vectors": "MiniLM" if real else "synthetic", "data_s": data_s}
    builds: dict[str, dict] = {"numpy brute force": {"build_s": 0.0, "memory_mb": bank.nbytes / 2**20}}
    index_only: dict[str, object] = {"numpy brute force": lambda q: numpy_topk(bank, q, k)}
    end_to_end: dict[str, object] = {"numpy brute force": lambda t: numpy_topk(bank, embedder.encode([t])[0], k)}

    peer = None
    if n <= args.dspy_max:  # built first: it holds a normalised copy of the vectors while it trains
        from dspy.retrievers import Embeddings

        rss0, t0 = rss_mb(), time.perf_counter()
        peer = Embeddings([f"doc:{i}" for i in range(n)], embedder, k=k)
        builds["dspy Embeddings"] = {"build_s": time.perf_counter() - t0, "rss_growth_mb": rss_mb() - rss0,
                                     "index": "brute force" if peer.index is None else "IVF-PQ nprobe=16 + re-rank"}
        peer.corpus_embeddings = bank  # the same unit rows (its copy differs by rounding only): one copy in memory
        gc.collect()

        def dspy_vector_search(q: np.ndarray) -> list[int]:
            pids = peer._faiss_search(q[None, :], peer.k * 10) if peer.index is not None else None
            return peer._rerank_and_predict(q[None, :], pids)[0][1]

        index_only["dspy Embeddings"] = dspy_vector_search
        end_to_end["dspy Embeddings"] = lambda t: peer._batch_forward([t])[0][1]

    rss0, t0 = rss_mb(), time.perf_counter()
    ours_index = VectorIndex.build(bank, kind="auto", seed=args.seed, hnsw_m=args.hnsw_m,
                                   ef_construction=args.ef_construction)
    builds["ours (AlignmentBank)"] = {"build_s": time.perf_counter() - t0, "rss_growth_mb": rss_mb() - rss0,
                                      "memory_mb": ours_index.memory_bytes() / 2**20, "index": ours_index.kind,
                                      "params": ours_index.params}
    ours = AlignmentBank.from_vectors([(f"doc:{i}", "answer") for i in range(n)], bank, embedder=embedder,
                                      query_cache_size=0)
    ours._attach(bank, ours_index)  # the index just built and timed, instead of building it a second time
    index_only["ours (AlignmentBank)"] = lambda q: ours_index.search(q, k)[1][0]
    end_to_end["ours (AlignmentBank)"] = lambda t: [int(e.query[4:]) for e, _ in ours.search(t, k)]
    print(f"  {mode} n={n:,}: built " + ", ".join(f"{name} {b['build_s']:.1f}s" for name, b in builds.items()),
          flush=True)

    rows = []

    def record(peer_name: str, how: str, lat: np.ndarray, found: list, **extra) -> None:
        rows.append({**base, "peer": peer_name, "how": how, **summary(lat),
                     "recall": recall_at_k(found, truth[: len(found)]), **extra})
        print(f"  {mode:9s} n={n:>9,} {peer_name:22s} {how:12s} p50 {rows[-1]['p50_ms']:9.3f} ms  "
              f"recall@{k} {rows[-1]['recall']:.4f}", flush=True)

    with threadpool_limits(1):
        for name, (lat, found) in interleaved(index_only, list(queries)).items():
            record(name, "index-only", lat, found, **builds[name])
        if mode == "clustered":
            for name, (lat, found) in interleaved(end_to_end, query_texts[:e2e_m]).items():
                record(name, "end-to-end", lat, found)
            if peer is not None:
                lat, found = interleaved({"public": lambda t: peer(t).indices},
                                         query_texts[: args.public_queries])["public"]
                record("dspy Embeddings", "public call", lat, found)
    if peer is not None:
        peer.search_fn.close()
    if args.keep_bank and mode == "clustered" and n == max(int(x) for x in args.sizes.split(",")):
        ours.save(args.keep_bank / f"bank_{n}.jsonl", save_index=True)  # for bench_responder.py at this size
    return rows  # the indexes go with this frame; main() collects before the next size


def markdown(rows: list[dict], k: int) -> str:
    lines = [f"| data | n | vectors | peer | query | index | build s | memory MB | p50 ms | p99 ms | recall@{k} | "
             "p50 / ours |", "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    ours = {(r["data"], r["n"], r["how"]): r["p50_ms"] for r in rows if r["peer"].startswith("ours")}
    for r in rows:
        how = "end-to-end" if r["how"] == "public call" else r["how"]
        ratio = r["p50_ms"] / ours[(r["data"], r["n"], how)] if (r["data"], r["n"], how) in ours else float("nan")
        index = r.get("index", "")
        if index == "hnsw":
            index = f"hnsw M={r['params']['M']} ef={r['params']['ef_search']}"
        elif index == "exact" and "fallback" in r.get("params", {}):
            index = "exact (HNSW fell back)"
        build = f"{r['build_s']:.2f}" if "build_s" in r else ""
        memory = f"{r['memory_mb']:,.0f}" if "memory_mb" in r else (f"{r['rss_growth_mb']:,.0f}" + "†"
                                                                    if "rss_growth_mb" in r else "")
        lines.append(f"| {r['data']} | {r['n']:,} | {r['vectors']} | {r['peer']} | {r['how']} | {index} | {build} | "
                     f"{memory} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['recall']:.4f} | {ratio:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="bank sizes, clustered data")
    parser.add_argument("--uniform-sizes", default="10000,100000", help="bank sizes, uniform data ('' = none)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200, help="index-only queries, timed one at a time")
    parser.add_argument("--e2e-queries", type=int, default=50, help="end-to-end queries (each embedded by MiniLM)")
    parser.add_argument("--public-queries", type=int, default=20, help="dspy Embeddings public calls (0.1 s wait)")
    parser.add_argument("--real-max", type=int, default=1000, help="largest bank embedded by MiniLM")
    parser.add_argument("--dspy-max", type=int, default=1_000_000, help="largest bank given to dspy Embeddings")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--hnsw-m", type=int, default=HNSW_M, help="HNSW links per vector (library default)")
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION, help="HNSW build width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-bank", type=Path, default=None,
                        help="save our bank at the largest clustered size (with its index) into this folder")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    import dspy
    import faiss
    import torch

    torch.set_num_threads(1)  # one query at a time, one thread each, as for the searches (threadpool_limits)
    model = load_embedder("all-MiniLM-L6-v2")
    model.encode(["warm-up"])
    rng = np.random.default_rng(args.seed)
    plan = [("clustered", int(s)) for s in args.sizes.split(",") if s.strip()]
    plan += [("uniform", int(s)) for s in args.uniform_sizes.split(",") if s.strip()]
    config = {key: value for key, value in vars(args).items() if key not in ("out", "keep_bank")}
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "numpy": np.__version__, "faiss": faiss.__version__, "dspy": dspy.__version__, "exact_max": EXACT_MAX,
               "threads_per_query": 1, "load_average_at_start": os.getloadavg()}
    rows: list[dict] = []
    t_all = time.perf_counter()
    for mode, n in plan:
        rows.extend(run_size(mode, n, args, model, rng))
        gc.collect()
        table = markdown(rows, args.k)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": config, "machine": machine, "results": rows, "markdown": table,
                                        "total_s": time.perf_counter() - t_all}, indent=1), encoding="utf-8")
    print("\n" + markdown(rows, args.k))
    print(f"\nTotal {time.perf_counter() - t_all:.0f}s on {machine['cpus']} CPUs; wrote {args.out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
