"""The responder's own cost per answer, without the LM: query embedding, retrieval, DRPO layout, DSPy plumbing.

``AlignedResponder`` answers through a scripted LM that returns instantly (``drpo_dspy.testing.scripted``), at banks
of 16 (the built-in seed examples, embedded by the packaged all-MiniLM-L6-v2), 10k and 1M examples (their vectors
synthetic: embedding that many texts is impossible here; live queries are still embedded by MiniLM on every cold
call). Per answer, p50/p99 of:

- ``answer``: a whole ``responder(query=...)`` call; "cold" for queries never seen, "warm" for the same queries again
  (their vectors come from the bank's query-vector cache);
- ``LM call alone``: the same instant LM called directly with the same messages (dspy.LM + litellm), the part of
  ``answer`` that is the LM's route rather than the responder's; ``answer - LM call`` is the responder's overhead;
- the stages: embedding one query (MiniLM), the index search, the layout (``DRPOLayoutAdapter.format``).

Then ``responder.batch`` throughput (answers/s) against a sequential loop over the same queries, cold and warm.

    nice python bench/bench_responder.py --sizes 16,10000 --queries 100
    nice python bench/bench_responder.py --sizes 1000000 --bank-1m /tmp/keep/bank_1000000.jsonl --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

from drpo_dspy.adapters.drpo_layout import DRPOLayoutAdapter  # noqa: E402
from drpo_dspy.modules.aligned_responder import AlignedResponder  # noqa: E402
from drpo_dspy.retrievers.bank import AlignmentBank  # noqa: E402
from drpo_dspy.retrievers.embedders import load_embedder  # noqa: E402
from drpo_dspy.testing.scripted import scripted_lm  # noqa: E402

TOPICS = ["bake bread", "fix a bike", "learn Spanish", "plan a trip", "write a resume", "train a puppy",
          "grow tomatoes", "file taxes", "run a marathon", "start a podcast"]


def live_query(i: int) -> str:
    return f"What is the best way to {TOPICS[i % len(TOPICS)]} if I have {i} minutes a day?"


class NearBankEmbedder:
    """For synthetic banks: embeds the text with MiniLM (the cost is real) and returns a unit vector near one bank
    vector (a query from the bank's own distribution), chosen by the text's hash so it is stable."""

    def __init__(self, model, bank_vectors: np.ndarray, name: str) -> None:
        self.model, self.vectors, self.name, self.dim = model, bank_vectors, name, bank_vectors.shape[1]

    def encode(self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        self.model.encode(list(texts))
        rows = []
        for text in texts:
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            v = self.vectors[rng.integers(len(self.vectors))] + rng.standard_normal(self.dim) / np.sqrt(self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


def synthetic_bank(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_bank(n: int, args: argparse.Namespace, model) -> tuple[AlignmentBank, float]:
    t0 = time.perf_counter()
    if n == 16:
        bank = AlignedResponder(k=2).bank  # the built-in seed examples, MiniLM
        bank.search("warm-up", 2)
    elif n == 1_000_000 and args.bank_1m:
        vectors = np.load(Path(str(args.bank_1m) + ".index") / "embeddings.npy", mmap_mode="r")
        bank = AlignmentBank.load(args.bank_1m, embedder=NearBankEmbedder(model, vectors, "bench-minilm"))
    else:
        vectors = synthetic_bank(n, 384, args.seed)
        bank = AlignmentBank.from_vectors([(f"stored question {i}", f"Answer {i}: " + "details " * 40)
                                           for i in range(n)], vectors, embedder=NearBankEmbedder(model, vectors,
                                                                                                  "synthetic"))
    bank.search(live_query(-1), 2)  # builds the index
    return bank, time.perf_counter() - t0


def stats(lat: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(lat, 50)) * 1e3, "p99_ms": float(np.percentile(lat, 99)) * 1e3,
            "n": len(lat)}


def timed(fn, items) -> list[float]:
    items = list(items)
    fn(items[0])  # warm-up
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t0)
    return out


def run_size(n: int, args: argparse.Namespace, model, lm) -> dict:
    bank, load_s = make_bank(n, args, model)
    responder = AlignedResponder(examples=bank, k=2)
    adapter = DRPOLayoutAdapter()
    signature = responder.respond.signature
    queries = [live_query(1000 * n + i) for i in range(args.queries)]
    vector = bank.embedder.encode([live_query(-3)])
    demos = [{"query": e.query, "response": e.answer} for e, _ in bank.search(live_query(-3), 2)]
    messages = adapter.format(signature, demos, {"query": live_query(-3)})
    stages = {
        "embed one query (MiniLM)": stats(timed(lambda q: bank.embedder.encode([q]),
                                                [f"stage {q}" for q in queries[: args.stage_queries]])),
        "index search": stats(timed(lambda _: bank.index.search(vector, 2), range(args.queries))),
        "layout (DRPOLayoutAdapter.format)": stats(timed(lambda q: adapter.format(signature, demos, {"query": q}),
                                                         queries)),
        "LM call alone (instant scripted LM)": stats(timed(lambda _: lm(messages=messages), range(args.queries))),
    }
    with dspy.context(lm=lm):
        responder(query=live_query(-2))  # warm-up
        cold = stats(timed(lambda q: responder(query=q), queries))
        warm = stats(timed(lambda q: responder(query=q), queries))
        throughput = {}
        for label, batch_queries in (("cold", [live_query(10**9 + 1000 * n + i) for i in range(args.batch)]),
                                     ("warm", [live_query(10**9 + 1000 * n + i) for i in range(args.batch)])):
            examples = [dspy.Example(query=q).with_inputs("query") for q in batch_queries]
            t0 = time.perf_counter()
            responder.batch(examples, num_threads=args.threads, disable_progress_bar=True)
            batch_s = time.perf_counter() - t0
            fresh = [live_query(2 * 10**9 + 1000 * n + i) for i in range(args.batch)] if label == "cold" \
                else batch_queries
            t0 = time.perf_counter()
            for q in fresh:
                responder(query=q)
            loop_s = time.perf_counter() - t0
            throughput[label] = {"batch_answers_per_s": args.batch / batch_s, "loop_answers_per_s": args.batch / loop_s,
                                 "speedup": loop_s / batch_s}
    lm_p50 = stages["LM call alone (instant scripted LM)"]["p50_ms"]
    row = {"n": n, "bank_ready_s": load_s, "index": bank.index.kind if bank.index else None,
           "index_params": bank.index.params if bank.index else None, "answer_cold": cold, "answer_warm": warm,
           "overhead_cold_p50_ms": cold["p50_ms"] - lm_p50, "overhead_warm_p50_ms": warm["p50_ms"] - lm_p50,
           "stages": stages, "batch": throughput, "query_cache": repr(bank.query_cache)}
    print(f"n={n:>9,} answer p50 cold {cold['p50_ms']:.2f} ms warm {warm['p50_ms']:.2f} ms (LM route "
          f"{lm_p50:.2f} ms); batch warm {throughput['warm']['batch_answers_per_s']:.0f}/s", flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| bank | index | answer p50 cold | p99 cold | answer p50 warm | p99 warm | LM route p50 | "
             "overhead p50 cold / warm | embed p50 | search p50 | layout p50 | batch warm /s | loop warm /s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, b = r["stages"], r["batch"]["warm"]
        lines.append(
            f"| {r['n']:,} | {r['index']} | {r['answer_cold']['p50_ms']:.2f} | {r['answer_cold']['p99_ms']:.2f} | "
            f"{r['answer_warm']['p50_ms']:.2f} | {r['answer_warm']['p99_ms']:.2f} | "
            f"{s['LM call alone (instant scripted LM)']['p50_ms']:.2f} | {r['overhead_cold_p50_ms']:.2f} / "
            f"{r['overhead_warm_p50_ms']:.2f} | {s['embed one query (MiniLM)']['p50_ms']:.2f} | "
            f"{s['index search']['p50_ms']:.3f} | {s['layout (DRPOLayoutAdapter.format)']['p50_ms']:.3f} | "
            f"{b['batch_answers_per_s']:.0f} | {b['loop_answers_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,10000,1000000")
    parser.add_argument("--queries", type=int, default=100, help="answers timed per size (cold, then warm)")
    parser.add_argument("--stage-queries", type=int, default=30, help="queries for the embedding stage")
    parser.add_argument("--batch", type=int, default=200, help="answers per batch() throughput run")
    parser.add_argument("--threads", type=int, default=4, help="responder.batch num_threads")
    parser.add_argument("--bank-1m", type=Path, default=None, help="a saved 1M bank (bench_retrieval --keep-bank)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "responder.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    model = load_embedder("all-MiniLM-L6-v2")
    model.encode(["warm-up"])
    lm = scripted_lm(lambda messages, params: "A short answer.\n<END>", name="bench-responder-instant")
    rows = []
    for n in (int(s) for s in args.sizes.split(",") if s.strip()):
        if n == 1_000_000 and not args.bank_1m:
            print("skipping 1M: pass --bank-1m (a bank saved by bench_retrieval.py --keep-bank)")
            continue
        rows.append(run_size(n, args, model, lm))
        config = {key: (v.name if isinstance(v, Path) else v) for key, v in vars(args).items() if key != "out"}
        machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                   "dspy": dspy.__version__, "load_average": os.getloadavg()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": config, "machine": machine, "results": rows,
                                        "markdown": markdown(rows)}, indent=1), encoding="utf-8")
    print("\n" + markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
