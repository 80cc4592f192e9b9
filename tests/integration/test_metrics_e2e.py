"""Metrics from the real platform: gateway series equal what clients were billed; engine
metrics exported per model replica; `llmplat status` shows it all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import MODEL

# A fresh event loop per test: no client state (sockets, selector keys) is shared by tests.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="function"),
    pytest.mark.filterwarnings(
        "ignore:.*marked with '@pytest.mark.asyncio' but it is not an async"
    ),
]


def _sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_gateway_token_counters_equal_client_usage(live) -> None:
    async with (
        openai.AsyncOpenAI(
            api_key=live.team_keys["ide"], base_url=live.base_url, max_retries=0, timeout=300
        ) as client,
        httpx.AsyncClient(base_url=live.url) as http,
    ):
        before = (await http.get("/metrics")).text
        usages = []
        resp = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "metrics"}], max_tokens=5,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        usages.append(resp.usage)
        stream = await client.completions.create(
            model=MODEL, prompt="stream metrics", max_tokens=7, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        usages.append([c async for c in stream][-1].usage)
        after = (await http.get("/metrics")).text
    for name, attr in (
        ("llmplat_prompt_tokens_total", "prompt_tokens"),
        ("llmplat_completion_tokens_total", "completion_tokens"),
    ):
        delta = _sum(after, name, team="ide", model=MODEL) - _sum(before, name, team="ide")
        assert delta == sum(getattr(u, attr) for u in usages), name
    assert _sum(after, "llmplat_time_to_first_token_seconds_count", team="ide") >= 1


async def test_engine_metrics_exported_per_model_replica(live) -> None:
    deadline = time.monotonic() + 60  # Ray exports on an interval
    async with httpx.AsyncClient() as http:
        while True:
            text = (await http.get(live.engine_metrics_url)).text
            running = [
                s
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "ray_vllm_num_requests_running"
            ]
            if running or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    assert running, "vLLM engine metrics not exported"
    assert {s.labels.get("model_name") for s in running} == {MODEL}
    assert all(s.labels.get("ReplicaId") for s in running)
    assert "ray_vllm_kv_cache_usage_perc" in text


def test_llmplat_status_shows_models_replicas_and_team_usage(live) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmplat", "status", "--url", live.url],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "LLMPLAT_ADMIN_TOKEN": live.admin_token},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "platform: ready"
    model_line = next(line for line in lines if line.startswith(MODEL))
    assert model_line.split()[1:3] == ["ready", "1"]  # readiness, replicas
    assert any(line.startswith("ide ") for line in lines)
    assert live.admin_token not in out.stdout + out.stderr
