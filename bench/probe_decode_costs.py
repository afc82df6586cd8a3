"""Probe: what a generated token costs the embedded model, alone, batched, and on parallel single-core contexts.

At about 75 and 1,100 cached tokens (flash attention off, as the runtime runs): the mean decoding step of 1, 2 and 4
sequences batched in one context (one KV stream each) on all cores and on one; two single-threaded contexts decoding
side by side (two Python threads; llama.cpp releases the GIL); and prompt evaluation in 64-token chunks on one
thread, on all cores, and on two single-threaded contexts side by side. This is what chose parallel single-core
decoders (``drpo_dspy/engine/workers.py``) over batched decoding.

    nice python bench/probe_decode_costs.py [--out bench/results/decode_costs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
os.environ["PROBE_FLASH_ATTN"] = "off"

import probe_batched_decode as p  # noqa: E402

RULE = "You are a careful assistant. Answer in plain words, briefly, and stay on topic. "
STEPS = 30


def context(n_seq: int, threads: int) -> Any:
    os.environ["PROBE_THREADS"] = str(threads)
    return p.new_context(n_seq, False)


def prompts(repeats: int, count: int) -> list[list[int]]:
    return [p.tokenize(p.chat(f"{i} " + RULE * repeats, "Tell me a story.")) for i in range(count)]


def clear(ctx: Any, seq: int, start: int = 0) -> None:
    p.c.llama_memory_seq_rm(p.c.llama_get_memory(ctx), seq, start, -1)


def batched_steps(tokens: list[list[int]], threads: int) -> dict[str, float]:
    ctx = context(4, threads)
    for seq, prompt in enumerate(tokens):
        p.prefill(ctx, seq, prompt)
    out = {}
    for width in (1, 2, 4):
        started = time.perf_counter()
        for step in range(STEPS):
            p.decode(ctx, [(100, len(tokens[s]) + step, s, True) for s in range(width)])
        out[f"{width} sequences"] = round((time.perf_counter() - started) / STEPS * 1e3, 2)
        for seq in range(width):
            clear(ctx, seq, len(tokens[seq]))
    p.c.llama_free(ctx)
    return out


def side_by_side(tokens: list[list[int]]) -> dict[str, float]:
    contexts = [context(1, 1) for _ in range(2)]

    def prefill(i: int) -> None:
        p.prefill(contexts[i], 0, tokens[i])

    def decode(i: int) -> None:
        for step in range(STEPS):
            p.decode(contexts[i], [(100, len(tokens[i]) + step, 0, True)])

    def both(work: Any) -> float:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    prefill_s = both(prefill)
    decode_s = both(decode)
    for ctx in contexts:
        p.c.llama_free(ctx)
    return {"two contexts, step ms (each)": round(decode_s / STEPS * 1e3, 2),
            "two contexts, ms per token": round(decode_s / STEPS / 2 * 1e3, 2),
            "two contexts, prompt tokens/s": round((len(tokens[0]) + len(tokens[1])) / prefill_s)}


def prompt_rate(tokens: list[int], threads: int) -> float:
    ctx = context(1, threads)
    started = time.perf_counter()
    p.prefill(ctx, 0, tokens)
    elapsed = time.perf_counter() - started
    p.c.llama_free(ctx)
    return round(len(tokens) / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decode_costs.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    report: dict[str, Any] = {"command": "nice python bench/probe_decode_costs.py", "cores": cores,
                              "spin": os.environ.get("GOMP_SPINCOUNT"), "load_average_at_start": os.getloadavg(),
                              "rows": []}
    for repeats in (2, 60):
        tokens = prompts(repeats, 4)
        row = {"cached_tokens": len(tokens[0]),
               f"batched step ms, {cores} threads": batched_steps(tokens, cores),
               "batched step ms, 1 thread": batched_steps(tokens, 1),
               **side_by_side(tokens),
               "prompt tokens/s, 1 thread": prompt_rate(tokens[0], 1),
               f"prompt tokens/s, {cores} threads": prompt_rate(tokens[0], cores)}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
