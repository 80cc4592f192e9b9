"""The gateway's HTTP contract, through the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import openai
import pytest

from llmplat.engine.fake import (
    ERROR_EVENT,
    ERROR_OBJECT,
    FAIL_BEFORE,
    FAIL_MID_STREAM,
    fake_tokens,
)
from llmplat.gateway.app import create_app
from support import DEV_KEY, MODEL, PLAIN_MODEL, V3_TOKENIZER, auth, with_gateway


async def test_models_lists_configured_models(client: openai.AsyncOpenAI, http, gateway) -> None:
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == sorted([MODEL, PLAIN_MODEL])
    one = (await http.get(f"/v1/models/{MODEL}", headers=auth(DEV_KEY))).json()
    configured = gateway.state.gateway.model(MODEL)
    assert one == {
        "id": MODEL,
        "object": "model",
        "created": configured.created,
        "owned_by": "llmplat",
        "max_model_len": configured.max_model_len,
    }
    assert configured.max_model_len > 0 and configured.created > 1_700_000_000
    assert [m.model_dump(exclude_none=True) for m in models.data if m.id == MODEL] == [one]
    with pytest.raises(openai.NotFoundError) as exc:
        await client.models.retrieve("nope")
    assert exc.value.body["code"] == "model_not_found"


async def test_chat_completion_returns_engine_text_and_usage(client, records) -> None:
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=5
    )
    assert resp.choices[0].message.content == " ".join(fake_tokens("hello there", 5))
    assert resp.usage.prompt_tokens == 2 and resp.usage.completion_tokens == 5
    assert [(r.status, r.usage.completion_tokens) for r in records] == [(200, 5)]


async def test_completion_non_streaming(client, gateway) -> None:
    resp = await client.completions.create(model=MODEL, prompt="a b c", max_tokens=3)
    assert resp.choices[0].text == " ".join(fake_tokens("a b c", 3))
    assert resp.usage.total_tokens == 6
    # The model call was read to its end after the answer, not left open.
    assert gateway.state.gateway.backends[MODEL].engine.open_calls == 0


async def test_request_id_is_one_header_and_the_audit_id(http, records) -> None:
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1}
    r = await http.post("/v1/completions", json=body, headers=auth(DEV_KEY))
    assert len(r.headers.get_list("x-request-id")) == 1
    assert r.headers["x-request-id"] == records[-1].request_id
    # A proxy's (or client's) id is kept for the audit and not repeated by the gateway.
    given = {**auth(DEV_KEY), "x-request-id": "trace-42.a:b"}
    r = await http.post("/v1/completions", json=body, headers=given)
    assert r.status_code == 200 and "x-request-id" not in r.headers
    assert records[-1].request_id == "trace-42.a:b"
    bad = {**auth(DEV_KEY), "x-request-id": "x" * 200}
    r = await http.post("/v1/completions", json=body, headers=bad)
    assert r.headers["x-request-id"] == records[-1].request_id != "x" * 200


async def test_stream_without_usage_hides_usage_but_gateway_learns_it(client, records) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x y"}], max_tokens=4, stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(fake_tokens("x y", 4))
    assert all(c.usage is None for c in chunks)
    assert records[-1].usage.completion_tokens == 4
    assert records[-1].status == 200


async def test_stream_with_usage_passes_final_usage_chunk(client) -> None:
    stream = await client.completions.create(
        model=MODEL,
        prompt="one two",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.prompt_tokens == 2


async def test_fim_prompt_and_suffix_become_native_token_sequence(gateway, client, records) -> None:
    """The engine receives exactly mistral_common's FIM encoding of the model's tokenizer:
    BOS, [SUFFIX], the suffix, [PREFIX], the prompt, as token ids."""
    from mistral_common.protocol.fim.request import FIMRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    prompt, suffix = "def f(x):\n    return", "\n\nprint(f(2))"
    resp = await client.completions.create(model=MODEL, prompt=prompt, suffix=suffix, max_tokens=4)
    tokenizer = MistralTokenizer.from_file(str(V3_TOKENIZER))
    expected = tokenizer.encode_fim(FIMRequest(prompt=prompt, suffix=suffix)).tokens
    control = tokenizer.instruct_tokenizer.tokenizer
    assert expected[:2] == [control.bos_id, control.get_special_token("[SUFFIX]")]
    engine = gateway.state.gateway.backends[MODEL].engine
    assert engine.prompts[-1] == [expected]
    assert resp.usage.prompt_tokens == records[-1].usage.prompt_tokens == len(expected)


async def test_fim_rejected_for_model_without_fim_tokens(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model=PLAIN_MODEL, prompt="a", suffix="b", max_tokens=2)
    assert exc.value.body["code"] == "fim_not_supported"
    assert exc.value.body["param"] == "suffix"
    assert exc.value.body["message"] == (
        f"Model '{PLAIN_MODEL}' does not support fill-in-the-middle: its tokenizer has no "
        "[SUFFIX]/[PREFIX] control tokens. Send the request without 'suffix'."
    )


TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize("choice", [openai.NOT_GIVEN, "auto"])
async def test_auto_tool_choice_needs_a_parser_in_the_profile(client, records, choice) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model=PLAIN_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[TOOL],
            tool_choice=choice,
            max_tokens=2,
        )
    assert exc.value.body["code"] == "tool_choice_not_supported"
    assert exc.value.body["param"] == "tool_choice"
    assert "tools.tool_call_parser" in exc.value.body["message"]
    assert records[-1].status == 400
    # Named, required and none need no parser; a model with one takes "auto".
    for model, choice in [
        (PLAIN_MODEL, {"type": "function", "function": {"name": "lookup"}}),
        (PLAIN_MODEL, "required"),
        (PLAIN_MODEL, "none"),
        (MODEL, "auto"),
    ]:
        resp = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            tools=[TOOL],
            tool_choice=choice,
            max_tokens=2,
        )
        assert resp.choices[0].finish_reason


async def test_unknown_model_is_404_model_not_found(client) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": 5}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": [5]}).encode(), "messages"),
        (  # a field missing inside a list item
            json.dumps(
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function"}],
                }
            ).encode(),
            "tools.0.function",
        ),
        (  # the message types are a union: the param stops at the message, not a union member
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 7}]}).encode(),
            "messages.0",
        ),
        (json.dumps({"model": MODEL, "messages": []}).encode(), "messages"),
        (
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "a"}
            ).encode(),
            "max_tokens",
        ),
        (
            json.dumps(
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 10**6,
                }
            ).encode(),
            "max_tokens",
        ),
    ],
)
async def test_bad_bodies_are_openai_shaped_400(http, body: bytes, param: str | None) -> None:
    r = await http.post(
        "/v1/chat/completions",
        content=body,
        headers=auth() | {"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    assert err["param"] == param, err


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_prompt_longer_than_context_is_400_before_the_engine(
    client, gateway, endpoint: str
) -> None:
    engine = gateway.state.gateway.backends[MODEL].engine
    calls = len(engine.request_ids)
    with pytest.raises(openai.BadRequestError) as exc:
        if endpoint == "chat":
            messages = [{"role": "user", "content": "w " * 300}]
            await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
        else:
            await client.completions.create(model=MODEL, prompt="w " * 300, max_tokens=1)
    body = exc.value.body
    assert (body["code"], body["param"]) == (
        "context_length_exceeded",
        "messages" if endpoint == "chat" else "prompt",
    )
    assert re.fullmatch(
        r"This model's maximum context length is 256 tokens, but the prompt has \d{3} "
        r"tokens\. Shorten the prompt\.",
        body["message"],
    ), body["message"]
    assert len(engine.request_ids) == calls  # refused by the gateway: the engine never saw it


async def test_body_over_limit_is_413(http) -> None:
    big = {"model": MODEL, "prompt": "x" * (70 * 1024)}
    r = await http.post("/v1/completions", json=big, headers=auth())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


async def test_engine_failure_before_first_token_is_502_and_service_continues(client) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        await client.completions.create(model=MODEL, prompt=FAIL_BEFORE, max_tokens=3)
    assert exc.value.status_code == 502
    ok = await client.completions.create(model=MODEL, prompt="still alive", max_tokens=2)
    assert ok.usage.completion_tokens == 2


async def test_failure_mid_stream_ends_with_error_event(http, records) -> None:
    body = {"model": MODEL, "prompt": f"go {FAIL_MID_STREAM}", "max_tokens": 6, "stream": True}
    r = await http.post("/v1/completions", json=body, headers=auth())
    assert r.status_code == 200
    events = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["type"] == "server_error"
    assert events[-1] == "data: [DONE]"
    assert records[-1].status == 502


async def test_engine_error_event_mid_stream_is_relayed_recorded_and_billed(http, records) -> None:
    """vLLM's server reports a generation failure inside the stream; the client gets that
    event and [DONE], the record keeps the engine's message, the tokens produced are billed."""
    body = {
        "model": MODEL,
        "prompt": f"go {ERROR_EVENT}",
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await http.post("/v1/completions", json=body, headers=auth())
    events = [ln.removeprefix("data: ") for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["message"] == "generation failed"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2])
    assert text == " ".join(fake_tokens(f"go {ERROR_EVENT}", 2))  # the two tokens before it
    record = records[-1]
    assert (record.status, record.error) == (502, "generation failed")
    assert record.usage.completion_tokens == 2


