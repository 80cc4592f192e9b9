"""Bounds on inputs whose cost is not their token count (``settings.InputBounds``).

The engine compiles JSON schemas, regular expressions, grammars and choices into
token masks, and checks stop strings, bad words and biases at every generated token: work
that a request's token count (what quotas meter) does not show. :func:`check_input_bounds`
refuses a body past any bound with a 400 ``input_too_complex`` whose ``param`` is the path
of the field, before admission. It is cheap by construction: lists are measured by their
length, JSON schemas walked iteratively (no recursion, whatever the nesting) and the walk
stops at the first bound passed, so its work is bounded by the bounds, not by the body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from llmplat.gateway.errors import InvalidRequest
from llmplat.settings import InputBounds

CODE = "input_too_complex"

# What a key's value is in a JSON schema, for the walk.
_SCHEMA = 0  # a schema, or a list of schemas (anyOf, prefixItems, ...)
_PROPERTIES = 1  # name → schema; names are properties
_PATTERN_PROPERTIES = 2  # regex → schema; names are properties and patterns
_DEFINITIONS = 3  # name → schema ($defs, definitions, dependentSchemas)
_DATA = 4  # a JSON value that is not a schema (enum, const, default, examples, ...)

_NAMED: dict[str, int] = {
    "properties": _PROPERTIES,
    "patternProperties": _PATTERN_PROPERTIES,
    "$defs": _DEFINITIONS,
    "definitions": _DEFINITIONS,
    "dependentSchemas": _DEFINITIONS,
}
_DATA_KEYWORDS = frozenset(
    {"enum", "const", "default", "examples", "required", "description", "title", "$comment"}
)


def refuse(param: str, what: str, limit: int, setting: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' {what}; this server accepts at most {limit} "
        f"(input bound '{setting}'). Send a smaller or simpler request.",
        param=param,
        code=CODE,
    )


@dataclass
class SchemaTally:
    """What a request's JSON schemas add up to so far (the schema bounds are totals)."""

    bounds: InputBounds
    json_bytes: int = 0
    nodes: int = 0
    properties: int = 0
    enum_values: int = 0
    patterns: int = 0

    def walk(self, schema: Any, param: str) -> None:
        """Add ``schema`` (at ``param``) to the tally; raise at the first bound passed."""
        b = self.bounds
        stack: list[tuple[Any, int, int]] = [(schema, _SCHEMA, 1)]
        while stack:
            node, kind, depth = stack.pop()
            if isinstance(node, dict):
                self._container(node, depth, param)
                if kind == _SCHEMA:
                    self._count_node(param)
                if kind in (_PROPERTIES, _PATTERN_PROPERTIES):
                    self.properties += len(node)
                    if self.properties > b.schema_properties:
                        raise refuse(
                            param,
                            f"has at least {self.properties} object properties (the "
                            "request's JSON schemas together)",
                            b.schema_properties,
                            "schema_properties",
                        )
                for key, value in node.items():
                    self._add_bytes(_str_bytes(key) + 1, param)  # "key":
                    if kind == _PATTERN_PROPERTIES:
                        self._pattern(key, param)
                    if kind != _SCHEMA:  # a name → its schema, or data
                        stack.append((value, _SCHEMA if kind != _DATA else _DATA, depth + 1))
                        continue
                    if key == "pattern" and isinstance(value, str):
                        self._pattern(value, param)
                    elif key == "enum" and isinstance(value, list):
                        self.enum_values += len(value)
                        if self.enum_values > b.schema_enum_values:
                            raise refuse(
                                param,
                                f"has at least {self.enum_values} enum values (the request's "
                                "JSON schemas together)",
                                b.schema_enum_values,
                                "schema_enum_values",
                            )
                    if key in _DATA_KEYWORDS:
                        child = _DATA
                    else:
                        child = _NAMED.get(key, _SCHEMA) if isinstance(value, dict) else _SCHEMA
                    stack.append((value, child, depth + 1))
            elif isinstance(node, list):
                self._container(node, depth, param)
                # a list of schemas (anyOf, allOf, prefixItems), or of data
                item_kind = _DATA if kind == _DATA else _SCHEMA
                stack.extend((item, item_kind, depth + 1) for item in node)
            else:
                self._add_bytes(_scalar_bytes(node), param)

    def _container(self, node: dict[str, Any] | list[Any], depth: int, param: str) -> None:
        if depth > self.bounds.schema_depth:
            raise refuse(
                param,
                f"is nested at least {depth} levels deep (objects and arrays)",
                self.bounds.schema_depth,
                "schema_depth",
            )
        self._add_bytes(2 + max(len(node) - 1, 0), param)  # brackets and commas

    def _count_node(self, param: str) -> None:
        self.nodes += 1
        if self.nodes > self.bounds.schema_nodes:
            raise refuse(
                param,
                f"has at least {self.nodes} subschemas (the request's JSON schemas together)",
                self.bounds.schema_nodes,
                "schema_nodes",
            )

    def _pattern(self, pattern: str, param: str) -> None:
        b = self.bounds
        self.patterns += 1
        if self.patterns > b.schema_patterns:
            raise refuse(
                param,
                f"has at least {self.patterns} patterns (the request's JSON schemas together)",
                b.schema_patterns,
                "schema_patterns",
            )
        if len(pattern) > b.schema_pattern_chars:
            raise refuse(
                param,
                f"has a pattern of {len(pattern)} characters",
                b.schema_pattern_chars,
                "schema_pattern_chars",
            )

    def _add_bytes(self, n: int, param: str) -> None:
        self.json_bytes += n
        if self.json_bytes > self.bounds.schema_bytes:
            raise refuse(
                param,
                f"is at least {self.json_bytes} bytes as compact JSON (the request's JSON schemas "
                "together)",
                self.bounds.schema_bytes,
                "schema_bytes",
            )

    def walk_text(self, text: str, param: str) -> None:
        """A schema (or structural tag) given as a JSON string: its length is bounded
        before it is parsed; one that does not parse is left to the engine's validation."""
        if len(text) > self.bounds.schema_bytes:
            raise refuse(
                param,
                f"is {len(text)} characters long",
                self.bounds.schema_bytes,
                "schema_bytes",
            )
        try:
            value = json.loads(text)
        except RecursionError:
            raise refuse(
                param, "is nested too deeply to parse", self.bounds.schema_depth, "schema_depth"
            ) from None
        except ValueError:
            return
        self.walk(value, param)


