"""Input bounds (issue 27): inputs whose cost is not their token count are refused with a
400 ``input_too_complex`` naming the parameter, before the engine and before quotas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.gateway.bounds import check_input_bounds
from llmplat.gateway.errors import InvalidRequest
from llmplat.settings import InputBounds
from support import MODEL, auth
from support.teams import team_key

TIGHT = InputBounds(
    schema_bytes=400,
    schema_depth=6,
    schema_nodes=12,
    schema_properties=8,
    schema_enum_values=10,
    schema_patterns=4,
    schema_pattern_chars=20,
    regex_chars=30,
    grammar_chars=100,
    choice_count=5,
    choice_chars=40,
    stop_count=3,
    stop_chars=20,
    bad_words_count=3,
    bad_words_chars=20,
    logit_bias_entries=4,
    token_ids=5,
    prompts=3,
)
"""Small bounds, so each case's body at, just over and far over its bound stays small."""

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 1,
        **fields,
    }


def completion(**fields: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1, **fields}


def response_format(schema: Any) -> tuple[str, dict[str, Any]]:
    return chat(
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    )


def tool(schema: Any) -> tuple[str, dict[str, Any]]:
    fn = {"name": "f", "parameters": schema}
    return chat(
        tools=[
            {"type": "function", "function": {"name": "g"}},
            {"type": "function", "function": fn},
        ]
    )


def structured(**spec: Any) -> tuple[str, dict[str, Any]]:
    return chat(structured_outputs=spec)


def nested(depth: int) -> dict[str, Any]:
    """A schema nested ``depth`` levels deep (arrays of arrays)."""
    schema: dict[str, Any] = {}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


def chars(total: int, per: int = 6) -> list[str]:
    """Strings of ``total`` characters together, at most ``per`` each."""
    return ["a" * per] * (total // per) + (["a" * (total % per)] if total % per else [])


# bound → (its value in TIGHT, body measuring n on it, the param a refusal names)
CASES: dict[str, tuple[Callable[[int], tuple[str, dict[str, Any]]], str]] = {
    # {"description":"xx…"} is 18 bytes plus the text
    "schema_bytes": (
        lambda n: response_format({"description": "x" * (n - 18)}),
        "response_format.json_schema.schema",
    ),
    "schema_depth": (
        lambda n: structured(json=nested(n)),
        "structured_outputs.json",
    ),
    "schema_nodes": (
        lambda n: tool({"anyOf": [{}] * (n - 1)}),
        "tools.1.function.parameters",
    ),
    "schema_properties": (
        lambda n: response_format(
            {"type": "object", "properties": {f"p{i}": {} for i in range(n)}}
        ),
        "response_format.json_schema.schema",
    ),
    "schema_enum_values": (
        lambda n: structured(json={"enum": list(range(n))}),
        "structured_outputs.json",
    ),
    "schema_patterns": (
        lambda n: tool({"type": "object", "patternProperties": {f"^{i}$": {} for i in range(n)}}),
        "tools.1.function.parameters",
    ),
    "schema_pattern_chars": (
        lambda n: response_format({"type": "string", "pattern": "a" * n}),
        "response_format.json_schema.schema",
    ),
    "regex_chars": (lambda n: structured(regex="a" * n), "structured_outputs.regex"),
    "grammar_chars": (
        lambda n: structured(grammar='root ::= "' + "a" * (n - 11) + '"'),
        "structured_outputs.grammar",
    ),
    "choice_count": (lambda n: structured(choice=["a"] * n), "structured_outputs.choice"),
    "choice_chars": (lambda n: structured(choice=chars(n, 10)), "structured_outputs.choice"),
    "stop_count": (lambda n: chat(stop=[f"s{i}" for i in range(n)]), "stop"),
    "stop_chars": (lambda n: completion(stop=chars(n, 8)), "stop"),
    "bad_words_count": (lambda n: chat(bad_words=[f"w{i}" for i in range(n)]), "bad_words"),
    "bad_words_chars": (lambda n: completion(bad_words=chars(n, 8)), "bad_words"),
    "logit_bias_entries": (
        lambda n: chat(logit_bias={str(100 + i): 1 for i in range(n)}),
        "logit_bias",
    ),
    "token_ids": (
        lambda n: completion(allowed_token_ids=list(range(100, 100 + n))),
        "allowed_token_ids",
    ),
    "prompts": (lambda n: completion(prompt=["hi"] * n), "prompt"),
}


def test_every_bound_has_a_case() -> None:
    # grammar_compiles bounds compilations at once, not one request: test_grammar_compiles.py
    assert set(CASES) == set(InputBounds.model_fields) - {"grammar_compiles"}


@pytest.fixture
def engine(gateway):
    return gateway.state.gateway.backends[MODEL].engine


@pytest.mark.parametrize("bound", list(CASES))
async def test_at_the_bound_200_just_over_400_far_over_400_fast(
    bound: str, gateway, replica, engine
) -> None:
    body_for, param = CASES[bound]
    limit = getattr(TIGHT, bound)
    settings = gateway.state.gateway.config.gateway.model_copy(
        update={"input_bounds": TIGHT, "max_request_bytes": 4 << 20}
    )
    async with replica(gateway=settings) as (_, http):
        path, body = body_for(limit)
        r = await http.post(path, json=body, headers=auth())
        assert r.status_code == 200, r.text

        calls = len(engine.request_ids)
        path, body = body_for(limit + 1)
        r = await http.post(path, json=body, headers=auth())
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["code"], err["param"], err["type"]) == (
            "input_too_complex",
            param,
            "invalid_request_error",
        )
        assert f"at most {limit} (input bound '{bound}')" in err["message"]
        assert str(limit + 1) in err["message"]  # the measured value

        far = limit * 1000 if bound != "schema_depth" else 500  # under json.loads' own limit
        path, body = body_for(far)
        started = time.perf_counter()
        r = await http.post(path, json=body, headers=auth())
        elapsed = time.perf_counter() - started
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert elapsed < 1.0, elapsed
        assert len(engine.request_ids) == calls  # neither refusal reached the engine


