"""New grammar compilations are charged to the team that asks for them (gateway.grammars)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.engine.fake import FAIL_BEFORE, HANG
from llmplat.errors import RateLimited
from llmplat.gateway.grammars import MAX_HOLD_S, UNKNOWN_COMPILE_S, GrammarGate, grammar_key
from llmplat.gateway.state import GatewayState
from support import MODEL, auth, with_gateway
from support.teams import team_key


def schema_chat(salt: str, content: str = "fill the form") -> dict[str, Any]:
    schema = {"type": "object", "properties": {f"field_{salt}": {"type": "string"}}}
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(gateway, monkeypatch: pytest.MonkeyPatch, clock: Clock) -> GatewayState:
    state: GatewayState = gateway.state.gateway
    monkeypatch.setattr(state, "config", with_gateway(state.config, request_timeout_s=5.0))
    monkeypatch.setattr(state, "grammars", GrammarGate(clock=clock))
    return state


async def until(condition) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_a_teams_second_new_grammar_waits_for_its_first(
    http: httpx.AsyncClient, state: GatewayState, key_store: FileKeyStore, records, clock: Clock
) -> None:
    """While a team's new schema compiles (the engine has not answered), its next new
    schema is a 429 naming the bound; the same schema again, and another team's new
    schema, are served; once the first is compiled the team may compile another."""
    ci = await team_key(KeyAdmin(key_store), state, "ci")
    ide = await team_key(KeyAdmin(key_store), state, "ide")
    engine = state.backends[MODEL].engine
    compiling = asyncio.create_task(
        http.post("/v1/chat/completions", json=schema_chat("a", HANG), headers=auth(ci))
    )
    await until(lambda: state.grammars.compiling_for("ci") == 1)
    calls = len(engine.request_ids)

    refused = await http.post("/v1/chat/completions", json=schema_chat("b"), headers=auth(ci))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "grammar_concurrency"
    assert "input bound 'grammar_compiles'" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert len(engine.request_ids) == calls  # refused before the engine, and before quota
    assert (records[-1].status, records[-1].error_code) == (429, "grammar_concurrency")
    assert records[-1].usage is None  # nothing billed

    # the spec being compiled is not new: the engine compiles it once
    same = await http.post("/v1/chat/completions", json=schema_chat("a"), headers=auth(ci))
    assert same.status_code == 200
    # other teams have their own count
    other = await http.post("/v1/chat/completions", json=schema_chat("b"), headers=auth(ide))
    assert other.status_code == 200
    assert state.grammars.compiling_for("ide") == 0

    compiling.cancel()
    await asyncio.gather(compiling, return_exceptions=True)
    # gone before the engine answered: the engine may compile on, so it still counts ...
    assert state.grammars.compiling_for("ci") == 1
    clock.now += UNKNOWN_COMPILE_S  # ... for a while (ci has no answered stream to time)
    assert state.grammars.compiling_for("ci") == 0
    again = await http.post("/v1/chat/completions", json=schema_chat("b"), headers=auth(ci))
    assert again.status_code == 200


async def test_a_compiled_spec_is_not_counted_again(
    http: httpx.AsyncClient, state: GatewayState, key_store: FileKeyStore
) -> None:
    ci = await team_key(KeyAdmin(key_store), state, "ci")
    assert (
        await http.post("/v1/chat/completions", json=schema_chat("a"), headers=auth(ci))
    ).status_code == 200
    compiling = asyncio.create_task(
        http.post("/v1/chat/completions", json=schema_chat("b", HANG), headers=auth(ci))
    )
    await until(lambda: state.grammars.compiling_for("ci") == 1)
    # 'a' was compiled: a cache hit, served beside the new 'b'
    assert (
        await http.post("/v1/chat/completions", json=schema_chat("a"), headers=auth(ci))
    ).status_code == 200
    compiling.cancel()
    await asyncio.gather(compiling, return_exceptions=True)


async def test_a_spec_the_engine_failed_on_is_still_new(
    http: httpx.AsyncClient, state: GatewayState, key_store: FileKeyStore, clock: Clock
) -> None:
    ci = await team_key(KeyAdmin(key_store), state, "ci")
    failed = await http.post(
        "/v1/chat/completions", json=schema_chat("a", FAIL_BEFORE), headers=auth(ci)
    )
    assert failed.status_code >= 500
    # the engine answered (with an error): nothing left compiling, and 'a' is not cached
    assert state.grammars.compiling_for("ci") == 0
    compiling = asyncio.create_task(
        http.post("/v1/chat/completions", json=schema_chat("b", HANG), headers=auth(ci))
    )
    await until(lambda: state.grammars.compiling_for("ci") == 1)
    r = await http.post("/v1/chat/completions", json=schema_chat("a"), headers=auth(ci))
    assert r.status_code == 429 and r.json()["error"]["code"] == "grammar_concurrency"
    compiling.cancel()
    await asyncio.gather(compiling, return_exceptions=True)


async def test_a_team_may_be_allowed_more(
    http: httpx.AsyncClient, state: GatewayState, key_store: FileKeyStore
) -> None:
    roomy = await team_key(
        KeyAdmin(key_store), state, "roomy", input_bounds={"grammar_compiles": 2}
    )
    compiling = asyncio.create_task(
        http.post("/v1/chat/completions", json=schema_chat("a", HANG), headers=auth(roomy))
    )
    await until(lambda: state.grammars.compiling_for("roomy") == 1)
    second = asyncio.create_task(
        http.post("/v1/chat/completions", json=schema_chat("b", HANG), headers=auth(roomy))
    )
    await until(lambda: state.grammars.compiling_for("roomy") == 2)
    third = await http.post("/v1/chat/completions", json=schema_chat("c"), headers=auth(roomy))
    assert third.status_code == 429
    for task in (compiling, second):
        task.cancel()
    await asyncio.gather(compiling, second, return_exceptions=True)
    # gone before the engine answered: the engine would still be compiling both
    assert state.grammars.compiling_for("roomy") == 2


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **fields}


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("body", "compiles"),
    [
        (_chat(), False),
        (_chat(response_format={"type": "text"}), False),
        (_chat(response_format={"type": "json_object"}), True),
        (_chat(structured_outputs={"regex": "[a-z]+"}), True),
        (_chat(tools=TOOLS), False),  # tool_choice auto: nothing compiled
        (_chat(tools=TOOLS, tool_choice="auto"), False),
        (_chat(tools=TOOLS, tool_choice="required"), True),
        (_chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "f"}}), True),
    ],
)
def test_what_the_engine_compiles(body: dict[str, Any], compiles: bool) -> None:
    assert (grammar_key(body, chat=True) is not None) is compiles


def test_a_spec_is_keyed_as_the_engine_caches_it() -> None:
    """Key order counts (the engine compiles the schema as sent, and property order changes
    the grammar), and so does the model (each engine has its own cache)."""
    ab = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    ba = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}

    def body(schema: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
        fmt = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}
        return _chat(response_format=fmt) | {"model": model}

    assert grammar_key(body(ab), chat=True) == grammar_key(body(ab), chat=True)
    assert grammar_key(body(ab), chat=True) != grammar_key(body(ba), chat=True)
    assert grammar_key(body(ab), chat=True) != grammar_key(body(ab, "other"), chat=True)


def test_the_gate_forgets_the_least_recently_used_spec() -> None:
    gate = GrammarGate(remembered=2)
    for key in ("a", "b", "c"):
        with gate.compiling("t", key, 1) as slot:
            slot.compiled(first_chunk=True)
    with gate.compiling("t", "c", 1), gate.compiling("t", "b", 1):  # remembered: not counted
        assert gate.compiling_for("t") == 0
    with gate.compiling("t", "a", 1):  # forgotten: new again
        assert gate.compiling_for("t") == 1


def test_a_compilation_whose_request_went_away_still_counts() -> None:
    """The engine cannot interrupt a compilation: a request that went away after the engine
    call keeps its team's count for as long as recent compilations took (before any:
    UNKNOWN_COMPILE_S); one refused before the engine call does not."""
    now = [0.0]
    gate = GrammarGate(clock=lambda: now[0])
    with gate.compiling("t", "first", 1) as slot:
        slot.sent()
    assert gate.compiling_for("t") == 1  # nothing finished yet: the default hold
    now[0] += UNKNOWN_COMPILE_S
    assert gate.compiling_for("t") == 0

    with gate.compiling("t", "a", 1) as slot:
        slot.sent()
        now[0] += 2.0
        slot.compiled(first_chunk=True)
    with gate.compiling("t", "b", 1) as slot:
        slot.sent()  # then the client goes away
    assert gate.compiling_for("t") == 1
    with pytest.raises(RateLimited), gate.compiling("t", "c", 1):
        pass
    with gate.compiling("u", "c", 1) as slot:  # other teams are not held ...
        assert gate.compiling_for("u") == 1
        slot.sent()  # ... nor is their hold shortened by t's cheap compilations
    now[0] += 2.0
    assert gate.compiling_for("t") == 0
    assert gate.compiling_for("u") == 1
    now[0] += UNKNOWN_COMPILE_S
    assert gate.compiling_for("u") == 0
    with gate.compiling("t", "e", 1) as slot:
        slot.sent()
        now[0] += 30.0
        slot.compiled(first_chunk=False)  # a whole unary answer: not a compile time
    with gate.compiling("t", "f", 1) as slot:
        slot.sent()
    now[0] += 2.0
    assert gate.compiling_for("t") == 0
    with gate.compiling("t", "d", 1):
        pass  # refused before the engine call (quota): nothing left compiling
    assert gate.compiling_for("t") == 0


def test_a_hold_is_timed_from_the_engine_call_and_capped() -> None:
    now = [0.0]
    gate = GrammarGate(clock=lambda: now[0])
    with gate.compiling("t", "slow", 1) as slot:
        now[0] += 50.0  # admission and a model starting from zero: not compile time
        slot.sent()
        now[0] += 100.0
        slot.compiled(first_chunk=True)
    with gate.compiling("t", "gone", 1) as slot:
        slot.sent()
    now[0] += MAX_HOLD_S
    assert gate.compiling_for("t") == 0