def _str_bytes(s: str) -> int:
    """Bytes of ``s`` as a JSON string (quoted, escaped, UTF-8)."""
    return len(encode_basestring(s).encode("utf-8", "surrogatepass"))


def _scalar_bytes(v: Any) -> int:
    if isinstance(v, str):
        return _str_bytes(v)
    return len(json.dumps(v))


def check_input_bounds(body: dict[str, Any], bounds: InputBounds, chat: bool) -> None:
    """Raise a 400 ``input_too_complex`` when ``body`` (a chat or completions body, fields
    screened) passes one of ``bounds``. Fields of the wrong type are left to validation."""
    tally = SchemaTally(bounds)
    _check_response_format(body.get("response_format"), tally)
    tools = body.get("tools") if chat else None
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            params = function.get("parameters") if isinstance(function, dict) else None
            if params is not None:
                tally.walk(params, f"tools.{i}.function.parameters")
    _check_structured_outputs(body.get("structured_outputs"), tally)
    _check_strings(body.get("stop"), "stop", bounds.stop_count, bounds.stop_chars, "stop")
    _check_strings(
        body.get("bad_words"),
        "bad_words",
        bounds.bad_words_count,
        bounds.bad_words_chars,
        "bad_words",
    )
    _check_length(body, "logit_bias", bounds.logit_bias_entries, "logit_bias_entries", "entries")
    _check_length(body, "allowed_token_ids", bounds.token_ids, "token_ids", "token ids")
    _check_length(body, "stop_token_ids", bounds.token_ids, "token_ids", "token ids")
    if not chat:
        _check_prompts(body.get("prompt"), bounds)


def _check_response_format(fmt: Any, tally: SchemaTally) -> None:
    if not isinstance(fmt, dict):
        return
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is not None:
            tally.walk(schema, "response_format.json_schema.schema")
    elif fmt.get("type") == "structural_tag":
        # structures[].schema or a 'format' tree that holds schemas, regexes, grammars
        tally.walk({k: v for k, v in fmt.items() if k != "type"}, "response_format")


def _check_structured_outputs(spec: Any, tally: SchemaTally) -> None:
    if not isinstance(spec, dict):
        return
    b = tally.bounds
    schema = spec.get("json")
    if isinstance(schema, str):
        tally.walk_text(schema, "structured_outputs.json")
    elif schema is not None:
        tally.walk(schema, "structured_outputs.json")
    tag = spec.get("structural_tag")
    if isinstance(tag, str):
        tally.walk_text(tag, "structured_outputs.structural_tag")
    for key in ("regex", "whitespace_pattern"):
        _check_text(spec.get(key), f"structured_outputs.{key}", b.regex_chars, "regex_chars")
    _check_text(spec.get("grammar"), "structured_outputs.grammar", b.grammar_chars, "grammar_chars")
    _check_strings(
        spec.get("choice"), "structured_outputs.choice", b.choice_count, b.choice_chars, "choice"
    )


def _check_text(text: Any, param: str, limit: int, setting: str) -> None:
    if isinstance(text, str) and len(text) > limit:
        raise refuse(param, f"is {len(text)} characters long", limit, setting)


def _check_strings(value: Any, param: str, max_count: int, max_chars: int, setting: str) -> None:
    """A string or a list of strings: how many, and their characters together."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        return
    if len(items) > max_count:
        raise refuse(param, f"has {len(items)} entries", max_count, f"{setting}_count")
    chars = sum(len(s) for s in items if isinstance(s, str))
    if chars > max_chars:
        raise refuse(
            param, f"has {chars} characters (entries together)", max_chars, f"{setting}_chars"
        )


def _check_length(body: dict[str, Any], param: str, limit: int, setting: str, what: str) -> None:
    value = body.get(param)
    if isinstance(value, dict | list) and len(value) > limit:
        raise refuse(param, f"has {len(value)} {what}", limit, setting)


def _check_prompts(prompt: Any, bounds: InputBounds) -> None:
    """A list of prompts: strings, or lists of token ids (a flat list of ints is one)."""
    if not isinstance(prompt, list) or not prompt or isinstance(prompt[0], int):
        return
    if len(prompt) > bounds.prompts:
        raise refuse("prompt", f"has {len(prompt)} prompts", bounds.prompts, "prompts")