async def test_the_measured_attack_is_refused_under_the_defaults(http, engine, records) -> None:
    """The issue's request: a 200 KB schema of 3,000 string properties with a pattern."""
    schema = {
        "type": "object",
        "properties": {
            f"field_{i:04d}": {"type": "string", "pattern": "^[a-z]{1,8}$"} for i in range(3000)
        },
    }
    path, body = response_format(schema)
    calls = len(engine.request_ids)
    started = time.perf_counter()
    r = await http.post(path, json=body, headers=auth())  # 130 KB: over the test's 64 KiB body
    assert r.status_code == 413
    # Under the default body limit (1 MiB) it is the schema bound that refuses it:
    with pytest.raises(InvalidRequest) as exc:
        check_input_bounds(body, InputBounds(), chat=True)
    assert exc.value.param == "response_format.json_schema.schema"
    assert exc.value.code == "input_too_complex"
    assert time.perf_counter() - started < 1.0
    assert len(engine.request_ids) == calls
    # 200 of its properties fit the default size and property bounds, not the pattern bound.
    few = {"type": "object", "properties": dict(list(schema["properties"].items())[:200])}
    r = await http.post(path, json=response_format(few)[1], headers=auth())
    assert r.status_code == 400
    assert "'schema_patterns'" in r.json()["error"]["message"]
    assert records[-1].status == 400


