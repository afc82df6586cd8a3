"""The embedded engine's switches, read from the environment in one place and checked.

| variable | default | what it does |
|---|---|---|
| ``DRPO_EMBEDDED_PREFIX_CACHE`` | on | keep snapshots of evaluated prompt prefixes and restore them |
| ``DRPO_EMBEDDED_PREFIX_CACHE_MB`` | 512 | the snapshots' memory budget, in megabytes |
| ``DRPO_EMBEDDED_FAST_GRAMMAR`` | on | under a JSON grammar, check the best token first (bit-identical output) |
| ``DRPO_EMBEDDED_PARALLEL`` | on | decode concurrent requests on parallel single-core decoders |
| ``DRPO_EMBEDDED_WORKERS`` | the usable cores, at most 4 | how many parallel decoders |
| ``DRPO_EMBEDDED_GGUF`` | unset | a GGUF file that replaces the default model's (see ``models.py``) |

A switch is on unless set to 0, false, off or no (empty means the default); any other word is refused, as is a
number that is not one, with the variable's name, before a model is loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX_CACHE_ENV_VAR = "DRPO_EMBEDDED_PREFIX_CACHE"
PREFIX_CACHE_MB_ENV_VAR = "DRPO_EMBEDDED_PREFIX_CACHE_MB"
FAST_GRAMMAR_ENV_VAR = "DRPO_EMBEDDED_FAST_GRAMMAR"
PARALLEL_ENV_VAR = "DRPO_EMBEDDED_PARALLEL"
WORKERS_ENV_VAR = "DRPO_EMBEDDED_WORKERS"
DEFAULT_PREFIX_CACHE_MB = 512
MAX_DEFAULT_WORKERS = 4
_OFF, _ON = {"0", "false", "off", "no"}, {"1", "true", "on", "yes"}


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class EngineOptions:
    """How the embedded runtime runs: its speed-ups and their sizes (none of them changes an output)."""

    prefix_cache: bool = True
    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB
    fast_grammar: bool = True
    parallel: bool = True
    workers: int = max(1, min(usable_cores(), MAX_DEFAULT_WORKERS))

    @property
    def prefix_cache_bytes(self) -> int:
        return int(self.prefix_cache_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineOptions:
        """The options ``environ`` (default: this process's environment) sets; ValueError naming the variable for
        a value that is not one."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(prefix_cache=_switch(env, PREFIX_CACHE_ENV_VAR, default.prefix_cache),
                   prefix_cache_mb=_number(env, PREFIX_CACHE_MB_ENV_VAR, default.prefix_cache_mb, minimum=0),
                   fast_grammar=_switch(env, FAST_GRAMMAR_ENV_VAR, default.fast_grammar),
                   parallel=_switch(env, PARALLEL_ENV_VAR, default.parallel),
                   workers=int(_number(env, WORKERS_ENV_VAR, default.workers, minimum=1, integer=True)))


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _OFF or raw in _ON:
        return raw in _ON
    raise ValueError(f"{name}={env[name]!r} is not a switch: use 1/0, on/off, true/false or yes/no")


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{name}={env[name]!r} must be {kind} >= {minimum:g}")
    return value
