"""Every generation request ends exactly once: fault injection at each exit of the pipeline.

Each case drives the real app (middleware, routes, lifecycle, quotas, audit) at the ASGI
level with a client that misbehaves on cue, or cancels the request's task as Ray Serve does
when a client leaves, and then checks the invariants: nothing in flight (quota slots and
the gauge), tokens settled to exactly what the records bill, one record per request with the
right status, and no engine call left open (abandoned ones cancelled).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmplat.engine.fake import CUT_SHORT, FAIL_BEFORE, FAIL_MID_STREAM, HANG
from llmplat.gateway.state import GatewayState, RequestRecord
from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.quotas.redis_store import RedisQuotaStore
from support import DEV_KEY, MODEL, with_gateway
from support.asgi import Client, call
from support.redis_server import RedisServer, redis_server
from support.waiting import eventually

COMPLETIONS = "/v1/completions"


@pytest.fixture
def state(gateway) -> GatewayState:
    return gateway.state.gateway


@pytest.fixture
def engine(state: GatewayState) -> Any:
    return state.backends[MODEL].engine


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _body(prompt: str = "alpha beta", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 12, "stream": stream, **extra}


async def _run(app: Any, body: dict[str, Any], client: Client | None = None) -> Client:
    client = client or Client()
    try:
        await call(app, COMPLETIONS, body, DEV_KEY, client)
    except OSError:
        pass  # the client's end was closed: the server's send raised, as uvicorn's does
    return client


async def _cancel_after(app: Any, body: dict[str, Any], steps: int) -> Client:
    """Run one request and cancel its task after ``steps`` turns of the event loop."""
    client = Client()
    task = asyncio.ensure_future(_run(app, body, client))
    for _ in range(steps):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return client


async def check_invariants(
    state: GatewayState, records: list[RequestRecord], count: int | range
) -> None:
    """Nothing in flight, tokens settled to exactly the billed usage, one record each (a
    ``range`` when some requests may be cancelled before reaching the route), and every
    engine call closed."""
    await state.drain()
    engine = state.backends[MODEL].engine
    await eventually(lambda: engine.open_calls == 0, what="engine calls closed")
    principal = await state.authenticator.authenticate(f"Bearer {DEV_KEY}")
    [usage] = await state.quotas.usage(principal)
    assert usage.in_flight == 0
    assert usage.tokens_today == sum(r.usage.total_tokens for r in records if r.usage)
    expected = count if isinstance(count, range) else range(count, count + 1)
    assert len(records) in expected, [r.status for r in records]
    assert len({r.request_id for r in records}) == len(records)
    gauge = state.metrics.in_flight.labels("dev", MODEL)._value.get()
    assert gauge == 0


async def test_success_is_billed_exactly_and_recorded_after_delivery(
    gateway, state, records, engine
) -> None:
    client = await _run(gateway, _body())
    assert client.status == 200
    await check_invariants(state, records, 1)
    assert records[0].status == 200
    assert records[0].usage.total_tokens == json.loads(client.text)["usage"]["total_tokens"]


@pytest.mark.parametrize("stream", [False, True])
async def test_send_failing_at_response_start_is_499_and_billed(
    gateway, state, records, engine, stream
) -> None:
    await _run(gateway, _body(stream=stream), Client(fail_start=True))
    await check_invariants(state, records, 1)
    (record,) = records
    assert record.status == 499
    # The engine produced work for this request: at least the prompt is billed.
    assert record.usage.prompt_tokens > 0
    if not stream:  # a complete answer was in hand: billed in full although not delivered
        assert record.usage.completion_tokens == 12


async def test_disconnect_mid_stream_cancels_engine_and_bills_delivered(
    gateway, state, records, engine
) -> None:
    engine.token_delay_s = 0.005
    client = Client(disconnect_after_chunks=4)
    await _run(gateway, _body(stream=True, max_tokens=200), client)
    await check_invariants(state, records, 1)
    (record,) = records
    assert record.status == 499
    assert engine.cancelled == 1
    assert 4 <= record.usage.completion_tokens < 200
    assert record.usage.prompt_tokens == 2  # the engine's own count, from the chunks


async def test_blocked_send_then_cancel_is_499(gateway, state, records, engine) -> None:
    engine.token_delay_s = 0.002
    client = Client(block_at_chunk=3)
    task = asyncio.ensure_future(_run(gateway, _body(stream=True, max_tokens=240), client))
    await asyncio.wait_for(client.blocked.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await check_invariants(state, records, 1)
    assert records[0].status == 499
    assert engine.cancelled == 1


async def test_send_that_never_returns_is_stopped_by_the_hard_timeout(
    gateway, state, records, engine
) -> None:
    """A client that stops reading (its send blocks forever) holds nothing past the request
    timeout plus the middleware's grace: 504, engine call cancelled, billed, slot freed."""
    state.config = with_gateway(state.config, request_timeout_s=0.2)
    engine.token_delay_s = 0.002
    client = Client(block_at_chunk=3)
    await asyncio.wait_for(_run(gateway, _body(stream=True, max_tokens=240), client), 15)
    await check_invariants(state, records, 1)
    assert client.blocked.is_set()
    assert records[0].status == 504 and records[0].error_code == "timeout"
    assert records[0].usage.completion_tokens > 0
    assert engine.cancelled == 1


