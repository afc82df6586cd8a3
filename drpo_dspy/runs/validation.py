"""Input checks that run before any LM call, each with a message that says what to fix."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterable, Iterator
from typing import Any

import dspy

from drpo_dspy.primitives.checks import is_real, is_whole
from drpo_dspy.primitives.conversation_query import parse_conversation

_KEYS_NOT_NEEDED: contextvars.ContextVar[bool] = contextvars.ContextVar("drpo_keys_not_needed", default=False)

MAX_QUERY_CHARS = 50_000
"""The longest training query accepted (characters); longer ones fail before any LM call. Every role sees the query
plus prompts, examples and answers, so a query near a model's context window cannot be judged or optimised.
Raise it (``drpo_dspy.runs.validation.MAX_QUERY_CHARS = ...``) for long-context models."""


def check_query_text(text: str, where: str, max_chars: int | None = None) -> None:
    """Refuse text no provider can take: NUL bytes, lone surrogates (broken Unicode) or more than ``max_chars``."""
    limit = MAX_QUERY_CHARS if max_chars is None else max_chars
    if "\x00" in text:
        raise ValueError(f"{where} contains a NUL character (binary data?) at position {text.index(chr(0))}: "
                         "remove it, or check that the file is really text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} is not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X} at position "
                         f"{exc.start}): repair the text, e.g. text.encode('utf-8', 'replace').decode()") from None
    if len(text) > limit:
        raise ValueError(f"{where} is {len(text):,} characters long, above the {limit:,}-character limit for a query "
                         "(max_query_chars): shorten it, or raise drpo_dspy.runs.validation.MAX_QUERY_CHARS if every "
                         "role's context window really takes it")


def coerce_queries(trainset: Any, name: str = "trainset", *, max_query_chars: int | None = None) -> list[str]:
    """Accept strings, ``dspy.Example``/dicts with ``query`` (or ``instruction``) and conversations (see
    :func:`query_text`); return the query texts.

    Each query must be non-empty, valid Unicode without NUL characters, and at most ``max_query_chars`` long
    (default :data:`MAX_QUERY_CHARS`)."""
    if trainset is None or isinstance(trainset, str | bytes) or not isinstance(trainset, Iterable):
        raise ValueError(f"{name} must be a list of queries (strings or dspy.Example(query=...)), got {trainset!r:.60}")
    if isinstance(trainset, dict | dspy.Example):
        raise ValueError(f"{name} must be a list of queries, got a single {type(trainset).__name__} "
                         f"(keys {list(trainset.keys())[:5]}): wrap one query in a list, or pass the list it holds")
    queries = [query_text(item, f"{name}[{i}]", max_query_chars) for i, item in enumerate(trainset)]
    if not queries:
        raise ValueError(f"{name} is empty: DRPO needs at least one training query")
    return queries


def query_text(item: Any, where: str, max_query_chars: int | None = None) -> str:
    """The query of one trainset item, checked: a string, an Example/dict with ``query`` (or ``instruction``) and
    an optional ``history``, ``{"messages": [...]}`` or a list of messages; a conversation comes back as a
    :class:`~drpo_dspy.primitives.conversation_query.ConversationQuery` (a ``str`` holding its transcript)."""
    text = parse_conversation(item, where)
    if not isinstance(text, str):
        raise ValueError(
            f"{where} is not text: expected a string, an Example/dict with a 'query' field, or a conversation "
            f"({{'messages': [...]}}), got {item!r:.80}"
        )
    if not text.strip():
        raise ValueError(f"{where} is an empty query")
    check_query_text(text, where, max_query_chars)
    return text


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if not is_whole(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value: Any, low: float, high: float) -> None:
    if not is_real(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


@contextlib.contextmanager
def keys_not_needed() -> Iterator[None]:
    """Within this block model strings are still checked, API keys and server addresses are not: for dry runs and
    estimates, which call nothing (``drpo optimize --dry-run`` runs ``DRPO.estimate`` in one)."""
    token = _KEYS_NOT_NEEDED.set(True)
    try:
        yield
    finally:
        _KEYS_NOT_NEEDED.reset(token)


def resolve_lm(role: str, lm: Any, *, need_key: bool = True) -> dspy.BaseLM:
    """The LM for a role: the one given, else ``dspy.settings.lm``; validated without calling it.

    ``need_key=False`` (or :func:`keys_not_needed`): a missing API key or server address is not an error, for a
    dry run or an estimate that calls nothing."""
    lm = lm if lm is not None else dspy.settings.lm
    if lm is None:
        raise ValueError(
            f"no LM for the {role} role: pass {role}_lm=dspy.LM(...) or call dspy.configure(lm=dspy.LM(...))"
        )
    if isinstance(lm, str):
        raise ValueError(f"{role}_lm must be a dspy.LM, not a string: use dspy.LM({lm!r})")
    if not isinstance(lm, dspy.BaseLM):
        raise ValueError(f"{role}_lm must be a dspy.BaseLM, got {type(lm).__name__}")
    if isinstance(lm, dspy.LM):
        check_model_string(role, lm, need_key=need_key)
    return lm


def check_model_string(role: str, lm: dspy.LM, *, need_key: bool = True) -> None:
    """Unknown providers and missing API keys fail here, not after money has been spent on other roles.

    A missing ``*_API_BASE`` (a self-hosted provider such as Ollama with no address) points at ``--<role>-api-base``
    and ``api_base=``. ``need_key=False`` (or inside :func:`keys_not_needed`) checks the model string only."""
    model = lm.model
    pool = getattr(lm, "replica_pool", None)
    if pool is not None:  # a replica pool (clients/replica_pool.py): each replica is checked as the LM it is
        for replica in pool.replicas:
            inner = dspy.LM(replica.model.removeprefix("drpo_text/"), model_type=pool.model_type, **replica.params)
            check_model_string(role, inner, need_key=need_key)
        return
    if model.startswith(("embedded/", "drpo_text/")):
        from drpo_dspy.clients.embedded import register_embedded_provider
        from drpo_dspy.engine.models import is_embedded

        try:
            register_embedded_provider(*([model] if is_embedded(model) else []))
        except ValueError as exc:
            raise ValueError(f"{role}_lm: {exc}") from exc
        if is_embedded(model) and lm.model_type == "text" and role != "base":
            raise ValueError(f"{role}_lm {model!r}: only the base role can be a text model (model_type='text'); "
                             "the helper roles need chat")
        return
    import litellm

    route = model
    if lm.model_type == "text":
        route = "text-completion-openai/" + model.split("/", 1)[-1]
    try:
        _, provider, _, _ = litellm.get_llm_provider(route)
    except Exception as exc:
        raise ValueError(
            f"{role}_lm: unknown model string {model!r}; use a litellm 'provider/model' string such as "
            "'openai/gpt-4o-mini', 'hosted_vllm/<name>' (with api_base) or 'ollama_chat/<name>'"
        ) from exc
    if not need_key or _KEYS_NOT_NEEDED.get():
        return  # a dry run: nothing is called, so no key or server address is needed
    if lm.kwargs.get("api_key") or lm.kwargs.get("api_base") or lm.kwargs.get("base_url"):
        return  # an explicit key or a self-hosted server: nothing to check in the environment
    try:
        env = litellm.validate_environment(model=route)
    except Exception:
        return
    missing = [k for k in env.get("missing_keys", []) if not os.environ.get(k)]
    if missing and not env.get("keys_in_environment", False):
        raise ValueError(missing_settings_message(role, model, provider, missing))


def missing_settings_message(role: str, model: str, provider: str, missing: list[str]) -> str:
    """What to set for a provider whose key or server address is missing (``missing``: litellm's variable names)."""
    addresses = [k for k in missing if k.endswith("_API_BASE")]
    keys = [k for k in missing if k not in addresses]
    wants = []
    if addresses:
        wants.append(f"the address of its server: pass --{role}-api-base URL (api_base=... in dspy.LM), or set "
                     f"{', '.join(addresses)}")
    if keys:
        wants.append(f"{', '.join(keys)} in the environment or api_key=... in dspy.LM(...)")
    return f"{role}_lm {model!r} (provider {provider}) needs " + "; and ".join(wants)
