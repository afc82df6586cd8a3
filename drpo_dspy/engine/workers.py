"""The embedded model's concurrent requests on parallel decoders: one llama.cpp context and one core per request.

A search level sends its requests (answers, judgments, rewrites) at once, from several threads. On a small model
like SmolLM2-135M a generated token costs about the same on one thread as on two (7.2 vs 7.0 ms on 2 cores: the
work is too small to share), and batching two sequences in one evaluation costs twice one. Two requests decoded at
the same time on two single-threaded contexts cost 3.7-5.6 ms a token (``bench/probe_decode_costs.py``).
``ParallelDecoder`` therefore runs ``workers`` threads, each with its own llama.cpp context: a worker takes a queued
request, evaluates its prompt (with every core no other worker is using) and generates its tokens on one thread.

Bit-identical outputs, whichever worker runs a request and whatever runs beside it:
- llama.cpp computes each output of an operation on one thread, so the thread count does not change a result;
- attention without flash attention (llama-cpp-python's default) and one sequence per context;
- a prompt is evaluated in chunks of ``chunk`` tokens from position 0, and a worker's previous prompt or a prefix
  snapshot (``prefix_cache.py``, per sequence, usable by any worker) is reused only in whole chunks;
- each request gets the sampler chain llama-cpp-python builds (penalties, grammar, seed), and its text is
  assembled as ``create_completion`` assembles it (``completion_text.py``).

A streamed request (``Job.stream``, see ``stream.py``) is decoded the same way; its worker hands the text
over after each token and stops at the next token once the reader has gone.

Switches (``options.py``): ``$DRPO_EMBEDDED_PARALLEL=0`` keeps one request at a time through llama-cpp-python;
``$DRPO_EMBEDDED_WORKERS`` (default: the usable cores, at most 4). Each worker holds a full context's KV cache (about
23 KB per token on SmolLM2-135M, 190 MB at 8192 tokens), allocated when it first runs.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.engine.completion_text import CompletionText, Sample
from drpo_dspy.engine.options import usable_cores
from drpo_dspy.engine.prefix_cache import PrefixStateCache, TokenStats, common_prefix_length, reusable_length
from drpo_dspy.engine.stream import StreamCancelled, TextStream


def sampler_options(grammar: Any, sampling: dict[str, Any]) -> dict[str, Any]:
    """``Llama._init_sampler`` arguments as ``create_completion`` passes them (its defaults for what is left out)."""
    return {
        "top_k": sampling.get("top_k", 40),
        "top_p": sampling.get("top_p", 0.95),
        "min_p": sampling.get("min_p", 0.05),
        "typical_p": 1.0,
        "temp": sampling.get("temperature", 0.8),
        "repeat_penalty": sampling.get("repeat_penalty", 1.0),
        "frequency_penalty": sampling.get("frequency_penalty", 0.0),
        "presence_penalty": sampling.get("presence_penalty", 0.0),
        "tfs_z": 1.0,
        "mirostat_mode": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "penalize_nl": True,
        "logits_processor": None,
        "grammar": grammar,
    }


@dataclass
class Job:
    """One completion to produce: the prompt, how to sample, how to stop; filled with its sample or error."""

    tokens: list[int]
    sampling: dict[str, Any]  # keyword arguments of ``Llama._init_sampler``
    seed: int
    stop: list[str]
    stopping: Any
    max_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    sample: Sample | None = None
    error: BaseException | None = None
    stream: TextStream | None = None  # a streamed job hands its text over token by token

    def settle(self, error: BaseException | None = None) -> None:
        """The job is over (with ``error`` if it failed): wake whoever waits or reads."""
        if error is not None:
            self.error = error
        if self.stream is not None and self.error is not None:
            self.stream.fail(self.error)
        self.done.set()


class _ContextRef:
    """What a llama-cpp-python sampler's ``sample(ctx, idx)`` reads: the raw context as ``.ctx``."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx


