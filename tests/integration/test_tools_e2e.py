"""Tool calling and structured outputs through the gateway, with the official openai client.

The embedded model's weights are random: what it says is noise, but guided decoding holds
its output to the schema. Every value in these schemas is one of a few (enums, booleans; a
schema with a ``maxLength`` string failed one run of three here) and the profile switches
off free whitespace, so a valid document always fits in ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import openai
import pytest

from support import MODEL

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600, func_only=True),
    pytest.mark.asyncio(loop_scope="function"),
]

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "detailed": {"type": "boolean"},
    },
    "required": ["city", "unit", "detailed"],
    "additionalProperties": False,
}
TICKET = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "enum": ["crash", "slow start", "typo"]},
        "blocking": {"type": "boolean"},
        "severity": {"type": "string", "enum": ["low", "high"]},
    },
    "required": ["title", "severity", "blocking"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "open_ticket", "description": "File a bug", "parameters": TICKET},
    },
]
SCHEMAS = {"get_weather": WEATHER, "open_ticket": TICKET}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check_call(name: str, arguments: str) -> None:
    assert name in SCHEMAS, name
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


async def _streamed_calls(stream: Any) -> tuple[dict[int, dict[str, str]], str | None]:
    """Tool calls assembled from stream deltas (by index), and the finish reason."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
        finish = choice.finish_reason or finish
    return calls, finish


async def test_named_tool_choice_returns_a_valid_call(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
    )
    calls = resp.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1, resp
    assert calls[0].function.name == "get_weather" and calls[0].id
    _check_call(calls[0].function.name, calls[0].function.arguments)
    assert resp.usage.prompt_tokens > 60  # the tools' schemas are part of the prompt


async def test_named_tool_choice_streamed(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "open_ticket"}},
        max_tokens=200,
        stream=True,
    )
    calls, finish = await _streamed_calls(stream)
    assert len(calls) == 1, calls
    assert calls[0]["name"] == "open_ticket" and calls[0]["id"]
    _check_call(calls[0]["name"], calls[0]["arguments"])
    assert finish in ("stop", "tool_calls")


async def test_required_tool_choice_returns_valid_calls(client: openai.AsyncOpenAI) -> None:
    """``required`` is decoded as a JSON array of calls with no bound on its length, so
    random weights may still be adding calls at ``max_tokens`` (finish ``length``, no calls
    parsed). Every answer that ends must hold only valid calls, and of six tries (sent
    together: the engine batches them) at least one ends (each is cut with a probability of
    about a third here)."""
    complete = 0
    answers = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=600
            )
            for _ in range(6)
        )
    )
    for resp in answers:
        finish = resp.choices[0].finish_reason
        calls = [(c.function.name, c.function.arguments)
                 for c in resp.choices[0].message.tool_calls or []]  # fmt: skip
        if finish == "length":
            continue
        complete += 1
        assert calls, f"finish {finish} without a tool call"
        for name, arguments in calls:
            _check_call(name, arguments)
    assert complete, "every required-tool answer ran into max_tokens"


@pytest.mark.skip(
    reason="vLLM bug vllm-project/vllm#48702 (open): streamed tool-call arguments lose the "
    "tail of a non-string field at flush; seen here as '\"detailed\": fals' (2026-12-02)"
)
async def test_required_tool_choice_streams_valid_calls(client: openai.AsyncOpenAI) -> None:
    complete = 0
    for _ in range(3):
        chunks = await client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
            max_tokens=600, stream=True,
        )  # fmt: skip
        streamed, finish = await _streamed_calls(chunks)
        if finish == "length":
            continue
        complete += 1
        assert streamed, f"finish {finish} without a tool call"
        for call in streamed.values():
            _check_call(call["name"], call["arguments"])
    assert complete, "every required-tool answer ran into max_tokens"


async def test_auto_and_none_tool_choice_are_served(client: openai.AsyncOpenAI) -> None:
    none = await client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert not none.choices[0].message.tool_calls
    assert none.choices[0].message.content
    # "auto" (also what tools without tool_choice get): the model decides; random weights
    # answer in text, a real model with a call the Mistral parser extracts.
    for choice in ("auto", openai.NOT_GIVEN):
        auto = await client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=8
        )
        message = auto.choices[0].message
        assert message.content or message.tool_calls


async def test_response_format_json_schema_validates(client: openai.AsyncOpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET}}
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "File a ticket."}],
        response_format=fmt,
        max_tokens=200,
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content), TICKET)

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "File a ticket."}],
        response_format=fmt,
        max_tokens=200,
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    jsonschema.validate(json.loads(text), TICKET)


async def test_response_format_json_object_is_json(client: openai.AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=24,
    )
    # Any JSON object is allowed, so random weights may not close it in 24 tokens; what
    # is there is the start of one.
    assert resp.choices[0].message.content.lstrip().startswith("{")


async def test_unknown_named_tool_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "not_a_tool"}},
            max_tokens=8,
        )
    assert "does not match any of the specified `tools`" in err.value.body["message"]
    assert err.value.body["param"] == "tool_choice"
