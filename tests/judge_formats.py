"""A judge's JSON-schema response format, as DSPy's JSONAdapter sends it, for tests on the embedded model."""

VERDICT_SCHEMA = {"type": "object", "properties": {"rationale": {"type": "string"}, "score": {"type": "integer",
                  "enum": [1, 2, 3, 4, 5]}}, "required": ["rationale", "score"]}
JUDGE_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA}}
