"""Synthetic unit vectors for retrieval benchmarks at sizes no embedder can fill on these machines.

"clustered": about 100 points around each random centre, like queries grouped in topics; "uniform": pure noise in
``dim`` dimensions, where every neighbour is a near-tie. Generated in chunks to bound memory.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 100_000


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Normalise the rows of ``a`` in place (chunk by chunk) and return it."""
    for start in range(0, len(a), _CHUNK):
        a[start : start + _CHUNK] /= np.linalg.norm(a[start : start + _CHUNK], axis=1, keepdims=True)
    return a


def synthetic(n: int, m: int, dim: int, mode: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` bank and ``m`` query unit vectors (float32) of the same distribution."""
    if mode == "uniform":
        return unit_rows(rng.standard_normal((n, dim), dtype=np.float32)), \
            unit_rows(rng.standard_normal((m, dim), dtype=np.float32))
    if mode != "clustered":
        raise ValueError(f"mode must be 'clustered' or 'uniform', got {mode!r}")
    centres = unit_rows(rng.standard_normal((max(1, n // 100), dim), dtype=np.float32))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, _CHUNK):
            stop = min(count, start + _CHUNK)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
            out[start:stop] = centres[rng.integers(0, len(centres), stop - start)] + noise
        return unit_rows(out)

    return draw(n), draw(m)
