"""What the ``drpo`` commands share: role models from flags, the embedded default, flag checks, help layout, quiet
third-party output, Ctrl-C, and one way of reporting errors with one scheme of exit codes.

Nothing here imports DSPy, litellm or torch at module level: ``drpo --help`` and a usage error stay fast.

Exit codes (every command):

====  ============================================================================================================
0     done (also a run stopped by a budget or a STOP file: run it again to finish)
1     a runtime failure (an unexpected error from a provider or a library)
2     a usage or input error: a bad flag, a missing or malformed file, an unknown model, a missing extra
3     a role cannot work (``SystemicFailure``: bad key, unknown model, no server, every call failing)
130   interrupted (Ctrl-C); what finished is saved, and the message says how to resume
====  ============================================================================================================
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

EMBEDDED = "embedded/smollm2-135m"
ROLES = ("base", "metrics", "judge", "optimizer")
# Output caps for the embedded model per role: enough for its typed outputs, short enough to stay fast on a CPU.
EMBEDDED_MAX_TOKENS = {"metrics": 256, "judge": 400, "optimizer": 400, "rewriter": 1024}
EXIT_OK, EXIT_RUNTIME_FAILURE, EXIT_USAGE, EXIT_ROLE_CANNOT_WORK, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_LM_FAILURE = EXIT_RUNTIME_FAILURE  # the former name
TROUBLESHOOTING = "docs/troubleshooting.md"

_verbose = False


class UsageError(ValueError):
    """A bad option or input found by a command (exit 2), reported as ``drpo <command>: error: ...``."""


# -- flag values, checked by argparse (``type=``) before anything heavy is imported -----------------------------------
def _number(text: Any, kind: type) -> Any:
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    try:
        value = kind(text)
    except (TypeError, ValueError):
        if kind is int and isinstance(text, float) and text.is_integer():
            return int(text)
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is int and isinstance(text, float) and not text.is_integer():
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[Any], int]:
    """An argparse ``type=``: an integer >= ``minimum``."""

    def check(text: Any) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    check.__name__ = f"integer >= {minimum}"  # argparse names the type in "invalid ... value" messages
    return check


def float_in(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[Any], float]:
    """An argparse ``type=``: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    left = "(" if low_open else "["
    span = f"in {left}{low}, {high}]" if high is not None else (f"> {low}" if low_open else f">= {low}")

    def check(text: Any) -> float:
        value = _number(text, float)
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text}")
        return value

    check.__name__ = f"number {span}"
    return check


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)


# -- help layout -------------------------------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs: paragraphs are wrapped to the terminal, and a paragraph with indented lines (the
    examples) is kept exactly as written; options are wrapped as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)