class _Worker:
    """One thread, one llama.cpp context (one sequence), one request at a time."""

    def __init__(self, owner: ParallelDecoder, index: int) -> None:
        self.owner = owner
        self.index = index
        self.ctx: Any = None
        self.memory: Any = None
        self.ref: _ContextRef | None = None
        self.prompt: list[int] = []  # the last prompt evaluated here, in aligned chunks
        self.batch_threads = 0
        self.thread = threading.Thread(target=self.loop, name=f"drpo-embedded-worker-{index}", daemon=True)

    def context(self) -> Any:
        if self.ctx is None:
            import llama_cpp

            llm = self.owner.llm
            params = type(llm.context_params).from_buffer_copy(llm.context_params)
            params.n_ctx = self.owner.n_ctx
            params.n_seq_max = 1
            params.n_batch = params.n_ubatch = self.owner.chunk
            params.n_threads = params.n_threads_batch = self.owner.decode_threads
            ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
            if not ctx:
                raise RuntimeError("llama.cpp could not create a context for a parallel decoder")
            self.ctx, self.memory, self.ref = ctx, llama_cpp.llama_get_memory(ctx), _ContextRef(ctx)
            self.batch_threads = self.owner.decode_threads
        return self.ctx

    def loop(self) -> None:
        owner = self.owner
        while True:
            job = owner.next_job(self)
            if job is None:
                return
            owner.busy_changed(+1)
            try:
                self.serve(job)
            except Exception as exc:  # this job fails; the worker goes on
                self.prompt = []
                job.error = exc
            finally:
                owner.busy_changed(-1)
                job.settle()

    def serve(self, job: Job) -> None:
        owner = self.owner
        if job.stream is not None and job.stream.cancelled.is_set():
            job.error = StreamCancelled("the stream's reader went away before it started")
            return
        self.context()
        with owner.lock:  # the sampler is built from the shared Llama's settings
            owner.llm.set_seed(job.seed)
            sampler = owner.llm._init_sampler(**job.sampling)
        try:
            started = time.perf_counter()
            last = self.prefill(job.tokens)
            prompt_done = time.perf_counter()
            text = CompletionText(owner.llm, job.tokens, stop=job.stop, stopping=job.stopping,
                                  max_tokens=job.max_tokens)
            position, stream = len(job.tokens), job.stream
            while not text.add(sampler.sample(self.ref, last)):
                if stream is not None and stream.offer(text.certain()):
                    break  # the reader has gone: the context is left as after a finished completion
                self.decode([text.tokens[-1]], position, logits_for_last=True)
                position += 1
                last = 0
            self.prompt = list(job.tokens)
            with owner.lock:
                stats: TokenStats = owner.stats()
                stats.generated_tokens += len(text.tokens)
                stats.prompt_seconds += prompt_done - started
                stats.decode_seconds += time.perf_counter() - prompt_done
            if not text.done:
                job.error = StreamCancelled("the stream's reader went away")
                return
            job.sample = text.sample()
            if stream is not None:
                stream.finish(job.sample, text.certain())
        finally:
            close = getattr(sampler, "close", None)
            if close is not None:
                close()

    def prefill(self, tokens: list[int]) -> int:
        """Bring the prompt into the context (reusing whole chunks), evaluate the rest; the last logits' index."""
        owner, chunk = self.owner, self.owner.chunk
        reused = reusable_length(common_prefix_length(self.prompt, tokens), len(tokens), chunk)
        stored, state = owner.prefix_cache.longest(tokens)
        self.prompt = []  # unknown state until this request completes
        restored = state is not None and stored > reused
        if restored:
            self.restore(state, stored)
            reused = stored
        else:
            self.remove(reused)
        whole = reusable_length(len(tokens), len(tokens), chunk)
        snapshot = owner.prefix_cache.wants(whole, tokens)
        with owner.lock:
            stats: TokenStats = owner.stats()
            stats.record(len(tokens), reused)
            if restored:
                stats.snapshot_restores += 1
                stats.restored_tokens += stored
            if snapshot:
                stats.snapshot_saves += 1
        if snapshot:
            if whole > reused:
                self.evaluate(tokens, reused, whole)
                reused = whole
            owner.prefix_cache.put(tokens[:whole], self.snapshot())
        return self.evaluate(tokens, reused, len(tokens))

    def evaluate(self, tokens: Sequence[int], start: int, end: int) -> int:
        """Evaluate ``tokens[start:end]`` in chunks (``start`` is chunk-aligned) with the cores no other worker is
        using; the batch index of the last token's logits."""
        last = -1
        for begin in range(start, end, self.owner.chunk):
            part = list(tokens[begin : min(end, begin + self.owner.chunk)])
            self.set_batch_threads(self.owner.free_cores())
            self.decode(part, begin, logits_for_last=True)
            last = len(part) - 1
        return last

    def set_batch_threads(self, threads: int) -> None:
        if threads != self.batch_threads:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self.ctx, self.owner.decode_threads, threads)
            self.batch_threads = threads

    def decode(self, tokens: list[int], position: int, *, logits_for_last: bool) -> None:
        import llama_cpp

        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits_for_last and i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            status = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if status != 0:
            self.remove(0)
            raise RuntimeError(f"llama.cpp failed to evaluate {len(tokens)} token(s) at position {position} "
                               f"(status {status}; the context holds {self.owner.n_ctx} tokens)")

    def remove(self, start: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, 0, start, -1)

    def snapshot(self) -> bytes:
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(self.ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, 0)
        if written == 0 or written > size:
            raise RuntimeError("llama.cpp could not save a sequence state")
        return ctypes.string_at(buffer, written)

    def restore(self, state: bytes, keep: int) -> None:
        import llama_cpp

        self.remove(0)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self.ctx, buffer, len(state), 0) != len(state):
            self.remove(0)
            raise RuntimeError("llama.cpp could not restore a sequence state")
        self.remove(keep)

    def free(self) -> None:
        if self.ctx is not None:
            import llama_cpp

            llama_cpp.llama_free(self.ctx)
            self.ctx = None