async def test_engine_error_object_mid_stream_ends_the_stream_once(http, records) -> None:
    body = {"model": MODEL, "prompt": f"go {ERROR_OBJECT}", "max_tokens": 6, "stream": True}
    r = await http.post("/v1/completions", json=body, headers=auth())
    events = [ln.removeprefix("data: ") for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert [json.loads(e)["error"] for e in events if e.startswith('{"error"')] == [
        {
            "message": "generation failed",
            "type": "server_error",
            "param": None,
            "code": "engine_error",
        }
    ]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert (records[-1].status, records[-1].error) == (502, "generation failed")
    assert records[-1].usage.completion_tokens == 2


async def test_openai_client_raises_on_mid_stream_error(client) -> None:
    stream = await client.completions.create(
        model=MODEL, prompt=f"go {FAIL_MID_STREAM}", max_tokens=6, stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_health_and_readiness(http) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {MODEL: "ready", PLAIN_MODEL: "ready"}


async def test_unknown_route_is_openai_shaped_404(http) -> None:
    r = await http.get("/v1/nothing", headers=auth())
    assert r.status_code == 404
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and "/v1/nothing" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "prompt": 5}, "prompt"),
        ({"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
        (
            {"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": MODEL, "prompt": "x", "stream": True, "stream_options": 3}, "stream_options"),
        ({"model": MODEL, "prompt": "x", "suffix": 7}, "suffix"),
        ({"model": MODEL, "prompt": ["a", "b"], "suffix": "s"}, "prompt"),
        ({"model": MODEL, "prompt": "x", "suffix": "s", "echo": True}, "echo"),
        ({"model": 12, "prompt": "x"}, "model"),
    ],
)
async def test_bad_completion_bodies_are_400_naming_the_field(http, body, param) -> None:
    r = await http.post("/v1/completions", json=body, headers=auth())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    if param == "echo":
        assert error["message"] == "'echo' cannot be combined with 'suffix'."
    if body.get("suffix") == "s" and param == "prompt":
        assert error["message"] == (
            "With 'suffix', 'prompt' must be one string (the code before the cursor)."
        )


