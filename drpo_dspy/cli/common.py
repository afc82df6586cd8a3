"""What the ``drpo`` commands share: role models from flags, the embedded default, error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

EMBEDDED = "embedded/smollm2-135m"
ROLES = ("base", "metrics", "judge", "optimizer")
# Output caps for the embedded model per role: enough for its typed outputs, short enough to stay fast on a CPU.
EMBEDDED_MAX_TOKENS = {"metrics": 256, "judge": 400, "optimizer": 400, "rewriter": 1024}
EXIT_USAGE, EXIT_LM_FAILURE, EXIT_ROLE_CANNOT_WORK, EXIT_INTERRUPTED = 2, 1, 3, 130


def make_lm(model: str | None, api_base: str | None = None, model_type: str | None = None, role: str | None = None,
            **kwargs: Any) -> Any:
    """A ``dspy.LM`` for a litellm model string (default: the embedded model, registered as a litellm provider).

    For the embedded model a missing ``[local]`` extra fails here, with the pip command, before any work.
    """
    import dspy

    model = model or EMBEDDED
    if model.startswith("embedded/"):
        from drpo_dspy.clients.embedded import ensure_embedded_runtime, register_embedded_provider

        spec = ensure_embedded_runtime(model)
        register_embedded_provider(model)
        model = spec.model
        if model_type is None and role in (None, "base"):
            model_type = spec.route  # base models complete the DRPO layout as raw text
        kwargs.setdefault("engine", "litellm")
        kwargs.setdefault("temperature", 0.0)
        if role in EMBEDDED_MAX_TOKENS:
            kwargs.setdefault("max_tokens", EMBEDDED_MAX_TOKENS[role])
    elif model.startswith("scripted/"):
        kwargs.setdefault("engine", "litellm")
    if api_base:
        kwargs["api_base"] = api_base
    return dspy.LM(model, model_type=model_type or "chat", **kwargs)


def quiet_truncation_warnings() -> None:
    """Answers cut at their token cap are expected during a search; DSPy warns about each one."""
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def run_reporting_errors(command: Callable[[], int]) -> int:
    """Run a command; print any error as one redacted paragraph and return the exit code for it."""
    from drpo_dspy.clients.failures import SystemicFailure
    from drpo_dspy.runs.secrets import redacted_message

    try:
        return command()
    except SystemicFailure as exc:
        print(f"drpo: stopped: {redacted_message(exc).split(': ', 1)[-1]}", file=sys.stderr)
        return EXIT_ROLE_CANNOT_WORK
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"drpo: error: {redacted_message(exc).split(': ', 1)[-1]}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("drpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # an LM or provider failure: never print a credential it may echo
        print(f"drpo: error: {redacted_message(exc)}", file=sys.stderr)
        return EXIT_LM_FAILURE
