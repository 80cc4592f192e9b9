"""Gateway metrics after a known mix of requests: right series, right labels, exact tokens."""

from __future__ import annotations

import asyncio

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmplat.auth.admin import KeyAdmin
from support import MODEL, PLAIN_MODEL, auth


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (n, ls), v in samples.items() if n == name and set(want) <= set(ls))


@pytest.fixture
async def team_keys(gateway, key_store) -> dict[str, str]:
    admin = KeyAdmin(key_store)
    admin.create_team({"name": "ide"})
    admin.create_team({"name": "ci", "limits": {"requests_per_minute": 2}})
    keys = {t: admin.create_key(t).plaintext for t in ("ide", "ci")}
    authenticator = gateway.state.gateway.authenticator
    for _ in range(100):  # the replica's store watch picks the new keys up
        if len(authenticator.registry.keys) == 2:
            break
        await asyncio.sleep(0.05)
    return keys


def _client(http, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url="http://gw/v1", http_client=http, max_retries=0)


async def test_known_mix_gives_exact_series(http, team_keys) -> None:
    ide, ci = _client(http, team_keys["ide"]), _client(http, team_keys["ci"])
    billed = {"ide": [0, 0], "ci": [0, 0]}

    def bill(team: str, usage) -> None:
        billed[team][0] += usage.prompt_tokens
        billed[team][1] += usage.completion_tokens

    r = await ide.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b c"}], max_tokens=4
    )
    bill("ide", r.usage)
    stream = await ide.completions.create(
        model=PLAIN_MODEL, prompt="x y", max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    bill("ide", chunks[-1].usage)
    for _ in range(2):
        bill("ci", (await ci.completions.create(model=MODEL, prompt="q", max_tokens=3)).usage)
    with pytest.raises(openai.RateLimitError):
        await ci.completions.create(model=MODEL, prompt="q", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        await ide.completions.create(model="no-such-model", prompt="q", max_tokens=3)
    await http.post("/v1/completions", json={"model": MODEL}, headers=auth("llmp_x_" + "y" * 30))

    text = (await http.get("/metrics")).text
    s = _samples(text)
    for team, (prompt, completion) in billed.items():
        assert _value(s, "llmplat_prompt_tokens_total", team=team) == prompt
        assert _value(s, "llmplat_completion_tokens_total", team=team) == completion
    assert _value(s, "llmplat_requests_total", team="ide", model=MODEL, endpoint="chat",
                  status="200") == 1  # fmt: skip
    assert _value(s, "llmplat_requests_total", team="ci", status="200") == 2
    assert _value(s, "llmplat_requests_total", team="ci", status="429") == 1
    assert _value(s, "llmplat_quota_rejections_total", team="ci",
                  reason="requests_per_minute") == 1  # fmt: skip
    # A made-up model name never becomes a label value; nor does an unknown caller's key.
    assert _value(s, "llmplat_requests_total", team="ide", model="unknown", status="404") == 1
    assert "no-such-model" not in text
    assert _value(s, "llmplat_requests_total", team="unauthenticated", status="401") == 1
    assert _value(s, "llmplat_time_to_first_token_seconds_count", team="ide",
                  model=PLAIN_MODEL) == 1  # fmt: skip
    assert _value(s, "llmplat_inter_token_latency_seconds_count", team="ide") == 1
    assert _value(s, "llmplat_admission_wait_seconds_count", team="ci") == 2
    assert _value(s, "llmplat_request_duration_seconds_count", team="ide") == 3  # 200, 200, 404
    in_flight = {dict(labels).get("team"): v for (n, labels), v in s.items()
                 if n == "llmplat_requests_in_flight"}  # fmt: skip
    assert {"ide", "ci"} <= set(in_flight) and all(v == 0 for v in in_flight.values()), in_flight
    # Every counter is exposed as <name>_total (the name Prometheus rules and dashboards use).
    counters = [f for f in text_string_to_metric_families(text) if f.type == "counter"]
    assert any(f.name == "llmplat_requests" for f in counters)
    for family in counters:
        names = {sample.name for sample in family.samples}
        assert names <= {f"{family.name}_total", f"{family.name}_created"}, names
    key_ids = [k.split("_")[1] for k in team_keys.values()]
    assert not any(k in text for k in key_ids)  # never a key id in a label


def test_metric_names_follow_conventions() -> None:
    from prometheus_client import CollectorRegistry

    from llmplat.observability.metrics import GatewayMetrics

    registry = CollectorRegistry()
    GatewayMetrics(registry, ("m",))
    for family in registry.collect():
        assert family.name.startswith("llmplat_")
        if family.type != "counter":
            assert "_total" not in family.name, family.name  # a gauge that reads as a counter
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
