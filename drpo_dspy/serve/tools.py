"""Tools (function calling): the request's ``tools``/``tool_choice`` checked, and tool calls in OpenAI's shape.

The tools are forwarded to the base model as given (after checking their shape and their parameter schemas); the
model's tool calls come back as OpenAI ``tool_calls`` (whole in a completion, in indexed pieces in a stream).
"""

from __future__ import annotations

import re
from typing import Any

from drpo_dspy.serve.errors import bad_request
from drpo_dspy.serve.structured import check_json_schema

MAX_TOOLS = 128  # OpenAI's limit
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = ("none", "auto", "required")


def parse_tools(value: Any) -> list[dict[str, Any]] | None:
    """The request's ``tools`` (None when absent or empty), each ``{type: function, function: {name, ...}}``."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise bad_request("'tools' must be a list of {type: 'function', function: {...}} objects", param="tools",
                          code="invalid_type")
    if len(value) > MAX_TOOLS:
        raise bad_request(f"'tools' has {len(value)} entries; at most {MAX_TOOLS} are accepted", param="tools")
    names = set()
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(f"{where} must be an object with type 'function'", param=where)
        function = tool.get("function")
        if not isinstance(function, dict):
            raise bad_request(f"{where}.function must be an object with a 'name'", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(f"{where}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                              param=f"{where}.function.name")
        if name in names:
            raise bad_request(f"{where}.function.name {name!r} is given twice", param=f"{where}.function.name")
        names.add(name)
        if function.get("description") is not None and not isinstance(function["description"], str):
            raise bad_request(f"{where}.function.description must be a string", param=f"{where}.function.description")
        if function.get("parameters") is not None:
            check_json_schema(function["parameters"], f"{where}.function.parameters")
        if function.get("strict") is not None and not isinstance(function["strict"], bool):
            raise bad_request(f"{where}.function.strict must be true or false", param=f"{where}.function.strict")
    return value


def parse_tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> Any:
    """``none``/``auto``/``required`` or ``{type: function, function: {name}}`` naming one of ``tools``."""
    if value is None:
        return None
    if tools is None:
        if value == "none":
            return None
        raise bad_request("'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    if isinstance(value, str):
        if value not in _CHOICES:
            raise bad_request(f"'tool_choice' must be one of {', '.join(_CHOICES)} or a function, got {value!r}",
                              param="tool_choice")
        return value
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(name, str):
        raise bad_request("'tool_choice' must be a string or {type: 'function', function: {name}}",
                          param="tool_choice")
    if name not in {tool["function"]["name"] for tool in tools}:
        raise bad_request(f"'tool_choice' names the function {name!r}, which is not among 'tools'",
                          param="tool_choice")
    return value


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def tool_call(call: Any) -> dict[str, Any]:
    """A whole tool call (from a completion) as OpenAI writes it."""
    function = _field(call, "function")
    return {"id": _field(call, "id") or "", "type": "function",
            "function": {"name": _field(function, "name") or "", "arguments": _field(function, "arguments") or ""}}


def tool_call_piece(call: Any, default_index: int = 0) -> dict[str, Any]:
    """A streamed tool-call delta as OpenAI writes it: ``index`` always, ``id``/``type`` on a call's first piece,
    and whichever of the function's ``name`` and ``arguments`` this piece carries."""
    index = _field(call, "index")
    piece: dict[str, Any] = {"index": default_index if index is None else int(index)}
    if _field(call, "id"):
        piece["id"], piece["type"] = _field(call, "id"), "function"
    function = _field(call, "function")
    parts = {key: _field(function, key) for key in ("name", "arguments") if _field(function, key) is not None}
    if parts:
        piece["function"] = parts
    return piece
