"""Structured output: the request's ``response_format`` checked before any upstream call.

``{"type": "text"}`` (or none) is plain text. ``{"type": "json_object"}`` asks for any JSON object;
``{"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}}`` for JSON matching the
schema, which must itself be a valid JSON Schema (checked with ``jsonschema`` when it is installed, as it is with
litellm). The format is forwarded to the base model unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from drpo_dspy.serve.errors import bad_request

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TYPES = ("text", "json_object", "json_schema")


def check_json_schema(schema: Any, where: str) -> None:
    """A 400 naming ``where`` unless ``schema`` is a JSON object that is a valid JSON Schema."""
    if not isinstance(schema, dict):
        raise bad_request(f"{where} must be a JSON Schema object, got {type(schema).__name__}", param=where)
    try:
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for
    except ImportError:  # pragma: no cover - jsonschema comes with litellm
        return
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        path = "".join(f"[{part!r}]" for part in exc.absolute_path)
        raise bad_request(f"{where} is not a valid JSON Schema: {exc.message[:300]} (at {path or 'the root'})",
                          param=where, code="invalid_json_schema") from None


def parse_response_format(value: Any) -> dict[str, Any] | None:
    """The response format to forward (None for plain text)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in _TYPES:
        raise bad_request(f"'response_format' must be an object with type one of {', '.join(_TYPES)}",
                          param="response_format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise bad_request("'response_format.json_schema' must be an object with 'name' and 'schema'",
                          param="response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad_request(f"'response_format.json_schema.name' must be 1-64 letters, digits, '_' or '-', got "
                          f"{name!r}", param="response_format.json_schema.name")
    if "schema" not in spec:
        raise bad_request("'response_format.json_schema.schema' is required: the JSON Schema of the answer",
                          param="response_format.json_schema.schema")
    check_json_schema(spec["schema"], "response_format.json_schema.schema")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise bad_request("'response_format.json_schema.strict' must be true or false",
                          param="response_format.json_schema.strict")
    return {"type": "json_schema", "json_schema": spec}