async def test_n_choices_cut_short_are_billed_per_choice(gateway, state, records, engine) -> None:
    engine.token_delay_s = 0.002
    client = Client(disconnect_after_chunks=30)
    await _run(gateway, _body(stream=True, max_tokens=100, n=4), client)
    await check_invariants(state, records, 1)
    (record,) = records
    # Each chunk is one token of one choice: all four choices' tokens count, the prompt once.
    assert record.usage.completion_tokens >= 30
    assert record.usage.prompt_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_cancellation_at_every_step_leaves_nothing_behind(
    gateway, state, records, engine, stream
) -> None:
    """Cancel the request task after 0, 1, 2, … loop turns: each await of the pipeline
    (authentication, body, admission, engine call, relay, sends) is hit in turn."""
    engine.token_delay_s = 0.0
    steps, reached_route = 0, False
    while True:
        seen = len(records)
        before_cancelled = engine.cancelled
        client = await _cancel_after(gateway, _body(stream=stream), steps)
        await check_invariants(state, records, len(records))
        if len(records) == seen:
            # Cancelled before the route began (routing): nothing admitted, nothing sent.
            assert not reached_route and not client.sent, steps
            steps += 1
            continue
        reached_route = True
        (record,) = records[seen:]
        complete = client.sent and not client.sent[-1].get("more_body", False)
        if complete:
            assert record.status == 200
            break
        assert record.status == 499, (steps, record.status)
        if record.usage is not None and engine.cancelled == before_cancelled:
            # Billed work must come from a call that completed or was cancelled.
            assert record.usage.completion_tokens in (0, 12)
        steps += 1
        assert steps < 500, "the request never completed"
    assert steps > 3  # the loop really walked through the pipeline's awaits


async def test_shutdown_drain_is_bounded(state) -> None:
    """Work that never ends (a quota store that hangs) cannot hold a shutdown forever."""
    stuck = state.spawn(asyncio.Event().wait())
    started = time.monotonic()
    await state.drain(timeout_s=0.3)
    assert 0.29 <= time.monotonic() - started < 2.0
    assert not stuck.done()
    stuck.cancel()


async def test_engine_error_before_and_after_first_chunk(
    gateway, state, records, engine, caplog
) -> None:
    before = await _run(gateway, _body(FAIL_BEFORE))
    assert (
        "upstream failure before first chunk: FakeEngineError: engine failed before the first token"
    ) in caplog.messages
    after = await _run(gateway, _body(f"x {FAIL_MID_STREAM}", stream=True))
    await check_invariants(state, records, 2)
    assert before.status == 502 and records[0].status == 502
    assert json.loads(before.text)["error"] == {
        "message": "The model failed before answering; retry the request.",
        "type": "server_error",
        "param": None,
        "code": "engine_error",
    }
    assert after.status == 200 and records[1].status == 502
    events = [e for e in after.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"] == {
        "message": "The model failed while generating this response; retry the request.",
        "type": "server_error",
        "param": None,
        "code": "engine_error",
    }
    assert records[1].error == "FakeEngineError: engine failed mid-stream"
    assert "stream failed after it started" in caplog.messages  # with its traceback
    assert [r.error_code for r in records] == ["engine_error", "engine_error"]
    assert records[0].usage.completion_tokens == 0 and records[0].usage.prompt_tokens > 0
    assert records[1].usage.completion_tokens == 2


async def test_a_stream_the_engine_ends_early_is_an_error_not_a_success(
    gateway, state, records, engine
) -> None:
    """The engine's call returns after two tokens without finishing the stream ([DONE]):
    the client is told, the record says so, the two tokens are billed."""
    client = await _run(gateway, _body(f"x {CUT_SHORT}", stream=True, max_tokens=8))
    await check_invariants(state, records, 1)
    events = [e for e in client.text.split("\n\n") if e.startswith("data: ")]
    assert events[-2] == (  # compact JSON, as vLLM's own events
        'data: {"error":{"message":"the engine ended the stream without finishing it",'
        '"type":"server_error","param":null,"code":"engine_error"}}'
    )
    assert events[-1] == "data: [DONE]"
    (record,) = records
    assert (record.status, record.error_code) == (502, "engine_error")
    assert record.error == "the engine ended the stream without finishing it"
    assert record.usage.completion_tokens == 2


async def test_timeout_before_first_token_is_504_and_cancels_engine(
    gateway, state, records, engine
) -> None:
    state.config = with_gateway(state.config, request_timeout_s=0.2)
    client = await _run(gateway, _body(f"wait {HANG}"))
    await check_invariants(state, records, 1)
    assert client.status == 504
    assert json.loads(client.text)["error"] == {
        "message": "The model did not answer in time.",
        "type": "server_error",
        "param": None,
        "code": "timeout",
    }
    assert records[0].status == 504 and engine.cancelled == 1
    assert records[0].usage.prompt_tokens > 0 and records[0].usage.completion_tokens == 0


