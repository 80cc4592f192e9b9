"""The gateway and the autoscaler: a model at zero replicas, replicas that go away.

A gateway replica follows the autoscaler's reports (here written to an in-memory stand-in
of Ray's key-value store): a model scaled to zero is ready, not failed, and is never woken
by a readiness probe; a request to it is held while it starts and answered 503
``model_starting`` (nothing billed) when the profile's wait runs out; a call whose replica
went away before answering is sent once more.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from pydantic import SecretStr

from llmplat.auth.file_store import FileKeyStore
from llmplat.autoscaling.report import FRESH_FOR_S, DecisionEvent, ScaleReport
from llmplat.engine.fake import FAIL_BEFORE, HANG, REPLICA_GONE_ONCE
from llmplat.gateway.app import create_app
from llmplat.gateway.assemble import assemble_state
from llmplat.gateway.backends import EngineBackend
from llmplat.gateway.scaling import (
    AWAITING_AUTOSCALER,
    REFRESH_S,
    SCALED_TO_ZERO,
    STARTING_FROM_ZERO,
)
from llmplat.gateway.state import GatewayConfig, GatewayModel, GatewayState, RequestRecord
from support import DEV_KEY, MODEL, auth, make_engine, with_gateway
from support.kv import MemoryKv
from support.waiting import eventually

WAIT_S = 0.5


def report(running: int, desired: int, **changes: Any) -> ScaleReport:
    base = ScaleReport(
        model_id=MODEL,
        running=running,
        desired=desired,
        min_replicas=0,
        max_replicas=2,
        wanted=desired,
        reason="steady",
        pressure=0.0,
        waiting=0.0,
        kv_cache_usage=0.0,
        ttft_s=0.0,
        last_decision=None,
        at=time.time(),
    )
    return replace(base, **changes)


@pytest.fixture
def kv() -> MemoryKv:
    return MemoryKv()


@pytest.fixture
async def scaled(
    settings, model_dirs: dict[str, Path], tmp_path: Path, kv: MemoryKv
) -> AsyncIterator[tuple[GatewayState, httpx.AsyncClient, list[RequestRecord]]]:
    """A gateway whose model may scale to zero (held for ``WAIT_S`` while it starts)."""
    engine = make_engine(settings, MODEL)
    await engine.start()
    model = GatewayModel(
        model_id=MODEL,
        max_model_len=256,
        model_dir=str(model_dirs[MODEL]),
        autoscaled=True,
        min_replicas=0,
        scale_from_zero_wait_s=WAIT_S,
    )
    store = FileKeyStore(tmp_path / "teams.yaml")
    config = GatewayConfig(
        models=(model,), dev_api_key=SecretStr(DEV_KEY), keystore_path=str(store.path)
    )
    state = assemble_state(config, {MODEL: EngineBackend(engine)}, scale_source=kv)
    records: list[RequestRecord] = []
    state.on_finish = records.append
    app = create_app(state)
    app.state.readiness.max_age_s = 0.0  # every /readyz a fresh check
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield state, http, records


def publish(kv: MemoryKv, state: GatewayState, r: ScaleReport) -> None:
    kv.put(MODEL.encode(), r.to_json())
    state.scale.refresh()


async def ready(http: httpx.AsyncClient, state: GatewayState) -> httpx.Response:
    state.scale.refresh()
    return await http.get("/readyz")


def _body(prompt: str, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": stream}


async def test_readiness_follows_the_autoscaler_and_never_wakes_the_model(scaled, kv) -> None:
    state, http, _ = scaled
    engine = state.backends[MODEL].engine
    r = await ready(http, state)
    assert (r.status_code, r.json()["models"][MODEL]) == (503, AWAITING_AUTOSCALER)
    publish(kv, state, report(0, 0))
    r = await ready(http, state)
    assert (r.status_code, r.json()["models"][MODEL]) == (200, SCALED_TO_ZERO)
    publish(kv, state, report(0, 1))
    r = await ready(http, state)
    assert (r.status_code, r.json()["models"][MODEL]) == (200, STARTING_FROM_ZERO)
    assert engine.health_checks == 0  # a health call would itself wake the model
    publish(kv, state, report(1, 1))
    r = await ready(http, state)
    assert (r.status_code, r.json()["models"][MODEL]) == (200, "ready")
    assert engine.health_checks == 1
    # A report the controller stopped refreshing is not trusted.
    publish(kv, state, report(0, 0, at=time.time() - FRESH_FOR_S - 1))
    r = await ready(http, state)
    assert (r.status_code, r.json()["models"][MODEL]) == (503, AWAITING_AUTOSCALER)


async def test_a_model_that_does_not_start_in_time_is_503_model_starting(scaled, kv) -> None:
    state, http, records = scaled
    engine = state.backends[MODEL].engine
    publish(kv, state, report(0, 0))
    t0 = time.monotonic()
    r = await http.post("/v1/completions", json=_body(f"x {HANG}"), headers=auth())
    held = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_starting"
    assert r.headers["retry-after"] == "1"  # a quarter of the wait, at least 1 s
    assert WAIT_S <= held < WAIT_S + 2
    await eventually(lambda: engine.cancelled == 1, what="the held call cancelled")
    [rec] = records
    assert (rec.status, rec.error_code, rec.usage) == (503, "model_starting", None)
    await state.drain()
    [usage] = await state.quotas.usage(await state.authenticator.authenticate(f"Bearer {DEV_KEY}"))
    assert (usage.tokens_today, usage.in_flight) == (0, 0)  # nothing billed, slot released
    text = generate_latest(state.metrics.registry).decode()
    assert f'llmplat_model_starting_rejections_total{{model="{MODEL}"}} 1.0' in text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_that_starts_in_time_answers_the_held_request(scaled, kv, stream) -> None:
    state, http, records = scaled
    publish(kv, state, report(0, 1))
    r = await http.post("/v1/completions", json=_body("a b c", stream), headers=auth())
    assert r.status_code == 200
    assert records[0].status == 200 and records[0].usage is not None


async def test_a_running_model_is_not_held(scaled, kv) -> None:
    """The scale-from-zero wait applies only at zero replicas: a busy model keeps the
    request timeout."""
    state, http, records = scaled
    publish(kv, state, report(1, 1))
    state.config = with_gateway(state.config, request_timeout_s=WAIT_S * 3)
    t0 = time.monotonic()
    r = await http.post("/v1/completions", json=_body(f"x {HANG}"), headers=auth())
    assert r.status_code == 504 and time.monotonic() - t0 >= WAIT_S * 3


@pytest.mark.parametrize("stream", [False, True])
async def test_a_replica_gone_before_answering_is_retried_once(scaled, stream, caplog) -> None:
    state, http, records = scaled
    engine = state.backends[MODEL].engine
    prompt = f"retry me {REPLICA_GONE_ONCE} {stream}"
    r = await http.post("/v1/completions", json=_body(prompt, stream), headers=auth())
    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    assert len(engine.request_ids) == 2  # the call, then once more
    assert engine.request_ids[0] == engine.request_ids[1]  # the same request, sent again
    assert records[0].status == 200 and records[0].usage is not None
    text = generate_latest(state.metrics.registry).decode()
    assert f'llmplat_upstream_retries_total{{model="{MODEL}"}} 1.0' in text
    assert (
        f"request {records[0].request_id}: the replica went away before answering "
        "(FakeReplicaGone); sending it again"
    ) in caplog.messages


async def test_an_engine_failure_is_not_retried(scaled) -> None:
    state, http, records = scaled
    engine = state.backends[MODEL].engine
    r = await http.post("/v1/completions", json=_body(f"x {FAIL_BEFORE}"), headers=auth())
    assert r.status_code == 502
    assert len(engine.request_ids) == 1


async def test_the_autoscalers_view_is_exported(scaled, kv) -> None:
    state, http, _ = scaled
    decision = DecisionEvent(at=1234.5, from_replicas=1, to_replicas=2, reason="queue")
    publish(kv, state, report(1, 2, waiting=7.0, kv_cache_usage=0.5, last_decision=decision))
    text = generate_latest(state.metrics.registry).decode()
    for state_name, value in (("running", 1), ("desired", 2), ("min", 0), ("max", 2)):
        assert f'llmplat_model_replicas{{model="{MODEL}",state="{state_name}"}} {value}.0' in text
    assert f'llmplat_model_waiting_requests{{model="{MODEL}"}} 7.0' in text
    assert f'llmplat_autoscaling_last_decision_timestamp_seconds{{model="{MODEL}"}} 1234.5' in text
    assert (
        f'llmplat_autoscaling_last_decision{{direction="up",model="{MODEL}",reason="queue"}} 1.0'
        in text
    )
    down = DecisionEvent(at=1300.0, from_replicas=2, to_replicas=1, reason="low_load")
    publish(kv, state, report(1, 1, last_decision=down))
    text = generate_latest(state.metrics.registry).decode()
    assert 'reason="queue"' not in text  # only the last decision is on show
    assert 'direction="down",model="tiny-mixtral",reason="low_load"} 1.0' in text


async def test_a_running_replica_follows_reports_on_its_own(scaled, kv) -> None:
    """No test-driven refresh: the replica's background follower reads new reports."""
    state, _, _ = scaled
    kv.put(MODEL.encode(), report(1, 2).to_json())

    def seen() -> bool:
        now = state.scale.report(MODEL)
        return now is not None and (now.running, now.desired) == (1, 2)

    await eventually(seen, timeout_s=5 * REFRESH_S + 2, what="the report followed")