def add_command(subparsers: Any, name: str, *, help: str, description: str, examples: str,
                usage: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command with a description, an ``Examples:`` epilog, ``-v/--verbose`` and the shared help layout."""
    parser = subparsers.add_parser(name, help=help, description=description, epilog="Examples:\n" + examples,
                                   formatter_class=kwargs.pop("formatter_class", HelpFormatter), usage=usage,
                                   **kwargs)
    add_verbose_flag(parser, default=argparse.SUPPRESS)  # given after the command too: drpo optimize ... -v
    return parser


def add_verbose_flag(parser: argparse.ArgumentParser, default: Any = False) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show third-party output too (litellm's notices, progress bars while models load, "
                             "DSPy's truncation warnings) and full tracebacks")


# -- output ----------------------------------------------------------------------------------------------------
def configure_output(verbose: bool) -> None:
    """Quiet third-party output in the ``drpo`` process unless ``verbose`` (never done on package import).

    Hugging Face progress bars ("Loading weights 100%") are turned off through their environment switches, which
    those libraries read when imported (later, inside the command); a user's own setting wins. DSPy's "LM response
    was truncated" warnings are hidden. litellm's "Provider List" banner is turned off by :func:`quiet_litellm`,
    called where the command first makes an LM (importing litellm here would slow every command down).
    """
    global _verbose
    _verbose = verbose
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # already imported (drpo called in-process): switch its bars off directly
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
    quiet_truncation_warnings()
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if "litellm" in sys.modules:
        quiet_litellm()


def quiet_litellm() -> None:
    """No "Give Feedback / Get Help" and "Provider List" banners from litellm before our own error message."""
    if _verbose:
        return
    import litellm

    litellm.suppress_debug_info = True


def quiet_truncation_warnings() -> None:
    """Answers cut at their token cap are expected during a search; DSPy warns about each one."""
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)


def make_lm(model: str | None, api_base: str | None = None, model_type: str | None = None, role: str | None = None,
            router: str | Path | None = None, **kwargs: Any) -> Any:
    """A ``dspy.LM`` for a litellm model string (default: the embedded model, registered as a litellm provider).

    Several servers make one role's pool (``clients/replica_pool.py``): ``api_base`` as a comma-separated list of
    URLs (``model`` served on each), or ``router``, a litellm Router configuration file (YAML or JSON). A mistake in
    either is refused here, before any call (exit 2). For the embedded model a missing ``[local]`` extra fails
    here, with the pip command, before any work.
    """
    import dspy

    quiet_litellm()
    if router is not None or (api_base and "," in api_base):
        return make_pool_lm(model, api_base, model_type, role or "pool", router, **kwargs)
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


def make_pool_lm(model: str | None, api_base: str | None, model_type: str | None, role: str,
                 router: str | Path | None, **kwargs: Any) -> Any:
    """One role's replica pool from ``--<role>-api-base URL1,URL2,...`` or ``--<role>-router FILE``."""
    from drpo_dspy.clients.pool_inputs import pool_from_router_file, pool_from_urls, split_api_bases

    if router is not None:
        if api_base:
            raise UsageError(f"--{role}-router and --{role}-api-base both given: the router file names the servers")
        return pool_from_router_file(router, label=role, model=model, model_type=model_type or "chat", **kwargs)
    urls = split_api_bases(api_base or "", f"--{role}-api-base")
    if not model or model.startswith("embedded/"):
        raise UsageError(f"--{role}-api-base lists {len(urls)} servers: name the model they serve with "
                         f"--{role}-model (e.g. hosted_vllm/<served name>)")
    return pool_from_urls(model, urls, label=role, model_type=model_type or "chat", **kwargs)


def check_settings(role: str, lm: Any) -> None:
    """A missing API key or server address, or an unknown provider, fails here (exit 2), before any call."""
    from drpo_dspy.runs.validation import check_model_string

    check_model_string(role, lm)


def replica_lines(usage: dict[str, Any]) -> list[str]:
    """One line per role served by a replica pool: each replica's answered calls and failures (from a meter's
    summary)."""
    from drpo_dspy.clients.metering import replica_usage_lines

    return replica_usage_lines(usage)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# -- Ctrl-C ----------------------------------------------------------------------------------------------------
class InterruptWatch:
    """Ctrl-C for a command whose work runs LM calls in worker threads, which Python cannot interrupt.

    ``pressed`` says a Ctrl-C came. Without ``request_stop``, Python's own handling stays: the first Ctrl-C raises
    ``KeyboardInterrupt`` in the main thread (a search catches it and returns its best program so far) and creates
    ``stop_file`` (a run's ``STOP`` file), so the calls still running in worker threads make no further call; the
    file is removed when the watch ends, so ``--resume`` does not stop at once. The work then has ``quit_after``
    seconds to wind down; past them, or at a second Ctrl-C, the process prints ``quit_message()`` and exits with 130
    at once, abandoning the calls in flight (what finished is already on disk: the same as a kill, which a resume
    survives).

    With ``request_stop``, the first Ctrl-C only calls it (a graceful stop: the work in flight ends at its next LM
    call and what finished is kept and saved); a second Ctrl-C quits at once.
    """

    def __init__(self, stop_file: Path | None = None, request_stop: Callable[[], None] | None = None,
                 quit_after: float | None = None, quit_message: Callable[[], str] | None = None):
        self.stop_file, self.request_stop, self.quit_after = stop_file, request_stop, quit_after
        self.quit_message = quit_message or (lambda: "drpo: interrupted")
        self.pressed = self.created_stop_file = False
        self._previous: Any = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> InterruptWatch:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pressed:  # a second Ctrl-C: no more waiting
            self.quit_now()
        self.pressed = True
        if self.request_stop is not None:
            print("\nStopping after the calls in flight (Ctrl-C again quits at once)...", file=sys.stderr, flush=True)
            self.request_stop()
            return
        if self.stop_file is not None and self.stop_file.parent.is_dir():
            try:
                self.stop_file.touch(exist_ok=False)
                self.created_stop_file = True
            except OSError:
                pass
        if self.quit_after is not None:
            self._timer = threading.Timer(self.quit_after, self.quit_now)
            self._timer.daemon = True
            self._timer.start()
        raise KeyboardInterrupt

    def _remove_stop_file(self) -> None:
        if self.created_stop_file and self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)
            self.created_stop_file = False

    def quit_now(self) -> None:
        """Print the message and end the process with 130 without waiting for the worker threads."""
        self._remove_stop_file()
        try:
            sys.stdout.flush()
            print(f"\n{self.quit_message()}", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_INTERRUPTED)

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._remove_stop_file()
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Interrupted(KeyboardInterrupt):
    """A command stopped by Ctrl-C after saving its work; ``hint`` says where it is and how to resume."""

    def __init__(self, hint: str | None = None):
        super().__init__(hint)
        self.hint = hint


