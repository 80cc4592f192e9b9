"""The costliest request a team's input bounds allow (benchmarks/isolation.py and the
real-platform isolation test send it)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from llmplat.settings import InputBounds


def costly_schema(bounds: InputBounds, salt: str) -> dict[str, Any]:
    """A schema at the default bounds: ``schema_properties`` required string properties, the
    first ``schema_patterns`` of them patterned, under ``schema_bytes`` in all."""
    properties: dict[str, Any] = {}
    for i in range(bounds.schema_properties):
        prop: dict[str, Any] = {"type": "string"}
        if i < bounds.schema_patterns:
            head = salt[i % len(salt)]
            prop["pattern"] = f"^{head}[a-z]{{1,8}}(-[a-z0-9]{{2,{2 + i % 5}}}){{0,4}}$"
        properties[f"p{i}_{salt}"] = prop
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > bounds.schema_bytes:
        raise SystemExit(f"the schema is {size} bytes, over schema_bytes {bounds.schema_bytes}")
    return schema


def attack_body(model: str, bounds: InputBounds) -> dict[str, Any]:
    salt = secrets.token_hex(4)
    per_stop = bounds.stop_chars // bounds.stop_count
    return {
        "model": model,
        "messages": [{"role": "user", "content": "fill the form"}],
        "max_tokens": 1,
        "stop": [f"{salt}{i:04d}".ljust(per_stop, "z") for i in range(bounds.stop_count)],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "form", "schema": costly_schema(bounds, salt)},
        },
    }