class ParallelDecoder:
    """Queued completions served by ``workers`` threads, each with its own single-sequence llama.cpp context."""

    def __init__(self, llm: Any, *, workers: int, n_ctx: int, chunk: int, lock: threading.Lock,
                 prefix_cache: PrefixStateCache, stats: Callable[[], TokenStats], cores: int | None = None) -> None:
        self.llm = llm
        self.n_workers = workers
        self.n_ctx = n_ctx
        self.chunk = chunk
        self.cores = cores or usable_cores()
        self.decode_threads = max(1, self.cores // workers)  # one core per worker when there are enough workers
        self.lock = lock  # the runtime's lock: the shared Llama, the counters
        self.prefix_cache = prefix_cache
        self.stats = stats
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._workers: list[_Worker] = []
        self._busy = 0
        self.peak_busy = 0
        self._closed = False

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` without waiting (a streamed job reports through its stream)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedded model's parallel decoder is closed")
            while len(self._workers) < self.n_workers:
                worker = _Worker(self, len(self._workers))
                self._workers.append(worker)
                worker.thread.start()
            self._pending.extend(jobs)
            self._cond.notify_all()

    def run(self, jobs: Sequence[Job]) -> list[Sample]:
        """Queue ``jobs``, wait for all, and return their samples in order (the first failure is raised)."""
        self.submit(jobs)
        for job in jobs:
            while not job.done.wait(1.0):
                with self._cond:
                    if not any(w.thread.is_alive() for w in self._workers):
                        raise RuntimeError("the embedded model's decoder threads stopped")
        for job in jobs:
            if job.error is not None:
                raise job.error
        return [job.sample for job in jobs if job.sample is not None]

    def next_job(self, worker: _Worker) -> Job | None:
        """The queued job sharing the most with the worker's last prompt (the oldest among equals); None to stop."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            best = max(range(len(self._pending)),
                       key=lambda i: (common_prefix_length(worker.prompt, self._pending[i].tokens) >= self.chunk, -i))
            job = self._pending[best]
            del self._pending[best]
            return job

    def busy_changed(self, delta: int) -> None:
        with self._cond:
            self._busy += delta
            self.peak_busy = max(self.peak_busy, self._busy)

    def free_cores(self) -> int:
        """Threads for a worker's prompt evaluation: its share of the cores among the busy workers."""
        with self._cond:
            return max(self.decode_threads, self.cores // max(1, self._busy))

    def forget_prompts(self) -> None:
        """Evaluate the next prompts from scratch (snapshots are kept)."""
        with self._cond:
            for worker in self._workers:
                worker.prompt = []

    def close(self) -> None:
        """Stop the workers (queued jobs fail) and free their contexts."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.settle(RuntimeError("the embedded model was closed"))
            self._pending.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.thread.join(timeout=30)
            if not worker.thread.is_alive():
                worker.free()
