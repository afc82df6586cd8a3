"""How DRPO calls its helper roles: typed signatures, JSON-schema outputs where the provider enforces them."""

from __future__ import annotations

from typing import Any

import dspy

_SEEDED_PROVIDERS = ("embedded/", "scripted/")


class SchemaJSONAdapter(dspy.JSONAdapter):
    """JSON adapter for providers that enforce the output schema.

    The structure is described as a list of keys with their meaning rather than DSPy's ``{"field": "{field}"}``
    template, which small models tend to copy back verbatim.
    """

    def format_field_structure(self, signature: type[dspy.Signature]) -> str:
        lines = ["Reply with one JSON object whose keys are, in this order:"]
        for name, field in signature.output_fields.items():
            lines.append(f"- {name}: {(field.json_schema_extra or {}).get('desc', '')}".rstrip(": "))
        return "\n".join(lines)


def supports_schema(lm: Any) -> bool:
    """Whether the provider enforces JSON response schemas (the embedded model does, by grammar)."""
    try:
        return bool(getattr(lm, "supports_response_schema", False))
    except Exception:
        return False


def adapter_for(lm: Any, *, single_request: bool = False) -> dspy.Adapter | None:
    """A schema-constrained JSON adapter when the LM supports response schemas; else, with ``single_request``, a chat
    adapter without DSPy's JSON retry (one request per call, as the original code makes); else None (the
    configured adapter, which retries an unreadable chat reply once in JSON mode)."""
    if supports_schema(lm):
        return SchemaJSONAdapter()
    return dspy.ChatAdapter(use_json_adapter_fallback=False) if single_request else None


def requests_per_call(lm: Any, *, single_request: bool = False) -> int:
    """The most provider requests one typed call can make (two when DSPy's JSON retry may follow a chat reply)."""
    return 1 if single_request or supports_schema(lm) else 2


def sampling_config(lm: Any, *, temperature: float, sample: int, seed: int) -> dict[str, Any]:
    """Per-sample settings: distinct cache entries per sample, and a seed where the provider honours it."""
    config: dict[str, Any] = {"temperature": temperature, "rollout_id": sample}
    if str(getattr(lm, "model", "")).startswith(_SEEDED_PROVIDERS):
        config["seed"] = seed + sample
    return config


def call_typed(predictor: dspy.Predict, lm: Any, config: dict[str, Any], *, single_request: bool = False,
               **inputs: Any) -> dspy.Prediction:
    """Run a typed predictor on ``lm`` with the adapter best suited to it."""
    adapter = adapter_for(lm, single_request=single_request)
    if adapter is None:
        return predictor(lm=lm, config=config, **inputs)
    with dspy.context(adapter=adapter):
        return predictor(lm=lm, config=config, **inputs)


class _TolerantParsing:
    """Mixin: an unreadable completion parses to empty fields instead of failing its siblings (``n > 1``)."""

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        from dspy.utils.exceptions import AdapterParseError

        try:
            return super().parse(signature, completion)  # type: ignore[misc]
        except AdapterParseError:
            return {name: None for name in signature.output_fields}


class TolerantChatAdapter(_TolerantParsing, dspy.ChatAdapter):
    """Chat adapter for multi-sample calls: each sample parses (or fails) on its own."""


class TolerantJSONAdapter(_TolerantParsing, SchemaJSONAdapter):
    """JSON adapter for multi-sample calls: each sample parses (or fails) on its own."""


def call_typed_samples(predictor: dspy.Predict, lm: Any, config: dict[str, Any], n: int,
                       **inputs: Any) -> list[dspy.Prediction | None]:
    """One request for ``n`` samples; each unreadable sample becomes ``None`` (the others survive)."""
    adapter = TolerantJSONAdapter() if supports_schema(lm) else TolerantChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(adapter=adapter):
        pred = predictor(lm=lm, config={**config, "n": n}, **inputs)
    completions = pred.completions
    samples: list[dspy.Prediction | None] = []
    for i in range(len(completions)):
        sample = completions[i]
        samples.append(None if all(sample[name] is None for name in predictor.signature.output_fields) else sample)
    return samples
