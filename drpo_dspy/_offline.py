"""Offline-by-default environment settings, applied before litellm or a model hub is touched."""

from __future__ import annotations

import os

_DEFAULTS = {
    # litellm otherwise fetches its price map from the internet at import time.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # The embedded embedder ships inside a package; never ask a hub.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # llama.cpp's threads spin while waiting by default; on a shared 2-core machine that collapses throughput.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def apply_offline_defaults() -> None:
    """Set the offline defaults where the user has not chosen a value."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
