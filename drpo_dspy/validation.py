"""Input checks that run before any LM call, each with a message that says what to fix."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import dspy


def coerce_queries(trainset: Any, name: str = "trainset") -> list[str]:
    """Accept strings, ``dspy.Example``/dicts with ``query`` (or ``instruction``); return the query texts."""
    if trainset is None or isinstance(trainset, str | bytes) or not isinstance(trainset, Iterable):
        raise ValueError(f"{name} must be a list of queries (strings or dspy.Example(query=...)), got {trainset!r:.60}")
    queries = []
    for i, item in enumerate(trainset):
        text = item
        if isinstance(item, dspy.Example):
            text = item.get("query", item.get("instruction"))
        elif isinstance(item, dict):
            text = item.get("query", item.get("instruction"))
        if not isinstance(text, str):
            raise ValueError(
                f"{name}[{i}] is not text: expected a string, or an Example/dict with a 'query' field, got {item!r:.80}"
            )
        if not text.strip():
            raise ValueError(f"{name}[{i}] is an empty query")
        queries.append(text)
    if not queries:
        raise ValueError(f"{name} is empty: DRPO needs at least one training query")
    return queries


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def resolve_lm(role: str, lm: Any) -> dspy.BaseLM:
    """The LM for a role: the one given, else ``dspy.settings.lm``; validated without calling it."""
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
        check_model_string(role, lm)
    return lm


def check_model_string(role: str, lm: dspy.LM) -> None:
    """Unknown providers and missing API keys fail here, not after money has been spent on other roles."""
    model = lm.model
    if model.startswith(("embedded/", "drpo_text/")):
        from drpo_dspy.local_model import register_embedded_provider

        register_embedded_provider()
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
    if lm.kwargs.get("api_key") or lm.kwargs.get("api_base") or lm.kwargs.get("base_url"):
        return  # an explicit key or a self-hosted server: nothing to check in the environment
    try:
        env = litellm.validate_environment(model=route)
    except Exception:
        return
    missing = [k for k in env.get("missing_keys", []) if not os.environ.get(k)]
    if missing and not env.get("keys_in_environment", False):
        raise ValueError(
            f"{role}_lm {model!r} (provider {provider}) needs {', '.join(missing)} in the environment "
            "or api_key=... in dspy.LM(...)"
        )
