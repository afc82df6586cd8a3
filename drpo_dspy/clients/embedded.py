"""The embedded local model (SmolLM2-135M-Instruct, GGUF, run by llama.cpp) as a litellm custom provider.

``register_embedded_provider()`` adds the ``embedded`` provider to ``litellm.custom_provider_map`` so that
``dspy.LM("embedded/smollm2-135m")`` goes through DSPy's ordinary litellm path (cache, history, callbacks,
adapters). DSPy's ``engine="auto"`` does not know the ``embedded`` provider and falls back to litellm; the model
is registered with litellm as supporting response schemas, so ``dspy.JSONAdapter`` sends a JSON schema that
llama.cpp enforces with a grammar. ``stream=True`` streams the text token by token (``drpo_dspy/engine/stream.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dspy
import litellm
from litellm import CustomLLM, ModelResponse
from litellm.types.utils import GenericStreamingChunk

from drpo_dspy.clients.providers import Sample, message_text, model_response, register_custom_provider
from drpo_dspy.engine.models import (
    DEFAULT_MODEL,
    EMBEDDED_PROVIDER,
    GGUF_ENV_VAR,  # noqa: F401  (re-exported: the default model's file override)
    KNOWN_MODELS,
    LOCAL_HINT,
    EmbeddedModel,
    UnknownEmbeddedModel,
    check_installed,
    model_file,
    resolve_embedded,
)
from drpo_dspy.engine.options import EngineOptions
from drpo_dspy.engine.prefix_cache import PrefixStateCache, TokenStats, prepare_prefix
from drpo_dspy.engine.sampling import grammar_for, install_fast_grammar, sampling_options
from drpo_dspy.engine.stream import TextStream, achunks, chunks, decode_alone
from drpo_dspy.engine.threads import set_thread_wait_policy
from drpo_dspy.engine.workers import Job, ParallelDecoder, sampler_options

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = DEFAULT_MODEL.name
EMBEDDED_MODEL = DEFAULT_MODEL.model
GGUF_FILENAME = DEFAULT_MODEL.filename
N_CTX = 8192
# Prompts are evaluated in chunks of N_BATCH tokens from position 0, and a cached prefix (the last prompt, or a
# snapshot of a stable prefix: see prefix_cache.py) is reused only in whole chunks, so every token is computed
# exactly as in a fresh evaluation: outputs do not depend on call history nor on the prefix cache.
N_BATCH = 64
INSTALL_HINT = LOCAL_HINT

# litellm model info: what DSPy reads for capabilities (response schema -> JSONAdapter sends a schema), free to run.
_MODEL_INFO = {
    "litellm_provider": EMBEDDED_PROVIDER,
    "mode": "chat",
    "supports_response_schema": True,
    "supports_system_messages": True,
    **dict.fromkeys(("max_tokens", "max_input_tokens", "max_output_tokens"), N_CTX),
    **dict.fromkeys(("input_cost_per_token", "output_cost_per_token"), 0.0),
    **dict.fromkeys(("cache_creation_input_token_cost", "cache_read_input_token_cost"), 0.0),
}
_register_lock = threading.Lock()
_runtime_lock = threading.Lock()
_runtimes: dict[str, EmbeddedRuntime] = {}


def gguf_path(model: str = EMBEDDED_MODEL) -> Path:
    """Path of an embedded model's GGUF (default: SmolLM2, or ``$DRPO_EMBEDDED_GGUF``), its hash checked."""
    return model_file(resolve_embedded(model))


def ensure_embedded_runtime(model: str = EMBEDDED_MODEL) -> EmbeddedModel:
    """The embedded model ``model`` names; ``UnknownEmbeddedModel`` (a ValueError) for an unknown name, ImportError
    (with the pip command) unless llama.cpp and the model's file are installed; ValueError for an engine switch
    (``DRPO_EMBEDDED_*``) set to a value that is not one. Loads nothing."""
    spec = resolve_embedded(model)
    EngineOptions.from_env()
    check_installed(spec)
    return spec


