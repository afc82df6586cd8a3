"""How DRPO calls its helper roles: typed signatures, JSON-schema outputs where the provider enforces them."""

from __future__ import annotations

from typing import Any

import dspy

_SEEDED_PROVIDERS = ("embedded/", "scripted/")


def adapter_for(lm: Any) -> dspy.Adapter | None:
    """JSONAdapter (schema-constrained output) when the LM supports response schemas, else the configured one."""
    try:
        supports = bool(getattr(lm, "supports_response_schema", False))
    except Exception:
        supports = False
    return dspy.JSONAdapter() if supports else None


def sampling_config(lm: Any, *, temperature: float, sample: int, seed: int) -> dict[str, Any]:
    """Per-sample settings: distinct cache entries per sample, and a seed where the provider honours it."""
    config: dict[str, Any] = {"temperature": temperature, "rollout_id": sample}
    if str(getattr(lm, "model", "")).startswith(_SEEDED_PROVIDERS):
        config["seed"] = seed + sample
    return config


def call_typed(predictor: dspy.Predict, lm: Any, config: dict[str, Any], **inputs: Any) -> dspy.Prediction:
    """Run a typed predictor on ``lm`` with the adapter best suited to it."""
    adapter = adapter_for(lm)
    if adapter is None:
        return predictor(lm=lm, config=config, **inputs)
    with dspy.context(adapter=adapter):
        return predictor(lm=lm, config=config, **inputs)
