"""KV-cache snapshots of evaluated prompts for the embedded model, and counters of evaluated vs reused tokens.

The four DRPO roles interleave on one llama.cpp context, so llama.cpp's own prefix reuse only helps when two calls
in a row share a prefix. ``PrefixStateCache`` keeps a snapshot of the context after each prompt (its whole chunks)
and, for the next prompt, restores the snapshot sharing the longest prefix with it (a role's system message with
the signature's instructions, a candidate prompt with its examples, a query) and drops the rest of it, instead of
evaluating that prefix again.

Bit-identical outputs: prompts are always evaluated in chunks of ``chunk`` tokens from position 0 and only whole
chunks are reused, so every token restored was computed exactly as a fresh evaluation computes it.
This module holds the bookkeeping and the snapshot functions (llama.cpp is imported only when they run).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def align_down(n: int, chunk: int) -> int:
    """``n`` rounded down to a multiple of ``chunk``."""
    return n // chunk * chunk


def reusable_length(shared: int, prompt_length: int, chunk: int) -> int:
    """Tokens of a prompt that may be taken from a cache when ``shared`` leading tokens are known: whole chunks,
    and never the prompt's last token (it must be evaluated to produce the first logits)."""
    return align_down(max(0, min(shared, prompt_length - 1)), chunk)


@dataclass
class TokenStats:
    """What the embedded model evaluated: prompt tokens sent, taken from a cache (context or snapshot), computed."""

    calls: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    evaluated_tokens: int = 0
    snapshot_restores: int = 0
    snapshot_saves: int = 0
    restored_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0  # parallel decoders: time spent evaluating prompts and generating, all summed
    decode_seconds: float = 0.0

    def record(self, prompt_tokens: int, reused: int) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.reused_tokens += reused
        self.evaluated_tokens += prompt_tokens - reused

    def as_dict(self) -> dict[str, float]:
        data: dict[str, float] = dict(asdict(self))
        calls = max(self.calls, 1)
        data["prompt_tokens_per_call"] = round(self.prompt_tokens / calls, 1)
        data["evaluated_tokens_per_call"] = round(self.evaluated_tokens / calls, 1)
        data["prompt_seconds"] = round(self.prompt_seconds, 2)
        data["decode_seconds"] = round(self.decode_seconds, 2)
        return data


class PrefixStateCache:
    """Snapshots keyed by a chunk-aligned token prefix, least recently used evicted beyond ``max_bytes``."""

    def __init__(self, chunk: int, max_bytes: int, enabled: bool = True) -> None:
        if chunk < 1:
            raise ValueError("chunk must be positive")
        self.chunk = chunk
        self.max_bytes = max_bytes
        self.enabled = enabled
        self._entries: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def longest(self, tokens: Sequence[int]) -> tuple[int, bytes | None]:
        """The stored state sharing the most whole chunks with ``tokens`` (leaving at least one token to evaluate):
        (reusable length, state). The state may hold more tokens; only the first ``length`` are to be kept."""
        if not self.enabled:
            return 0, None
        with self._lock:
            best, best_key = 0, None
            for key in self._entries:
                length = reusable_length(common_prefix_length(key, tokens), len(tokens), self.chunk)
                if length > best:
                    best, best_key = length, key
            if best_key is None:
                return 0, None
            self._entries.move_to_end(best_key)
            return best, self._entries[best_key]

    def wants(self, prefix_length: int, tokens: Sequence[int]) -> bool:
        """Whether a snapshot of ``tokens[:prefix_length]`` adds anything: aligned, non-empty, and no stored state
        already starts with these tokens."""
        if not self.enabled or prefix_length <= 0 or prefix_length % self.chunk:
            return False
        with self._lock:
            return all(common_prefix_length(key, tokens[:prefix_length]) < prefix_length for key in self._entries)

    def put(self, prefix: Sequence[int], state: bytes) -> None:
        """Store the state after ``prefix`` (a multiple of ``chunk`` tokens), replacing the states whose tokens it
        extends; evict the least recently used beyond the budget."""
        if not self.enabled or len(prefix) % self.chunk or len(state) > self.max_bytes:
            return
        key = tuple(prefix)
        with self._lock:
            for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
                self._bytes -= len(self._entries.pop(old))
            self._entries[key] = state
            self._bytes += len(state)
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)


def snapshot_state(llm: Any) -> bytes:
    """The llama.cpp context state (the KV cells in use and the last logits) of a ``llama_cpp.Llama``, as bytes."""
    import ctypes

    import llama_cpp

    size = llama_cpp.llama_state_get_size(llm.ctx)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_get_data(llm.ctx, buffer, size)
    if written > size:
        raise RuntimeError("llama.cpp wrote more state than it announced")
    return ctypes.string_at(buffer, written)


def restore_state(llm: Any, state: bytes, prefix: Sequence[int]) -> None:
    """Put a ``llama_cpp.Llama`` back in a stored state and keep its first ``len(prefix)`` tokens (``prefix``)."""
    import ctypes

    import llama_cpp

    buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if llama_cpp.llama_state_set_data(llm.ctx, buffer, len(state)) != len(state):
        raise RuntimeError("llama.cpp could not restore a prefix state")
    llm.input_ids[: len(prefix)] = prefix
    llm.n_tokens = len(prefix)  # the next evaluation drops the state's cells from here on


def prepare_prefix(
    llm: Any, cache: PrefixStateCache, stats: TokenStats, last_prompt: Sequence[int], tokens: Sequence[int]
) -> None:
    """Bring ``llm`` to the longest reusable prefix of ``tokens`` (the last prompt's, still in the context, or a
    snapshot's), evaluate the prompt's remaining whole chunks and snapshot them; all chunk-aligned.
    ``llm.create_completion(tokens)`` then evaluates only the last partial chunk."""
    chunk = cache.chunk
    reused = reusable_length(common_prefix_length(last_prompt, tokens), len(tokens), chunk)
    stored, state = cache.longest(tokens)
    if state is not None and stored > reused:
        restore_state(llm, state, tokens[:stored])
        reused = stored
        stats.snapshot_restores += 1
        stats.restored_tokens += stored
    elif reused == 0:
        llm.reset()
    else:
        llm.n_tokens = min(llm.n_tokens, reused)
    stats.record(len(tokens), reused)
    whole = reusable_length(len(tokens), len(tokens), chunk)
    if cache.wants(whole, tokens):
        if whole > reused:
            llm.eval(tokens[reused:whole])
        cache.put(tokens[:whole], snapshot_state(llm))
        stats.snapshot_saves += 1