class EmbeddedRuntime:
    """The shared ``llama_cpp.Llama`` (tokenizer, sampler settings, the one-at-a-time path) behind one lock
    (llama.cpp is not thread-safe), and the parallel decoders, each owning its own context."""

    def __init__(self, path: Path, model: str = EMBEDDED_MODEL, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions.from_env()  # the engine's switches, read once
        set_thread_wait_policy()
        self.model = model
        import llama_cpp
        import llama_cpp.llama_cpp as capi
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        default_params = capi.llama_model_default_params

        def model_params() -> Any:
            # No extra (repacked) weight buffers: the AMX buffer faults under VMs that do not grant AMX state.
            params = default_params()
            params.use_extra_bufts = False
            return params

        capi.llama_model_default_params = model_params
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=N_CTX,
                n_batch=N_BATCH,
                n_ubatch=N_BATCH,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        finally:
            capi.llama_model_default_params = default_params
        self.n_ctx = self.llm.n_ctx()
        llm = self.llm
        eos, bos = llm.token_eos(), llm.token_bos()
        template = llm.metadata.get("tokenizer.chat_template")
        self.formatter = None if not template else Jinja2ChatFormatter(
            template=template,
            eos_token=llm.detokenize([eos], special=True).decode("utf-8", "ignore") if eos != -1 else "",
            bos_token=llm.detokenize([bos], special=True).decode("utf-8", "ignore") if bos != -1 else "",
            stop_token_ids=[eos],
        )
        self.lock = threading.Lock()
        self._prompt: list[int] = []  # tokens of the last prompt, all evaluated in aligned chunks
        self.prefix_cache = PrefixStateCache(N_BATCH, options.prefix_cache_bytes, enabled=options.prefix_cache)
        self.stats = TokenStats()
        self.fast_grammar = options.fast_grammar
        install_fast_grammar(self.llm, lambda: self.fast_grammar)
        self.parallel = options.parallel
        self.decoder = ParallelDecoder(self.llm, workers=options.workers, n_ctx=self.n_ctx, chunk=N_BATCH,
                                       lock=self.lock, prefix_cache=self.prefix_cache, stats=lambda: self.stats)

    def close(self) -> None:
        """Free llama.cpp (the parallel decoders' contexts, then the model's)."""
        self.decoder.close()
        self.llm.close()

    def chat_prompt(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str], Any]:
        """Apply the model's chat template: (prompt tokens, template stop strings, stopping criteria)."""
        if self.formatter is None:
            raise litellm.BadRequestError(
                f"{self.model} has no chat template: call it as a text model (dspy.LM(..., model_type='text'), "
                "--base-model-type text)", model=self.model, llm_provider=EMBEDDED_PROVIDER)
        result = self.formatter(messages=[{"role": m["role"], "content": message_text(m)} for m in messages])
        tokens = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stops = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return tokens, stops, result.stopping_criteria

    def text_prompt(self, prompt: str) -> list[int]:
        """Tokenize a raw prompt as llama.cpp's create_completion does (model BOS, special tokens parsed)."""
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        return tokens or [self.llm.token_bos()]

    def generate(self, tokens: list[int], *, n: int, seed: int | None, stop: list[str], stopping: Any = None,
                 grammar: Any = None, max_tokens: int | None = None, **sampling: Any) -> list[Sample]:
        """Generate ``n`` independent samples (seeds seed, seed+1, ...) for the prompt tokens."""
        max_tokens, base = self._limits(tokens, max_tokens, seed)
        if self.parallel:
            jobs = [Job(list(tokens), sampler_options(grammar, sampling), (base + i) % 2**32, stop, stopping,
                        max_tokens) for i in range(n)]
            return self.decoder.run(jobs)
        samples = []
        with self.lock:
            for i in range(n):
                self.begin_prompt(tokens)
                out = self.llm.create_completion(prompt=tokens, max_tokens=max_tokens, stop=stop,
                                                 seed=(base + i) % 2**32, stopping_criteria=stopping, grammar=grammar,
                                                 **sampling)
                generated, choice = out["usage"]["completion_tokens"], out["choices"][0]
                self.end_prompt(tokens, generated)
                samples.append(Sample(choice["text"], choice.get("finish_reason") or "stop", generated))
        return samples

    def _limits(self, tokens: list[int], max_tokens: int | None, seed: int | None) -> tuple[int, int]:
        """The request's token limit (at most the context's room) and base seed (random if none)."""
        if len(tokens) >= self.n_ctx:
            raise litellm.ContextWindowExceededError(
                f"prompt has {len(tokens)} tokens; the embedded model's context is {self.n_ctx}", model=self.model,
                llm_provider=EMBEDDED_PROVIDER)
        room = self.n_ctx - len(tokens)
        max_tokens = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        return max_tokens, random.SystemRandom().randrange(2**31) if seed is None else int(seed)

    def stream(self, tokens: list[int], *, seed: int | None, stop: list[str], stopping: Any = None,
               grammar: Any = None, max_tokens: int | None = None, **sampling: Any) -> TextStream:
        """Start one completion (``generate``'s first sample, token for token) whose text arrives as it is made:
        on a parallel decoder when they are on, else on a thread of its own that holds the lock while it decodes
        (``stream.py``). Closing the returned stream's iterator stops the decoding at the next token."""
        max_tokens, base = self._limits(tokens, max_tokens, seed)
        job = Job(list(tokens), sampler_options(grammar, sampling), base % 2**32, stop, stopping, max_tokens,
                  stream=TextStream())
        if self.parallel:
            self.decoder.submit([job])
        else:
            threading.Thread(target=decode_alone, args=(self, job), name="drpo-embedded-stream", daemon=True).start()
        return job.stream  # type: ignore[return-value]

    def begin_prompt(self, tokens: list[int]) -> None:
        """One-at-a-time path, lock held: bring the shared context to the prompt's longest reusable prefix."""
        prepare_prefix(self.llm, self.prefix_cache, self.stats, self._prompt, tokens)
        self._prompt = []  # unknown state until this generation completes

    def end_prompt(self, tokens: list[int], generated: int) -> None:
        """One-at-a-time path, lock held: a generation from ``tokens`` ended (the context holds the prompt)."""
        self._prompt = list(tokens)
        self.stats.generated_tokens += generated

    def reset(self) -> None:
        """Forget the cached prompt: the next generation evaluates its prompt from scratch (snapshots are kept)."""
        with self.lock:
            self._prompt = []
            self.llm.reset()
            self.decoder.forget_prompts()

    def configure(
        self,
        *,
        prefix_cache: bool | None = None,
        fast_grammar: bool | None = None,
        max_bytes: int | None = None,
        parallel: bool | None = None,
    ) -> None:
        """Switch the prefix cache, the fast grammar check and the parallel decoders on or off, set the cache's
        memory budget (any cache or decoder change empties the cache: the two paths snapshot differently). Outputs
        are the same either way; only the time differs."""
        with self.lock:
            if fast_grammar is not None:
                self.fast_grammar = fast_grammar
            if parallel is not None and parallel != self.parallel:
                self.parallel = parallel
                self.prefix_cache.clear()
            if prefix_cache is not None or max_bytes is not None:
                self.prefix_cache.enabled = self.prefix_cache.enabled if prefix_cache is None else prefix_cache
                self.prefix_cache.max_bytes = self.prefix_cache.max_bytes if max_bytes is None else max_bytes
                self.prefix_cache.clear()

    def reset_stats(self) -> TokenStats:
        """Return the token counters so far and start new ones."""
        with self.lock:
            stats, self.stats = self.stats, TokenStats()
        return stats


