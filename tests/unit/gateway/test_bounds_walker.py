"""The JSON-schema walk of ``gateway.bounds``: exact, iterative, bounded by its bounds."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmplat.config.teams import InputBoundsOverrides
from llmplat.gateway.bounds import SchemaTally, check_input_bounds
from llmplat.gateway.errors import InvalidRequest
from llmplat.settings import InputBounds

UNBOUNDED = InputBounds(**{name: 10**9 for name in InputBounds.model_fields})

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["properties", "pattern", "enum", "items", "anyOf", "$defs", "x"])
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=40,
)


def compact_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_the_byte_count_is_the_compact_json_size(value: Any) -> None:
    tally = SchemaTally(UNBOUNDED)
    tally.walk(value, "p")
    assert tally.json_bytes == compact_bytes(value)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(1, 6), st.integers(1, 200))
def test_a_walk_refuses_exactly_past_its_depth_and_size(
    value: Any, max_depth: int, max_bytes: int
) -> None:
    bounds = UNBOUNDED.model_copy(update={"schema_depth": max_depth, "schema_bytes": max_bytes})
    within = depth(value) <= max_depth and compact_bytes(value) <= max_bytes
    try:
        SchemaTally(bounds).walk(value, "p")
    except InvalidRequest as exc:
        assert not within
        assert exc.code == "input_too_complex" and exc.param == "p"
    else:
        assert within


def test_properties_enums_and_patterns_are_counted_by_their_role() -> None:
    """A property named like a keyword is a name, not the keyword; data is not schema."""
    schema = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "pattern": "^a$"},
            "enum": {"enum": ["x", "y", {"pattern": "not a schema"}]},
            "properties": {"type": "object", "properties": {"a": {}}},
        },
        "patternProperties": {"^b": {}},
        "$defs": {"d": {"const": {"properties": {"c": {}}}}},
        "anyOf": [{"type": "null"}, {"pattern": "z"}],
    }
    tally = SchemaTally(UNBOUNDED)
    tally.walk(schema, "p")
    assert (tally.properties, tally.enum_values, tally.patterns) == (5, 3, 3)
    assert tally.nodes == 9  # root, 3 + 1 properties, ^b, d, 2 anyOf branches


def test_a_walk_stops_early_on_a_huge_schema() -> None:
    huge = {"type": "object", "properties": {f"p{i}": {"pattern": "a"} for i in range(200_000)}}
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="schema_(bytes|properties)"):
        SchemaTally(InputBounds()).walk(huge, "p")
    wide = {"anyOf": [{"type": "string"}] * 200_000}
    with pytest.raises(InvalidRequest, match="schema_bytes"):
        SchemaTally(InputBounds()).walk(wide, "p")
    assert time.perf_counter() - started < 0.5


def test_fields_of_the_wrong_type_are_left_to_validation() -> None:
    body = {
        "response_format": "json",
        "tools": [1, {"function": None}, {"function": {"parameters": "x"}}],
        "structured_outputs": {"json": "{not json", "choice": "abc", "regex": 3},
        "stop": 5,
        "bad_words": {"a": 1},
        "logit_bias": 7,
        "prompt": [],
    }
    check_input_bounds(body, InputBounds(), chat=True)
    check_input_bounds(body, InputBounds(), chat=False)


def test_a_flat_token_list_is_one_prompt() -> None:
    check_input_bounds({"prompt": list(range(1000))}, InputBounds(prompts=1), chat=False)
    with pytest.raises(InvalidRequest, match="has 2 prompts"):
        check_input_bounds({"prompt": [[1], [2]]}, InputBounds(prompts=1), chat=False)


def test_team_overrides_name_every_bound_and_only_those() -> None:
    assert list(InputBoundsOverrides.model_fields) == list(InputBounds.model_fields)
    gateway = InputBounds()
    assert InputBoundsOverrides().applied_to(gateway) is gateway
    mine = InputBoundsOverrides(stop_count=1).applied_to(gateway)
    assert mine.stop_count == 1 and mine.schema_bytes == gateway.schema_bytes
    with pytest.raises(ValueError):
        InputBoundsOverrides(stop_count=0)