# -- errors ------------------------------------------------------------------------------------------------------------
def _message(exc: BaseException, *, keep_type: bool) -> str:
    from drpo_dspy.runs.secrets import redacted_message

    text = redacted_message(exc)  # "ExcType: message", every known secret masked
    text = text.split("\nTraceback (most recent call last):", 1)[0].rstrip()  # litellm puts one in some messages
    return text if keep_type else text.split(": ", 1)[-1]


def run_reporting_errors(command: Callable[[], int], prog: str = "drpo",
                         hint: Callable[[], str | None] | None = None) -> int:
    """Run a command; report any error as ``<prog>: error: <one redacted paragraph>`` and return its exit code.

    ``hint`` (called only on a failure) adds a line saying what was saved and how to resume. See the module
    docstring for the exit codes.
    """
    from drpo_dspy.clients.failures import SystemicFailure, systemic_reason

    def report(text: str, code: int, exc: BaseException) -> int:
        if _verbose:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        extra = hint() if hint is not None and code != EXIT_USAGE else None
        print(f"{prog}: {text}" + (f"\n{extra}" if extra else ""), file=sys.stderr)
        return code

    try:
        return command()
    except SystemicFailure as exc:
        return report(f"error: {_message(exc, keep_type=False)}", EXIT_ROLE_CANNOT_WORK, exc)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        return report(f"error: {_message(exc, keep_type=False)}", EXIT_USAGE, exc)
    except KeyboardInterrupt as exc:
        saved = getattr(exc, "hint", None) or (hint() if hint is not None else None)
        print(f"\n{prog}: interrupted" + (f"; {saved}" if saved else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # an LM or provider failure: never print a credential it may echo
        reason = systemic_reason(exc)  # a bad key, an unknown model...: retrying cannot help
        if reason is not None:
            return report(f"error: {reason}: {_message(exc, keep_type=True)}", EXIT_ROLE_CANNOT_WORK, exc)
        return report(f"error: {_message(exc, keep_type=True)} (-v shows the traceback; see {TROUBLESHOOTING})",
                      EXIT_RUNTIME_FAILURE, exc)