def get_runtime(model: str = EMBEDDED_MODEL) -> EmbeddedRuntime:
    """The runtime of one embedded model, loaded on first use (no network); each model has its own."""
    spec = resolve_embedded(model)
    runtime = _runtimes.get(spec.name)
    if runtime is None:
        with _runtime_lock:
            runtime = _runtimes.get(spec.name)
            if runtime is None:
                check_installed(spec)
                path = model_file(spec)
                started = time.perf_counter()
                runtime = _runtimes[spec.name] = EmbeddedRuntime(path, spec.model)
                atexit.register(runtime.close)  # free llama.cpp before interpreter teardown
                logger.info("Loaded %s (%s) in %.2fs", spec.model, path.name, time.perf_counter() - started)
    return runtime


def loaded_runtimes() -> dict[str, EmbeddedRuntime]:
    """The runtimes loaded so far, by model name."""
    return dict(_runtimes)


def _request(messages: list[dict[str, Any]] | None, params: dict[str, Any], prompt: str | None, model: str
             ) -> tuple[EmbeddedRuntime, list[int], dict[str, Any]]:
    """The runtime, prompt tokens and ``generate`` arguments of a request (chat ``messages`` or raw ``prompt``)."""
    try:
        runtime = get_runtime(model)
    except UnknownEmbeddedModel as exc:  # not retryable: no such model
        raise litellm.NotFoundError(str(exc), model=model, llm_provider=EMBEDDED_PROVIDER) from exc
    except (ImportError, ValueError) as exc:  # not retryable: surface it as a bad request carrying the pip command
        raise litellm.BadRequestError(str(exc), model=model, llm_provider=EMBEDDED_PROVIDER) from exc
    if prompt is None:
        tokens, template_stops, stopping = runtime.chat_prompt(messages or [])
        options = sampling_options(params, "chat", model)
        options["stop"] = options["stop"] + template_stops
    else:
        tokens, stopping = runtime.text_prompt(prompt), None
        options = sampling_options(params, "text", model)
    return runtime, tokens, {**options, "stopping": stopping, "grammar": grammar_for(params.get("response_format"))}


