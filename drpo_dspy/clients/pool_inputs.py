"""What a replica pool is made of, from what users give: a list of ``dspy.LM`` replicas, a comma-separated list of
API bases, or a litellm Router configuration file (YAML or JSON: ``model_list`` plus ``routing_strategy`` and the
other Router settings, at the top level or under ``router_settings`` as in a LiteLLM proxy config).

Every mistake is refused here, before any call, with a ``ValueError`` saying what to fix (exit 2 on the command
line): an empty URL in a list, a file that does not exist or has no ``model_list``, replicas of different models.
Keys in a router file stay in memory: they are given to the redactor and never written (config.json records the
file's path only).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy

from drpo_dspy.clients.replica_pool import ROUTING_KEYS, Replica, public_url, replica_pool_lm

CONNECTION_KEYS = ("api_base", "base_url", "api_key", "api_version", "organization", "timeout", "headers",
                   "extra_headers")  # per replica; every other LM setting is the pool's, sent with every call
ROUTER_KEYS = ("routing_strategy", "routing_strategy_args", "num_retries", "allowed_fails", "cooldown_time",
               "timeout", "retry_after", "allowed_fails_policy", "retry_policy")
_URL = re.compile(r"^https?://[^/\s,]+")


def split_api_bases(text: str, where: str = "api_base") -> list[str]:
    """The URLs of a comma-separated list (one URL: a list of one), each checked."""
    urls = [part.strip() for part in text.split(",")]
    if any(not url for url in urls):
        raise ValueError(f"{where} {text!r}: an empty URL in the list (two commas in a row, or a comma at an end): "
                         "give URL1,URL2,...")
    for url in urls:
        if not _URL.match(url):
            raise ValueError(f"{where}: {url!r} is not an http(s) URL (expected e.g. http://gpu-a:8000/v1)")
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise ValueError(f"{where}: {', '.join(repeated)} listed twice; list each replica once")
    return urls


def text_route(model: str, model_type: str) -> str:
    """The model a replica is called with: a text model through ``drpo_text`` (DRPO's exact raw prompt)."""
    return f"drpo_text/{model}" if model_type == "text" and not model.startswith("drpo_text/") else model


def _split_settings(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    connection = {k: v for k, v in kwargs.items() if k in CONNECTION_KEYS}
    return connection, {k: v for k, v in kwargs.items() if k not in CONNECTION_KEYS}


def _names(bases: Sequence[str | None], models: Sequence[str]) -> list[str]:
    names = [public_url(base) or model for base, model in zip(bases, models)]
    if len(set(names)) < len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return names


def _refuse_embedded(model: str, where: str) -> None:
    if model.removeprefix("drpo_text/").startswith("embedded/"):
        raise ValueError(f"{where}: {model} runs inside this process; a replica pool is for servers (vLLM, "
                         "llama.cpp, Ollama...) or provider deployments")


def pool_from_lms(lms: Sequence[Any], label: str) -> Any:
    """One role's LM from a list of replicas of the same model (a list of one: that LM itself)."""
    where = f"{label}_lm"
    if not lms:
        raise ValueError(f"{where} is an empty list: give one dspy.LM, or several replicas of the same model")
    for i, lm in enumerate(lms):
        if not isinstance(lm, dspy.LM):
            raise ValueError(f"{where}[{i}] must be a dspy.LM (a replica), got {type(lm).__name__}")
    if len(lms) == 1:
        return lms[0]
    first = lms[0]
    _refuse_embedded(first.model, where)
    _, shared = _split_settings(first.kwargs)
    for i, lm in enumerate(lms[1:], start=1):
        if lm.model != first.model:
            raise ValueError(f"{where}: the replicas must serve the same model, but [0] is {first.model!r} and "
                             f"[{i}] is {lm.model!r} (a different model is another role, not a replica)")
        if lm.model_type != first.model_type:
            raise ValueError(f"{where}: [0] is a {first.model_type} model and [{i}] a {lm.model_type} model")
        settings = _split_settings(lm.kwargs)[1]
        if settings != shared:
            raise ValueError(f"{where}: replicas may differ only in {', '.join(CONNECTION_KEYS)}; [0] has "
                             f"{sorted(shared.items())} and [{i}] {sorted(settings.items())}")
    connections = [_split_settings(lm.kwargs)[0] for lm in lms]
    names = _names([c.get("api_base") or c.get("base_url") for c in connections], [lm.model for lm in lms])
    replicas = [Replica(name, text_route(lm.model, lm.model_type), connection)
                for name, lm, connection in zip(names, lms, connections)]
    return replica_pool_lm(replicas, model=first.model, label=label, model_type=first.model_type,
                           cache=first.cache, **shared)


def pool_from_urls(model: str, urls: Sequence[str], *, label: str, model_type: str = "chat",
                   **lm_kwargs: Any) -> Any:
    """One role's LM served by ``model`` on every URL of ``urls``."""
    _refuse_embedded(model, f"--{label}-api-base")
    connection, shared = _split_settings(lm_kwargs)
    cache = shared.pop("cache", True)
    shared.pop("engine", None)
    names = _names(list(urls), [model] * len(urls))
    replicas = [Replica(name, text_route(model, model_type), {**connection, "api_base": url})
                for name, url in zip(names, urls)]
    return replica_pool_lm(replicas, model=model, label=label, model_type=model_type, cache=cache, **shared)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"router file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError, a missing PyYAML
        raise ValueError(f"router file {path} cannot be read: {exc}") from exc


def _secret(value: Any, where: str) -> Any:
    """``os.environ/NAME`` (the LiteLLM proxy's way of naming a key) read from the environment."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.removeprefix("os.environ/")
        if not os.environ.get(name):
            raise ValueError(f"{where} refers to the environment variable {name}, which is not set")
        return os.environ[name]
    return value


def router_settings_of(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The Router settings of a router file: top-level keys and a ``router_settings`` section."""
    section = config.get("router_settings") or {}
    if not isinstance(section, dict):
        raise ValueError(f"router file {path}: router_settings must be a mapping")
    settings = {k: v for k, v in config.items() if k in ROUTER_KEYS}
    unknown = sorted(set(section) - set(ROUTER_KEYS))
    if unknown:
        raise ValueError(f"router file {path}: unsupported router_settings {', '.join(unknown)} (supported: "
                         f"{', '.join(ROUTER_KEYS)})")
    return {**settings, **section}


def pool_from_router_file(path: str | Path, *, label: str, model: str | None = None, model_type: str = "chat",
                          **lm_kwargs: Any) -> Any:
    """One role's LM from a litellm Router configuration file; ``model`` picks the ``model_name`` group when the
    file has several."""
    path = Path(path)
    config = _read(path)
    if not isinstance(config, dict) or not config.get("model_list"):
        raise ValueError(f"router file {path} has no model_list: give litellm Router deployments as "
                         "model_list: [{model_name: ..., litellm_params: {model: ..., api_base: ...}}, ...]")
    deployments = config["model_list"]
    if not isinstance(deployments, list) or not all(isinstance(d, dict) and isinstance(d.get("litellm_params"), dict)
                                                    and d["litellm_params"].get("model") for d in deployments):
        raise ValueError(f"router file {path}: every model_list entry needs litellm_params with a model")
    groups = sorted({str(d.get("model_name") or "") for d in deployments})
    group = model if model in groups else (groups[0] if len(groups) == 1 and model is None else None)
    if group is None:
        raise ValueError(f"router file {path}: {'no model_name ' + repr(model) if model else 'several model groups'}"
                         f"; its model_name groups are {', '.join(map(repr, groups))} (pick one with "
                         f"--{label}-model)")
    chosen = [d for d in deployments if str(d.get("model_name") or "") == group]
    connection, shared = _split_settings(lm_kwargs)
    cache = shared.pop("cache", True)
    shared.pop("engine", None)
    replicas, models, bases = [], [], []
    for i, deployment in enumerate(chosen):
        params = {k: _secret(v, f"router file {path}: {group}[{i}].{k}")
                  for k, v in deployment["litellm_params"].items()}
        inner = str(params.pop("model"))
        _refuse_embedded(inner, f"router file {path}")
        routing = {k: params.pop(k) for k in ROUTING_KEYS if k in params}
        replicas.append((text_route(inner, model_type), {**connection, **params}, routing))
        models.append(inner)
        bases.append(params.get("api_base") or params.get("base_url"))
    names = _names(bases, models)
    pool = [Replica(name, inner, params, routing) for name, (inner, params, routing) in zip(names, replicas)]
    return replica_pool_lm(pool, model=group, label=label, model_type=model_type,
                           router_settings=router_settings_of(config, path), source=str(path), cache=cache, **shared)


def role_lm(lm: Any, role: str) -> Any:
    """A role's LM as given to ``DRPO(...)``: a list or tuple of replicas becomes one pool LM (labelled ``role``)."""
    return pool_from_lms(list(lm), role) if isinstance(lm, list | tuple) else lm


def replica_pool(replicas: Sequence[Any], name: str = "pool") -> Any:
    """One ``dspy.LM`` spread over ``replicas`` (``dspy.LM``s of one model on different servers) by litellm's
    Router, with failover (``docs/scale-out.md``); ``name`` labels the pool (a role's name, say)."""
    return pool_from_lms(list(replicas), name)
