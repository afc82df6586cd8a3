"""drpo-dspy: DRPO (Dynamic Rewarding with Prompt Optimization) as a DSPy optimizer.

The public names are imported on first use (``from drpo_dspy import DRPO`` works as always), so importing the
package, and starting the ``drpo`` command, does not import DSPy, litellm or torch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from drpo_dspy.clients import offline_defaults as _offline
from drpo_dspy.log_stream import configure_package_logger as _configure_logger

_offline.apply_offline_defaults()
_configure_logger(__name__)  # INFO progress through DSPy's stream: dspy.disable_logging() silences it too
# In Jupyter without ipywidgets, importing tqdm.auto (DSPy, transformers) warns "IProgress not found" although its
# text progress bars work; only that notice is hidden.
warnings.filterwarnings("ignore", message="IProgress not found")

_EXPORTS = {
    "DEFAULT_INSTRUCTIONS": "drpo_dspy.modules.aligned_responder",
    "AlignedResponder": "drpo_dspy.modules.aligned_responder",
    "AlignmentBank": "drpo_dspy.retrievers.bank",
    "ICLExample": "drpo_dspy.retrievers.bank",
    "Aspect": "drpo_dspy.rewards.aspects",
    "AspectCatalogue": "drpo_dspy.rewards.aspects",
    "DynamicReward": "drpo_dspy.rewards.metric",
    "DRPO": "drpo_dspy.teleprompt.drpo",
    "DRPOResult": "drpo_dspy.teleprompt.drpo",
    "replica_pool": "drpo_dspy.clients.pool_inputs",
}
__all__ = ["DEFAULT_INSTRUCTIONS", "DRPO", "AlignedResponder", "AlignmentBank", "Aspect", "AspectCatalogue",
           "DRPOResult", "DynamicReward", "ICLExample", "replica_pool"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
