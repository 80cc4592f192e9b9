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
from support.platform import free_port

# A fresh event loop per test: no client state (sockets, selector keys) is shared by tests.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600, func_only=True),
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


def test_llmplat_status_with_a_metrics_port_reads_it_or_says_what_failed(live) -> None:
    """The issue's setting in the operator's shell: with LLMPLAT_GATEWAY__METRICS_PORT set,
    status reads /metrics on that port; nothing listening there is one line naming the URL
    and exit 1, no traceback. ``--metrics-url`` (here the API port, where this platform
    serves them) gives the same table as without the setting."""
    closed = free_port()
    env = {**os.environ, "LLMPLAT_GATEWAY__METRICS_PORT": str(closed)}

    def status(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmplat", "status", "--url", live.url, *flags],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    failed = status()
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert f"127.0.0.1:{closed}/metrics" in failed.stderr
    shown = status("--metrics-url", f"{live.url}/metrics")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "platform: ready"
    assert any(line.startswith(MODEL) for line in shown.stdout.splitlines())
