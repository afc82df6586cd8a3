"""What the operator decides: the base model, where to listen, keys, limits and logging."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from drpo_dspy.primitives.checks import is_whole
from drpo_dspy.runs.secrets import Redactor

EMBEDDED_BASE = "embedded/smollm2-135m"
API_KEYS_ENV = "DRPO_SERVE_API_KEYS"  # comma-separated client keys, for keys that should not sit in a shell history
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ProgramSpec:
    """One served program: the model name clients ask for and the saved ``AlignedResponder`` JSON."""

    name: str
    path: Path


@dataclass(frozen=True)
class ServeSettings:
    """Server settings; the defaults are the safe ones (loopback only, bounded requests, no prompt logging)."""

    base_model: str = EMBEDDED_BASE
    base_model_type: str = "chat"  # "text": base models, the DRPO layout is sent as one raw prompt
    base_api_base: str | None = None
    base_api_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    max_request_bytes: int = 1_000_000
    max_tokens_limit: int = 2048
    default_max_tokens: int = 512
    max_n: int = 4
    max_messages: int = 200
    max_concurrent: int = 64  # requests answered at once; one more is a 503 with Retry-After
    upstream_timeout: float = 120.0
    upstream_retries: int = 0
    reload_interval: float = 2.0  # seconds between checks of the program files; 0 disables hot reload
    log_prompts: bool = False

    def __post_init__(self) -> None:
        if self.base_model_type not in ("chat", "text"):
            raise ValueError(f"base_model_type must be 'chat' or 'text', got {self.base_model_type!r}")
        for name in ("max_request_bytes", "max_tokens_limit", "default_max_tokens", "max_n", "max_messages",
                     "max_concurrent"):
            value = getattr(self, name)
            if not is_whole(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit "
                             f"({self.max_tokens_limit})")
        if self.upstream_timeout <= 0 or self.reload_interval < 0 or self.upstream_retries < 0:
            raise ValueError("upstream_timeout must be > 0, reload_interval and upstream_retries >= 0")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and carry no surrounding whitespace")

    @property
    def requires_key(self) -> bool:
        return bool(self.api_keys)

    @property
    def loopback_only(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    def redactor(self) -> Redactor:
        """A redactor that also masks the client keys and the upstream key (never shown in logs or errors)."""
        redactor = Redactor()
        extra = {key for key in (*self.api_keys, self.base_api_key) if key}
        redactor.values = sorted(set(redactor.values) | extra, key=len, reverse=True)
        return redactor


def api_keys_from_env(environ: dict[str, str] | None = None) -> frozenset[str]:
    """Client keys from ``$DRPO_SERVE_API_KEYS`` (comma-separated)."""
    raw = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    return frozenset(key.strip() for key in raw.split(",") if key.strip())