async def test_a_bad_field_is_named_and_further_problems_counted(http) -> None:
    one = await http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "x", "temperature": "hot"},
        headers=auth(),
    )
    assert one.json()["error"]["param"] == "temperature"
    assert one.json()["error"]["message"].startswith("Invalid request: 'temperature': ")
    assert "more problems" not in one.json()["error"]["message"]
    three = await http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "x", "temperature": "hot", "top_p": "x", "seed": "y"},
        headers=auth(),
    )
    assert three.json()["error"]["message"].endswith(" (2 more problems)")


async def test_a_union_field_reports_the_problem_of_its_own_type(gateway, replica) -> None:
    """'stop' is a string or a list of at most 4: with the input bound raised past that,
    five strings are refused for the list's length, not with the string branch's "Input
    should be a valid string"."""
    settings = gateway.state.gateway.config.gateway
    roomy = settings.model_copy(
        update={"input_bounds": settings.input_bounds.model_copy(update={"stop_count": 8})}
    )
    async with replica(gateway=roomy) as (_, http):
        r = await http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
            headers=auth(),
        )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "stop"
    assert "at most 4 items" in error["message"], error["message"]


async def test_streaming_fim_is_served_and_billed(client, records) -> None:
    stream = await client.completions.create(
        model=MODEL,
        prompt="def f(x):\n    return",
        suffix="\n\nprint(f(2))",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 5
    assert records[-1].stream and records[-1].usage.completion_tokens == 5


async def test_readiness_is_cached_and_shared(gateway, http) -> None:
    """Probes and anonymous callers cost at most one engine check per cache period."""
    readiness = gateway.state.readiness
    engine = gateway.state.gateway.backends[MODEL].engine
    before = readiness.checks
    answers = await asyncio.gather(*(http.get("/readyz") for _ in range(50)))
    assert {a.status_code for a in answers} == {200}
    assert readiness.checks == before + 1
    engine.started = False  # a change shows once the cached answer is older than its period
    readiness.max_age_s = 0.0
    down = await http.get("/readyz")
    assert down.status_code == 503
    assert down.json() == {
        "status": "not_ready",
        "models": {MODEL: "unhealthy: FakeEngineError", PLAIN_MODEL: "ready"},
    }


async def test_metrics_port_takes_metrics_off_the_public_endpoint(gateway) -> None:
    state = gateway.state.gateway
    state.config = with_gateway(state.config, metrics_port=9464)
    app = create_app(state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as h:
        assert (await h.get("/metrics")).status_code == 404
        assert (await h.get("/healthz")).status_code == 200


async def test_vllm_validation_errors_name_their_parameter(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "not_a_tool"}},
            max_tokens=2,
        )
    assert exc.value.body["param"] == "tool_choice"
    assert "(parameter=" not in exc.value.body["message"]


async def test_server_failures_get_a_log_line(http, records, caplog) -> None:
    """The server log has one line per failed (5xx) request, what operators grep for; the
    audit log has every request, so a 200 or a 4xx adds no log line."""
    caplog.set_level(logging.INFO, logger="llmplat.gateway.state")
    body = {"model": MODEL, "prompt": "a b", "max_tokens": 2}
    await http.post("/v1/completions", json=body, headers=auth())
    await http.post("/v1/completions", json={**body, "model": "nope"}, headers=auth())
    failing = {**body, "prompt": f"a {FAIL_MID_STREAM}", "max_tokens": 4, "stream": True}
    await http.post("/v1/completions", json=failing, headers=auth())
    failed = records[-1]
    logged = [m for m in caplog.messages if m.split(" ", 1)[0] in {r.request_id for r in records}]
    assert len(logged) == 1 and failed.status == 502, logged
    assert re.fullmatch(
        rf"{failed.request_id} completions stream team=dev model={MODEL} status=502 "
        r"prompt=2 completion=2 latency_ms=\d+\.\d "
        r"error='FakeEngineError: engine failed mid-stream'",
        logged[0],
    ), logged[0]
