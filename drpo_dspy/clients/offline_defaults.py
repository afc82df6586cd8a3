"""The one environment default the package sets on import: litellm's bundled price map.

Without ``LITELLM_LOCAL_MODEL_COST_MAP`` litellm fetches its price map from the internet when it is imported and
retries for seconds when offline. That variable is set only when the user has not chosen a value, and only because
it must be set before litellm is imported. Nothing else in the user's process changes on import: the packaged
embedder and GGUF model are loaded by local path, so no Hugging Face setting is needed, and the llama.cpp
thread policy is set only when the embedded model is first loaded (see :mod:`drpo_dspy.clients.embedded`).
"""

from __future__ import annotations

import os

LITELLM_PRICE_MAP_VAR = "LITELLM_LOCAL_MODEL_COST_MAP"


def apply_offline_defaults() -> None:
    """Use litellm's bundled price map unless the user chose otherwise (must run before litellm is imported)."""
    os.environ.setdefault(LITELLM_PRICE_MAP_VAR, "True")