def test_ordinary_large_requests_pass_the_defaults() -> None:
    """A 64-tool agent (8 described parameters each, some with a pattern), a response
    schema with OpenAI's documented maxima (500 enum values, 5 levels of nested objects),
    4 stop strings and OpenAI's 300 logit_bias entries pass the defaults."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{t}",
                "description": "Does something useful with the repository. " * 2,
                "parameters": {
                    "type": "object",
                    "properties": {
                        f"arg_{a}": {
                            "type": "string",
                            "description": "An argument.",
                            **({"pattern": "^[A-Z]{3}-[0-9]+$"} if a == 0 and t % 2 else {}),
                        }
                        for a in range(8)
                    },
                    "required": ["arg_0"],
                },
            },
        }
        for t in range(64)
    ]
    enum = {"type": "string", "enum": [f"label-{i}" for i in range(500)]}
    deep = nested(11)  # OpenAI: 5 levels of nested objects, 2 JSON levels each, + root
    _, body = chat(
        tools=tools,
        tool_choice="required",
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "s",
                "schema": {"type": "object", "properties": {"a": enum, "b": deep}},
            },
        },
        stop=["\n\n", "###", "</answer>", "User:"],
        logit_bias={str(i): -100 for i in range(100, 400)},
    )
    # Checked directly: as a request it is refused for the test model's 256-token context
    # (the tools are part of the prompt).
    check_input_bounds(body, InputBounds(), chat=True)
    assert len(json.dumps(body)) > 50_000


async def test_deep_nesting_is_refused_without_recursion(gateway, replica) -> None:
    """A schema nested as deep as the JSON parser allows, anywhere in the request's
    schema-bearing fields (structural tags included), costs one bounded walk."""
    settings = gateway.state.gateway.config.gateway.model_copy(
        update={"max_request_bytes": 4 << 20}
    )
    tag = {
        "type": "structural_tag",
        "structures": [{"begin": "<f>", "schema": nested(500), "end": "</f>"}],
        "triggers": ["<f>"],
    }
    async with replica(gateway=settings) as (_, http):
        for path, body, param in [
            (*chat(response_format=tag), "response_format"),
            (
                *structured(structural_tag=json.dumps(nested(500))),
                "structured_outputs.structural_tag",
            ),
            (*tool(nested(500)), "tools.1.function.parameters"),
        ]:
            r = await http.post(path, json=body, headers=auth())
            assert r.status_code == 400, r.text
            assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
                "input_too_complex",
                param,
            )
            assert "'schema_depth'" in r.json()["error"]["message"]


async def test_schema_bounds_count_every_schema_of_a_request_together(gateway, replica) -> None:
    settings = gateway.state.gateway.config.gateway.model_copy(update={"input_bounds": TIGHT})
    five = {"type": "object", "properties": {f"p{i}": {} for i in range(5)}}
    async with replica(gateway=settings) as (_, http):
        path, body = tool(five)
        assert (await http.post(path, json=body, headers=auth())).status_code == 200
        body["response_format"] = response_format(five)[1]["response_format"]  # 10 > 8
        r = await http.post(path, json=body, headers=auth())
        assert r.status_code == 400
        # response_format is walked first, the tools' schemas pass the total
        assert r.json()["error"]["param"] == "tools.1.function.parameters"
        assert "'schema_properties'" in r.json()["error"]["message"]


# --- per-team overrides -----------------------------------------------------------------


async def test_a_team_override_lowers_or_raises_a_bound(
    gateway, http: httpx.AsyncClient, key_store: FileKeyStore, engine
) -> None:
    state = gateway.state.gateway
    admin = KeyAdmin(key_store)
    strict = await team_key(admin, state, "strict", input_bounds={"stop_count": 1})
    roomy = await team_key(admin, state, "roomy", input_bounds={"schema_properties": 2000})
    two_stops = chat(stop=["a", "b"])
    assert (await http.post(two_stops[0], json=two_stops[1], headers=auth())).status_code == 200
    r = await http.post(two_stops[0], json=two_stops[1], headers=auth(strict))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stop"
    assert "at most 1 (input bound 'stop_count')" in r.json()["error"]["message"]

    wide = response_format({"type": "object", "properties": {f"p{i}": {} for i in range(1500)}})
    r = await http.post(wide[0], json=wide[1], headers=auth())
    assert r.status_code == 400 and "'schema_properties'" in r.json()["error"]["message"]
    r = await http.post(wide[0], json=wide[1], headers=auth(roomy))
    assert r.status_code == 200, r.text

    # an update changes the one bound named, and every replica follows the store
    admin.update_team("roomy", {"input_bounds": {"stop_count": 1}})
    team = admin.get_team("roomy")
    assert (team.input_bounds.schema_properties, team.input_bounds.stop_count) == (2000, 1)
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        r = await http.post(two_stops[0], json=two_stops[1], headers=auth(roomy))
        if r.status_code == 400 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
