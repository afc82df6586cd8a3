"""drpo-dspy: DRPO (Dynamic Rewarding with Prompt Optimization) as a DSPy optimizer."""

from drpo_dspy import _offline

_offline.apply_offline_defaults()

from dspy.utils.logging_utils import configure_dspy_loggers  # noqa: E402

configure_dspy_loggers(__name__)  # INFO progress through DSPy's stream: dspy.disable_logging() silences it too

from drpo_dspy.aspects import Aspect, AspectCatalogue  # noqa: E402
from drpo_dspy.bank import AlignmentBank, ICLExample  # noqa: E402
from drpo_dspy.metric import DynamicReward  # noqa: E402
from drpo_dspy.responder import DEFAULT_INSTRUCTIONS, AlignedResponder  # noqa: E402
from drpo_dspy.teleprompter import DRPO, DRPOResult  # noqa: E402

__all__ = ["DEFAULT_INSTRUCTIONS", "DRPO", "AlignedResponder", "AlignmentBank", "Aspect", "AspectCatalogue",
           "DRPOResult", "DynamicReward", "ICLExample"]
__version__ = "0.1.0"