def complete_embedded(
    messages: list[dict[str, Any]] | None,
    params: dict[str, Any],
    *,
    prompt: str | None = None,
    model: str = EMBEDDED_MODEL,
    response: ModelResponse | None = None,
) -> ModelResponse:
    """Run the embedded model ``model`` (``[drpo_text/]embedded/<name>``) on chat ``messages`` (chat template) or
    on a raw ``prompt`` (no template)."""
    runtime, tokens, options = _request(messages, params, prompt, model)
    return model_response(model, runtime.generate(tokens, **options), len(tokens), response)


def stream_embedded(messages: list[dict[str, Any]] | None, params: dict[str, Any], *, prompt: str | None = None,
                    model: str = EMBEDDED_MODEL) -> tuple[TextStream, int]:
    """``complete_embedded`` as a stream of its text (one completion: n must be 1), and the prompt's tokens."""
    if (params.get("n") or 1) != 1:
        raise litellm.BadRequestError("n above 1 cannot be streamed", model=model, llm_provider=EMBEDDED_PROVIDER)
    runtime, tokens, options = _request(messages, params, prompt, model)
    del options["n"]
    return runtime.stream(tokens, **options), len(tokens)


class EmbeddedLLM(CustomLLM):
    """litellm handler for ``embedded/<name>``: chat completions from the shared llama.cpp model."""

    def completion(
        self,
        model: str,
        messages: list,
        *args: Any,
        optional_params: dict | None = None,
        model_response: ModelResponse | None = None,
        **kwargs: Any,
    ) -> ModelResponse:
        return complete_embedded(
            messages, dict(optional_params or {}), model=f"{EMBEDDED_PROVIDER}/{model}", response=model_response
        )

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

    def streaming(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,
                  **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        """The completion's text as it is generated (see ``embedded_stream``); the last chunk has the usage."""
        stream, prompt_tokens = stream_embedded(messages, dict(optional_params or {}),
                                                model=f"{EMBEDDED_PROVIDER}/{model}")
        return chunks(stream, prompt_tokens)

    async def astreaming(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,
                         **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        stream, prompt_tokens = await asyncio.to_thread(stream_embedded, messages, dict(optional_params or {}),
                                                        model=f"{EMBEDDED_PROVIDER}/{model}")
        try:
            async for chunk in achunks(stream, prompt_tokens):
                yield chunk
        finally:  # closed early by its reader: stop the decoder now (an inner generator closes only when collected)
            stream.cancel()


def register_embedded_provider(*models: str) -> None:
    """Register the ``embedded`` litellm provider and the model info of the known models and of ``models``
    (idempotent, thread-safe, loads nothing); an unknown ``embedded/...`` name raises ``UnknownEmbeddedModel``."""
    names = [spec.model for spec in KNOWN_MODELS.values()]
    names += [resolve_embedded(m).model for m in models]
    register_custom_provider(EMBEDDED_PROVIDER, EmbeddedLLM)
    with _register_lock:
        for name in names:
            if litellm.model_cost.get(name, {}).get("litellm_provider") != EMBEDDED_PROVIDER:
                litellm.register_model({name: _MODEL_INFO})


def embedded_lm(model: str = EMBEDDED_MODEL, **kwargs: Any) -> dspy.LM:
    """Register the provider and return ``dspy.LM(model, engine="litellm", temperature=0.0, max_tokens=512,
    **kwargs)`` for an embedded model (``embedded/smollm2-135m``, ``embedded/gemma-3-270m``,
    ``embedded/<path to a .gguf>``). ``model_type`` defaults to the model's route: ``"text"`` for base models (the
    DRPO layout is completed as raw text), ``"chat"`` for instruction-tuned ones. Raises ``UnknownEmbeddedModel``
    for an unknown name and ImportError with the pip command if llama.cpp or the model's file is missing."""
    spec = ensure_embedded_runtime(model)
    register_embedded_provider(model)
    kwargs.setdefault("engine", "litellm")
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 512)
    kwargs.setdefault("model_type", spec.route)
    return dspy.LM(spec.model, **kwargs)