async def test_stream_over_the_timeout_ends_with_timeout_event(
    gateway, state, records, engine
) -> None:
    # 1 s: the first token comes well before it even on a loaded machine; 240 tokens at
    # 20 ms each take 4.8 s, far past it.
    state.config = with_gateway(state.config, request_timeout_s=1.0)
    engine.token_delay_s = 0.02
    client = await _run(gateway, _body(stream=True, max_tokens=240))
    await check_invariants(state, records, 1)
    assert client.status == 200, client.text
    events = [e for e in client.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"] == {
        "message": "The request took longer than this server allows and was stopped; the "
        "tokens generated so far are billed.",
        "type": "server_error",
        "param": None,
        "code": "timeout",
    }
    assert records[0].status == 504 and records[0].error_code == "timeout"
    assert records[0].error == "request timeout"
    assert 3 < records[0].usage.completion_tokens < 240
    assert engine.cancelled == 1


async def test_shutdown_finishes_running_streams(gateway, state, records, engine) -> None:
    """A replica stopped with a stream open: the shutdown hooks end it (503, engine call
    cancelled, billed what was delivered, slot released) before the store closes."""
    engine.token_delay_s = 0.05
    client = Client()
    task = asyncio.ensure_future(_run(gateway, _body(stream=True, max_tokens=240), client))
    await eventually(lambda: client.body_chunks >= 3, what="the stream is under way")
    assert state.live
    state.end_live()
    await check_invariants(state, records, 1)
    assert not state.live
    assert records[0].status == 503 and records[0].error_code == "shutdown"
    assert 0 < records[0].usage.completion_tokens < 240
    assert engine.cancelled == 1
    task.cancel()  # what stopping the replica does to the request's task
    await asyncio.gather(task, return_exceptions=True)
    assert len(records) == 1 and records[0].status == 503


async def test_a_stream_outliving_its_lease_keeps_its_slot(gateway, state, records, engine) -> None:
    """Leases are renewed at half their term while the stream lives: a 2 s stream under a
    0.4 s lease stays counted in flight to the end, and frees its slot when it ends."""
    state.quotas.lease_s = 0.4
    engine.token_delay_s = 0.02
    principal = await state.authenticator.authenticate(f"Bearer {DEV_KEY}")
    task = asyncio.ensure_future(_run(gateway, _body(stream=True, max_tokens=100)))
    await asyncio.sleep(1.5)  # several lease terms in
    assert not task.done()
    [usage] = await state.quotas.usage(principal)
    assert usage.in_flight == 1
    await task
    await check_invariants(state, records, 1)
    assert records[0].status == 200


async def test_engine_request_id_is_always_the_gateways(gateway, state, engine) -> None:
    await _run(gateway, _body(request_id="../../evil\nline"))  # refused: not a client field
    client = Client()
    await call(gateway, COMPLETIONS, _body(), DEV_KEY, client)
    answer = json.loads(client.text)
    assert engine.request_ids and all(len(r) == 32 for r in engine.request_ids)
    assert answer["id"] == f"cmpl-{engine.request_ids[-1]}"


# -- random interleavings ----------------------------------------------------------------

_FAULTS = st.sampled_from(
    ["ok", "fail_start", "disconnect", "cancel", "engine_before", "engine_mid", "hang_cancel"]
)


async def _one(app: Any, fault: str, stream: bool, n: int, steps: int) -> None:
    prompt = {"engine_before": FAIL_BEFORE, "engine_mid": f"y {FAIL_MID_STREAM}"}.get(
        fault, f"p{uuid.uuid4().hex[:6]}"
    )
    if fault == "hang_cancel":
        prompt = f"z {HANG}"
    body = _body(prompt, stream=stream, n=n, max_tokens=8)
    if fault in ("cancel", "hang_cancel"):
        await _cancel_after(app, body, steps)
    elif fault == "fail_start":
        await _run(app, body, Client(fail_start=True))
    elif fault == "disconnect":
        await _run(app, body, Client(disconnect_after_chunks=1 + steps % 5))
    else:
        await _run(app, body)


_REQUESTS = st.lists(
    st.tuples(_FAULTS, st.booleans(), st.integers(1, 3), st.integers(0, 40)),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(requests=_REQUESTS)
async def test_random_interleavings_keep_every_invariant(
    gateway, state, records, engine, store_kind, request, requests
) -> None:
    engine.token_delay_s = 0.001
    records.clear()
    store = state.quotas.store
    if store_kind == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        state.quotas.store = RedisQuotaStore(
            server.url, key_prefix=f"t{uuid.uuid4().hex}", socket_timeout_s=10.0
        )
    else:
        state.quotas.store = MemoryQuotaStore()
    try:
        await asyncio.gather(*(_one(gateway, *r) for r in requests))
        cancelled = sum(1 for r in requests if r[0] in ("cancel", "hang_cancel"))
        await check_invariants(state, records, range(len(requests) - cancelled, len(requests) + 1))
    finally:
        if store_kind == "redis":
            await state.quotas.store.close()
        state.quotas.store = store
