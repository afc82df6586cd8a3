"""Probe: can the embedded model decode several requests in one llama.cpp batch with bit-identical results?

The embedded compile is dominated by generated tokens, one llama.cpp evaluation each. Decoding the concurrent
requests of a level together (one batch, one token per sequence) costs little more per step than decoding one, but it
may only replace today's one-request-at-a-time decoding if every sequence gets exactly the logits it gets alone
(greedy decoding must pick the same tokens, whatever else is in flight). Two scenarios, each against every sequence
decoded alone in a fresh context:

- ``lockstep``: sequences with short prompts, prefilled then decoded together, step by step;
- ``staggered``: prompts of 40-310 tokens (several 64-token chunks), sequences joining and finishing at different
  steps, as requests arrive in a real search.

It prints the speed-up of the batched run and, per sequence, whether the tokens are the same and the largest logit
difference, for a unified KV cache and for one KV stream per sequence.

    nice python bench/probe_batched_decode.py
    PROBE_FLASH_ATTN=off nice python bench/probe_batched_decode.py     # auto (default), off or on
    PROBE_THREADS=1 ...                                                # llama.cpp threads (default: all cores)

What it found decided the runtime's design: batching is bit-identical only without flash attention and with one KV
stream per sequence, and then, on SmolLM2-135M with short spins between llama.cpp's threads, a step of two
sequences costs about twice a step of one (6 -> 12 ms at 75 cached tokens, 9 -> 18 ms at 1,137) while two
single-threaded contexts decoding side by side cost 3.4-5 ms a token each. The embedded runtime therefore runs
concurrent requests on parallel single-core decoders (``drpo_dspy/engine/workers.py``), not in batches.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not os.environ.get("PROBE_DEFAULT_WAIT"):  # as the runtime sets it (see embedded.set_thread_wait_policy)
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="300")

import llama_cpp.llama_cpp as c

from drpo_dspy.clients.embedded import N_BATCH, gguf_path

c.llama_backend_init()
_params = c.llama_model_default_params()
_params.use_extra_bufts = False  # as the embedded runtime loads it
MODEL = c.llama_model_load_from_file(str(gguf_path()).encode(), _params)
VOCAB = c.llama_model_get_vocab(MODEL)
N_VOCAB = c.llama_vocab_n_tokens(VOCAB)
# llama.cpp's default ("auto") uses flash attention on the CPU, whose kernel for a single query token over 512+ cached
# tokens splits the cache across threads: a sequence decoded alone and in a batch then takes different paths.
FLASH_ATTN = {"auto": c.LLAMA_FLASH_ATTN_TYPE_AUTO, "off": c.LLAMA_FLASH_ATTN_TYPE_DISABLED,
              "on": c.LLAMA_FLASH_ATTN_TYPE_ENABLED}[os.environ.get("PROBE_FLASH_ATTN", "auto")]


def new_context(n_seq: int, unified: bool):
    p = c.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = 8192, N_BATCH, N_BATCH, n_seq
    p.n_threads = p.n_threads_batch = int(os.environ.get("PROBE_THREADS", len(os.sched_getaffinity(0))))
    p.kv_unified = unified
    p.flash_attn_type = FLASH_ATTN
    return c.llama_init_from_model(MODEL, p)


def tokenize(text: str) -> list[int]:
    buf = (c.llama_token * 8192)()
    n = c.llama_tokenize(VOCAB, text.encode(), len(text.encode()), buf, 8192, True, True)
    return list(buf[:n])


def decode(ctx, items: list[tuple[int, int, int, bool]]) -> None:
    """One llama_decode of (token, position, sequence, wants logits) items."""
    batch = c.llama_batch_init(len(items), 0, 1)
    for i, (token, pos, seq, logits) in enumerate(items):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(items)
    try:
        if c.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
    finally:
        c.llama_batch_free(batch)


def prefill(ctx, seq: int, tokens: list[int]) -> np.ndarray:
    """The prompt in chunks of N_BATCH from position 0 (as the runtime does); the last token's logits."""
    for s in range(0, len(tokens), N_BATCH):
        chunk = tokens[s : s + N_BATCH]
        decode(ctx, [(t, s + i, seq, s + i == len(tokens) - 1) for i, t in enumerate(chunk)])
    return logits(ctx, -1)


def logits(ctx, index: int) -> np.ndarray:
    return np.ctypeslib.as_array(c.llama_get_logits_ith(ctx, index), shape=(N_VOCAB,)).copy()


def alone(tokens: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    ctx = new_context(1, True)
    row, out, rows = prefill(ctx, 0, tokens), [], []
    for k in range(steps):
        token = int(np.argmax(row))
        out.append(token)
        rows.append(row)
        decode(ctx, [(token, len(tokens) + k, 0, True)])
        row = logits(ctx, -1)
    c.llama_free(ctx)
    return out, rows


def together(prompts: list[list[int]], steps: list[int], starts: list[int], unified: bool):
    ctx = new_context(len(prompts), unified)
    active: dict[int, list] = {}
    result: dict[int, tuple[list[int], list[np.ndarray]]] = {i: ([], []) for i in range(len(prompts))}
    step = 0
    while step <= max(starts) or active:
        for i, start in enumerate(starts):
            if start == step:
                active[i] = [prefill(ctx, i, prompts[i]), 0]
        items, order = [], []
        for i, (row, k) in list(active.items()):
            token = int(np.argmax(row))
            result[i][0].append(token)
            result[i][1].append(row)
            if k + 1 >= steps[i]:
                del active[i]
                continue
            items.append((token, len(prompts[i]) + k, i, True))
            order.append(i)
            active[i][1] = k + 1
        if items:
            decode(ctx, items)
            for j, i in enumerate(order):
                active[i][0] = logits(ctx, j)
        step += 1
    c.llama_free(ctx)
    return result


def scenario(name: str, prompts: list[str], steps: list[int], starts: list[int]) -> None:
    tokens = [tokenize(p) for p in prompts]
    t0 = time.perf_counter()
    reference = [alone(t, n) for t, n in zip(tokens, steps, strict=True)]
    t_alone = time.perf_counter() - t0
    for unified in (True, False):
        t0 = time.perf_counter()
        got = together(tokens, steps, starts, unified)
        t_batched = time.perf_counter() - t0
        rows = []
        for i, (ref_tokens, ref_rows) in enumerate(reference):
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_rows, got[i][1], strict=True))
            rows.append(f"seq {i} ({len(tokens[i])} prompt tokens): same tokens {ref_tokens == got[i][0]}, "
                        f"max |logit diff| {diff:.3g}")
        print(f"{name}, {'unified KV' if unified else 'one KV stream per sequence'}: alone {t_alone:.2f} s, "
              f"batched {t_batched:.2f} s ({t_alone / t_batched:.2f}x)")
        print("   " + "\n   ".join(rows), flush=True)


def chat(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


if __name__ == "__main__":
    scenario("lockstep", [chat("Be brief.", f"Write a short paragraph about {t}.")
                          for t in ("rivers", "bread baking", "chess openings", "the moon")],
             [48] * 4, [0] * 4)
    rule = "You are a careful assistant. Answer in plain words, briefly, and stay on topic. "
    scenario("staggered", [chat(rule * (1 + 3 * i), f"Tell me about item {i}.") for i in range(6)],
             [20, 60, 35, 50, 10, 45], [0, 0, 5, 12, 12, 30])
