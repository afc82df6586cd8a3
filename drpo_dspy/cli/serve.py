"""``drpo serve``: an OpenAI-compatible endpoint answered by compiled DRPO programs (server: drpo_dspy.serve)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import (
    UsageError,
    add_command,
    float_in,
    non_negative_int,
    positive_float,
    positive_int,
    run_reporting_errors,
)
from drpo_dspy.engine.models import default_model_type
from drpo_dspy.serve.settings import API_KEYS_ENV, EMBEDDED_BASE, ProgramSpec, ServeSettings, api_keys_from_env

DEFAULT_MODEL_NAME = "drpo-aligned"
SERVE_INSTALL_HINT = 'pip install "drpo-dspy[serve]"'


def _program_spec(text: str) -> ProgramSpec:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return ProgramSpec(name.strip(), Path(path.strip()))


EXAMPLES = """\
  drpo serve runs/<timestamp>/program.json                    # the embedded model, http://127.0.0.1:8000/v1
  drpo serve aligned.json --model-name aligned --base-model hosted_vllm/mistralai/Mistral-7B-v0.1 \\
      --base-api-base http://localhost:8000/v1 --base-model-type text --port 9000 --api-key "$KEY"
  drpo serve --program polite=polite.json --program terse=terse.json   # two programs, two model names
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "drpo-aligned", "messages": [{"role": "user", "content": "Hi!"}]}'"""


def _port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``drpo`` command's subparsers."""
    parser = add_command(
        subparsers, "serve", help="serve compiled programs as an OpenAI-compatible API", examples=EXAMPLES,
        description="Serve compiled DRPO programs over the OpenAI API (/v1/chat/completions, /v1/completions, "
                    "/v1/models, /health). Each program answers as one model name; a changed program file is "
                    "reloaded. Needs the [serve] extra: " + SERVE_INSTALL_HINT + ". See docs/serve.md.")
    parser.add_argument("program", nargs="?", type=Path, metavar="PROGRAM",
                        help="program.json written by drpo optimize (served as --model-name)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                        help="model name for the positional PROGRAM (default: %(default)s)")
    parser.add_argument("--program", dest="programs", action="append", type=_program_spec, default=[],
                        metavar="NAME=PATH", help="serve another program under model name NAME (repeatable)")
    parser.add_argument("--base-model", default=EMBEDDED_BASE, metavar="MODEL",
                        help="litellm model string (default: %(default)s)")
    parser.add_argument("--base-model-type", choices=["chat", "text"], default=None,
                        help="'text' for base (non-chat) models: the DRPO layout goes as one raw prompt (default: "
                             "'text' for the embedded base models, else 'chat')")
    parser.add_argument("--base-api-base", metavar="URL",
                        help="API base URL of the base model (vLLM, Ollama, a litellm proxy)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                        help=f"a key clients must send as 'Authorization: Bearer KEY' (repeatable; also "
                             f"${API_KEYS_ENV}, comma-separated; default: none, which is allowed on loopback only "
                             f"without a warning)")
    parser.add_argument("--max-tokens-limit", type=positive_int, default=2048,
                        help="largest max_tokens a client may ask (default: %(default)s)")
    parser.add_argument("--default-max-tokens", type=positive_int, default=512,
                        help="max_tokens when the client sends none (default: %(default)s)")
    parser.add_argument("--max-n", type=positive_int, default=4,
                        help="largest n, choices per request (default: %(default)s)")
    parser.add_argument("--max-request-bytes", type=positive_int, default=1_000_000,
                        help="largest request body (default: %(default)s)")
    parser.add_argument("--max-messages", type=positive_int, default=200,
                        help="most messages in one chat request (default: %(default)s)")
    parser.add_argument("--max-concurrent", type=positive_int, default=64,
                        help="requests answered at once; more get 503 with Retry-After, which protects the base "
                             "model (default: %(default)s)")
    parser.add_argument("--timeout", type=positive_float, default=120.0,
                        help="seconds to wait for the base model (default: %(default)s)")
    parser.add_argument("--upstream-retries", type=non_negative_int, default=0,
                        help="retries of a failed base-model call; clients also retry on Retry-After "
                             "(default: %(default)s)")
    parser.add_argument("--reload-interval", type=float_in(0.0), default=2.0,
                        help="seconds between checks for changed program files; 0: no hot reload "
                             "(default: %(default)s)")
    parser.add_argument("--log-prompts", action="store_true",
                        help="log each prompt and answer (default: off, access logs carry no content)")
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> tuple[ServeSettings, list[ProgramSpec]]:
    specs = ([ProgramSpec(args.model_name, args.program)] if args.program else []) + list(args.programs)
    keys = frozenset(key.strip() for key in args.api_keys if key.strip()) | api_keys_from_env()
    settings = ServeSettings(
        base_model=args.base_model, base_model_type=args.base_model_type or default_model_type(args.base_model),
        base_api_base=args.base_api_base,
        host=args.host, port=args.port, api_keys=keys, max_request_bytes=args.max_request_bytes,
        max_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens, max_n=args.max_n,
        max_messages=args.max_messages, max_concurrent=args.max_concurrent, upstream_timeout=args.timeout,
        upstream_retries=args.upstream_retries,
        reload_interval=args.reload_interval, log_prompts=args.log_prompts)
    return settings, specs


def run(args: argparse.Namespace) -> int:
    """Load the programs, then serve until interrupted; bad settings or files exit with status 2, and so does a
    missing web stack (FastAPI, uvicorn), with the pip command that installs it. Errors are reported as
    ``drpo serve: error: ...`` (:func:`drpo_dspy.cli.common.run_reporting_errors`)."""
    return run_reporting_errors(lambda: _serve(args), prog="drpo serve")


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from drpo_dspy.serve.app import create_app
    except ImportError as exc:
        missing = f"No module named {exc.name!r}" if exc.name else str(exc)
        raise ImportError(f"{missing}: install the [serve] extra (FastAPI and uvicorn): {SERVE_INSTALL_HINT}") from exc
    import litellm

    from drpo_dspy.serve.programs import ProgramRegistry
    from drpo_dspy.serve.upstream import Upstream

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner on every upstream failure
    try:
        settings, specs = settings_from_args(args)
        registry = ProgramRegistry(specs)
        upstream = Upstream(settings)  # checks the base model string (and the embedded runtime) first: cheap
        registry.load_all()
        app = create_app(settings, registry, upstream)
    except OSError as exc:
        raise UsageError(str(exc)) from exc
    logging.getLogger("drpo_dspy.serve").setLevel(logging.INFO)
    if not settings.loopback_only and not settings.requires_key:
        print(f"drpo serve: WARNING: listening on {settings.host} with no API key: anyone who can reach this "
              f"port can use the base model; pass --api-key or set {API_KEYS_ENV}", file=sys.stderr)
    for program in registry.programs():
        print(f"serving {program.name} = {program.path} ({program.version})", file=sys.stderr)
    print(f"base model {settings.base_model} ({settings.base_model_type}); OpenAI API at "
          f"http://{settings.host}:{settings.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning")
    return 0


add_serve_parser = add_parser
run_serve = run
