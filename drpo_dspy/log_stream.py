"""The ``drpo_dspy`` logger writes through DSPy's logging stream, so ``dspy.disable_logging()`` silences it too.

The handler finds DSPy's stream when a record is first written, not when the package is imported: importing
``drpo_dspy`` (and so ``drpo --help``) does not import DSPy.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # DSPy's own
DATE_FORMAT = "%Y/%m/%d %H:%M:%S"
HANDLER_NAME = "dspy_handler"  # DSPy's name for it: configure_dspy_loggers(...) replaces it rather than adding one


class DSPyStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` whose ``stream`` is ``dspy.utils.logging_utils.DSPY_LOGGING_STREAM``, looked up lazily."""

    def __init__(self) -> None:
        super().__init__()
        self.set_name(HANDLER_NAME)
        self.setFormatter(logging.Formatter(fmt=LINE_FORMAT, datefmt=DATE_FORMAT))

    @property
    def stream(self) -> Any:  # type: ignore[override]
        from dspy.utils.logging_utils import DSPY_LOGGING_STREAM

        return DSPY_LOGGING_STREAM

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets sys.stderr: DSPy's stream wraps it anyway
        pass

    def flush(self) -> None:
        if "dspy.utils.logging_utils" in sys.modules:  # nothing was written through DSPy's stream otherwise
            super().flush()


def configure_package_logger(name: str) -> None:
    """INFO and above of ``name`` through DSPy's stream, not propagated (as ``configure_dspy_loggers`` does)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in logger.handlers[:]:
        if getattr(handler, "name", None) == HANDLER_NAME:
            logger.removeHandler(handler)
    logger.addHandler(DSPyStreamHandler())
