"""Shared fixtures: isolate DSPy settings and caches per test, never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dspy
import pytest

import drpo_dspy  # noqa: F401


@pytest.fixture(autouse=True)
def isolated_dspy(tmp_path_factory):
    """Memory-only LM cache and default settings for every test."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    with dspy.context(lm=None, adapter=None):
        yield


@pytest.fixture()
def embedded_runtime():
    """The real embedded runtime (skipped when llama.cpp or the model file is missing); its speed-up switches are
    put back to their environment defaults afterwards, whatever the test set."""
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients import embedded
    from drpo_dspy.engine.options import EngineOptions

    try:
        runtime = embedded.get_runtime()
    except ImportError as exc:
        pytest.skip(str(exc))
    yield runtime
    options = EngineOptions.from_env()
    runtime.configure(prefix_cache=options.prefix_cache, fast_grammar=options.fast_grammar, parallel=options.parallel)
