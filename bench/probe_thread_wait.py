"""Probe: how llama.cpp's threads should wait for each other on the embedded model (OpenMP spin count).

Each configuration runs in a fresh process (libgomp reads its settings once): one sequence, 60 decoding steps at
about 400 cached tokens on every core, and the mean step time, on a quiet machine and beside ``--busy`` processes
that spin on the CPU (a machine shared with other work).

    nice python bench/probe_thread_wait.py [--busy 2] [--spins 0,300,30000,default]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    os.environ["PROBE_FLASH_ATTN"] = "off"
    import probe_batched_decode as p

    ctx = p.new_context(1, True)
    tokens = p.tokenize(p.chat("You are a careful assistant. Answer in plain words. " * 30, "Tell me a story."))
    p.prefill(ctx, 0, tokens)
    started = time.perf_counter()
    for step in range(60):
        p.decode(ctx, [(100, len(tokens) + step, 0, True)])
    print(json.dumps({"step_ms": round((time.perf_counter() - started) / 60 * 1e3, 2), "cached": len(tokens)}))


def run(spins: str, busy: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if spins == "default":
        env["PROBE_DEFAULT_WAIT"] = "1"
    else:
        env.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=spins)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                             timeout=600, check=True)
    finally:
        for hog in hogs:
            hog.kill()
    return json.loads(out.stdout.strip().splitlines()[-1])["step_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the loaded runs (default 2)")
    parser.add_argument("--spins", default="0,300,30000,default",
                        help="GOMP_SPINCOUNT values with OMP_WAIT_POLICY=PASSIVE; 'default' sets neither")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    for spins in args.spins.split(","):
        quiet = [run(spins, 0) for _ in range(args.repeats)]
        loaded = [run(spins, args.busy) for _ in range(args.repeats)]
        print(f"spins={spins:>8}: quiet {quiet} ms/step, beside {args.busy} busy processes {loaded} ms/step",
              flush=True)


if __name__ == "__main__":
    main()
