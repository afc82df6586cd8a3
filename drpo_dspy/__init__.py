"""drpo-dspy: DRPO (Dynamic Rewarding with Prompt Optimization) as a DSPy optimizer."""

from drpo_dspy.clients import offline_defaults as _offline

_offline.apply_offline_defaults()

from dspy.utils.logging_utils import configure_dspy_loggers  # noqa: E402

configure_dspy_loggers(__name__)  # INFO progress through DSPy's stream: dspy.disable_logging() silences it too

from drpo_dspy.modules.aligned_responder import DEFAULT_INSTRUCTIONS, AlignedResponder  # noqa: E402
from drpo_dspy.retrievers.bank import AlignmentBank, ICLExample  # noqa: E402
from drpo_dspy.rewards.aspects import Aspect, AspectCatalogue  # noqa: E402
from drpo_dspy.rewards.metric import DynamicReward  # noqa: E402
from drpo_dspy.teleprompt.drpo import DRPO, DRPOResult  # noqa: E402

__all__ = ["DEFAULT_INSTRUCTIONS", "DRPO", "AlignedResponder", "AlignmentBank", "Aspect", "AspectCatalogue",
           "DRPOResult", "DynamicReward", "ICLExample"]
__version__ = "0.1.0"
