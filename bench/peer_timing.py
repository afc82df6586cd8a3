"""Timing peers fairly on a shared machine: every peer takes its turn on each item."""

from __future__ import annotations

import time

import numpy as np


def interleaved(peers: dict[str, object], items: list) -> dict[str, tuple[np.ndarray, list]]:
    """Per-item latency of every peer, the peers taking turns on each item so that the load of the shared machine
    falls on all of them alike; one warm-up call each."""
    for fn in peers.values():
        fn(items[0])
    lat = {name: np.empty(len(items)) for name in peers}
    out: dict[str, list] = {name: [] for name in peers}
    for i, item in enumerate(items):
        for name, fn in peers.items():
            t0 = time.perf_counter()
            out[name].append(fn(item))
            lat[name][i] = time.perf_counter() - t0
    return {name: (lat[name], out[name]) for name in peers}
