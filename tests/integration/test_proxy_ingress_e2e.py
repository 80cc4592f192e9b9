"""`llmplat serve` as the chart runs the gateway: behind Ray Serve's proxy
(``LLMPLAT_GATEWAY__DIRECT_INGRESS=false``), two gateway replicas sharing quotas in a real
Redis whose URL (a secret) is given as a file, the real tiny model behind them."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.settings import Settings
from support import MODEL
from support.platform import files_containing, free_port, launch, platform_home, stop
from support.redis_server import redis_server

pytestmark = pytest.mark.integration
RPM = 12


@dataclass(frozen=True)
class ProxyPlatform:
    url: str
    port: int
    key: str
    limited_key: str
    engine_metrics_url: str


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPlatform]:
    password = secrets.token_urlsafe(18)
    with redis_server(password=password) as redis:
        home = platform_home(tmp_path_factory, "llmplat-proxy")
        admin = KeyAdmin(FileKeyStore(home / "teams.yaml"))
        admin.create_team({"name": "limited", "limits": {"requests_per_minute": RPM}})
        limited = admin.create_key("limited").plaintext
        url_file = home / "redis-url"
        url_file.write_text(redis.url + "\n")
        url_file.chmod(0o600)
        port, metrics_port = free_port(), free_port()
        key = "llmp_dev_" + secrets.token_urlsafe(24)
        env = os.environ | {
            "LLMPLAT_HOME": str(home),
            "LLMPLAT_PORT": str(port),
            "LLMPLAT_DEV_API_KEY": key,
            "LLMPLAT_ENGINE_METRICS_PORT": str(metrics_port),
            "LLMPLAT_GATEWAY__DIRECT_INGRESS": "false",
            "LLMPLAT_GATEWAY__REPLICAS": "2",
            "LLMPLAT_QUOTAS__BACKEND": "redis",
            "LLMPLAT_QUOTAS__REDIS_URL_FILE": str(url_file),
            "PYTHONUNBUFFERED": "1",
        }
        log = home / "serve.log"
        proc = launch(["serve"], env, log)
        try:
            yield ProxyPlatform(
                f"http://127.0.0.1:{port}",
                port,
                key,
                limited,
                f"http://127.0.0.1:{metrics_port}/metrics",
            )
        finally:
            stop(proc, home, log)
            for root in (home, Settings(home=home).ray_temp_dir):
                leaked = [f for f in files_containing(root, password) if f != str(url_file)]
                assert not leaked, f"the Redis password leaked into {leaked}"


def test_the_serve_proxy_holds_the_port(proxied) -> None:
    """With direct ingress off, Ray Serve's proxy listens on LLMPLAT_PORT (one port for all
    replicas, as the chart's Service targets) and nothing on the next port."""
    owners = {
        c.laddr.port: c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in (proxied.port, proxied.port + 1)
    }
    assert list(owners) == [proxied.port], owners
    title = " ".join(psutil.Process(owners[proxied.port]).cmdline())
    assert title.startswith("ray::ProxyActor"), title
    client = openai.OpenAI(api_key=proxied.key, base_url=f"{proxied.url}/v1", max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.usage.completion_tokens >= 1


def test_two_replicas_behind_the_proxy_share_one_exact_quota(proxied) -> None:
    """A burst through the proxy is spread over both gateway replicas (Ray Serve's own
    per-replica request counters show it) and admits exactly the team's requests per minute."""
    if time.time() % 60 > 40:  # keep the burst inside one minute window
        time.sleep(61 - time.time() % 60)

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {proxied.limited_key}"}
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        async with httpx.AsyncClient(base_url=proxied.url, timeout=120) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/completions", json=body, headers=headers) for _ in range(3 * RPM))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses.count(200) == RPM and statuses.count(429) == 2 * RPM, statuses
    deadline = time.monotonic() + 60  # Ray exports its metrics every few seconds
    while sum((served := _gateway_requests_by_replica(proxied)).values()) < 3 * RPM:
        assert time.monotonic() < deadline, f"the burst never showed in Ray's metrics: {served}"
        time.sleep(2)
    assert len(served) == 2, f"one gateway replica served everything: {served}"


def _gateway_requests_by_replica(proxied: ProxyPlatform) -> dict[str, float]:
    text = httpx.get(proxied.engine_metrics_url, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name == "ray_serve_deployment_request_counter_total"
                and s.labels.get("deployment") == "Gateway"
                and s.labels.get("route", "").startswith("/v1/completions")
                and s.value > 0
            ):
                out[s.labels["replica"]] = out.get(s.labels["replica"], 0) + s.value
    return out
