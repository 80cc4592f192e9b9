"""Real Ray Serve wiring with several models: one LLMServer deployment per model behind
four Gateway replicas sharing quotas in a real Redis, the shared fake engine injected
through ``engine_cls``. Ray runs with the variables ``llmplat serve`` gives it (direct
ingress: gateway replica *i* serves HTTP itself on port + *i*), so each replica can be
asked on its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.config.loader import load_profile
from llmplat.engine.fake import FakeEngine, fake_tokens
from llmplat.engine.llm_config import build_llm_config
from llmplat.local.runtime import port_free, ray_environment
from llmplat.serving.builder import BuiltModel, build_application
from llmplat.settings import GatewaySettings, QuotaSettings, Settings
from support import V3_TOKENIZER
from support.redis_server import redis_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600, func_only=True)]
KEY = "llmp_dev_multi-model-test-key"
RPM = 20
REPLICAS = 4


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def team_key(served) -> str:
    return (served.home / "limited.key").read_text()


@dataclass(frozen=True)
class Served:
    url: str
    """Replica 0's port (``LLMPLAT_PORT``); replica i is on port + i."""
    home: Path
    key_store: FileKeyStore

    def replica_urls(self) -> list[str]:
        port = int(self.url.rsplit(":", 1)[1])
        return [f"http://127.0.0.1:{port + i}" for i in range(REPLICAS)]


def _free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count < 65536 and all(port_free("127.0.0.1", first + i) for i in range(count)):
            return first


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Served]:
    import ray
    from ray import serve

    home = tmp_path_factory.mktemp("mm")
    key_store = FileKeyStore(home / "teams.yaml")
    admin = KeyAdmin(key_store)
    admin.create_team({"name": "limited", "limits": {"requests_per_minute": RPM}})
    (home / "limited.key").write_text(admin.create_key("limited").plaintext)
    admin.create_team({"name": "roomy", "limits": {"requests_per_minute": 100 * RPM}})
    (home / "roomy.key").write_text(admin.create_key("roomy").plaintext)
    model_dir = home / "model"
    model_dir.mkdir()
    shutil.copy(V3_TOKENIZER, model_dir / "tokenizer.model.v3")
    port = _free_port_range(REPLICAS)
    settings = Settings(
        home=home,
        port=port,
        dev_api_key=SecretStr(KEY),
        gateway=GatewaySettings(replicas=REPLICAS),
        quotas=QuotaSettings(backend="redis", redis_url=SecretStr(redis_url)),
    )
    base = load_profile("tiny-mixtral-cpu", settings.config_dir)
    models = []
    for model_id in ("alpha", "beta"):
        profile = base.model_copy(update={"model_id": model_id, "name": model_id})
        cfg = build_llm_config(profile, settings, str(model_dir))
        models.append(BuiltModel(model_id, str(model_dir), cfg, profile))
    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    # Ray's processes read these when they start: the direct-ingress port range of
    # `llmplat serve` (Ray's token auth is left to the platform tests: it is process-wide).
    ray_env = {k: v for k, v in ray_environment(settings).items() if not k.startswith("RAY_AUTH")}
    saved = dict(os.environ)
    try:
        os.environ.update(ray_env)
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(settings.ray_temp_dir))
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port_range(1)})
        app = build_application(models, settings, engine_cls=FakeEngine)
        serve.run(app, name="llmplat", route_prefix="/")
        served = Served(f"http://127.0.0.1:{port}", home, key_store)
        deadline = time.monotonic() + 120
        for url in served.replica_urls():
            while not _ready(url):
                assert time.monotonic() < deadline, f"gateway replica at {url} never ready"
                time.sleep(0.5)
        yield served
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def _answered_by_replica(url: str, team: str) -> dict[str, float]:
    """Status -> requests of a team this replica answered, from the replica's own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llmplat_requests_total" and sample.labels["team"] == team:
                status = sample.labels["status"]
                out[status] = out.get(status, 0) + sample.value
    return out


def test_each_model_is_its_own_deployment(served) -> None:
    from ray import serve

    deployments = serve.status().applications["llmplat"].deployments
    assert {"Gateway", "PlatformLLMServer:alpha", "PlatformLLMServer:beta"} <= set(deployments)


def test_requests_route_to_the_named_model(served) -> None:
    url = served.url
    client = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["alpha", "beta"]
    for model_id in ("alpha", "beta"):
        resp = client.completions.create(model=model_id, prompt="p q", max_tokens=3)
        assert resp.model == model_id
        assert resp.choices[0].text == " ".join(fake_tokens("p q", 3))
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gamma", prompt="p", max_tokens=1)


def test_streams_through_serve_handles_with_usage(served) -> None:
    url = served.url
    client = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="beta",
            messages=[{"role": "user", "content": "hi there"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(fake_tokens("hi there", 5))
    assert chunks[-1].usage.completion_tokens == 5


def test_engine_failure_mid_stream_through_serve_ends_with_error_event(served) -> None:
    url = served.url
    body = {"model": "alpha", "prompt": "x FAKE_FAIL_MID_STREAM", "max_tokens": 8, "stream": True}
    r = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    events = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
    ok = httpx.post(
        f"{url}/v1/completions",
        json={"model": "alpha", "prompt": "fine", "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert ok.status_code == 200


def test_each_gateway_replica_serves_on_its_own_port(served) -> None:
    """Direct ingress: replica i on port + i, each a separate process; nothing on port + 4."""
    import psutil

    urls = served.replica_urls()
    ports = [int(u.rsplit(":", 1)[1]) for u in urls]
    listeners = {
        c.laddr.port: c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
    }
    assert sorted(listeners) == ports
    assert len(set(listeners.values())) == REPLICAS  # four processes, one port each
    titles = {" ".join(psutil.Process(pid).cmdline()) for pid in listeners.values()}
    assert all(t.startswith("ray::ServeReplica:llmplat:Gateway") for t in titles), titles
    client = openai.OpenAI(api_key=KEY, base_url=f"{urls[-1]}/v1", max_retries=0)
    assert client.completions.create(model="alpha", prompt="p", max_tokens=1).model == "alpha"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{ports[-1] + 1}/healthz", timeout=5)


def test_four_gateway_replicas_share_one_exact_quota(served, team_key) -> None:
    """Concurrent bursts spread over the four replicas' ports: exactly RPM admitted in all,
    never more, each replica answering its share (each counts its own in its /metrics)."""
    roomy_key = (served.home / "roomy.key").read_text()
    urls = served.replica_urls()
    before = [_answered_by_replica(u, "limited") for u in urls]
    # No wait for a fresh clock minute: the limit holds over any 60 s span.

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as http:

            async def one(i: int, key: str) -> int:
                r = await http.post(
                    f"{urls[i % REPLICAS]}/v1/completions",
                    json={"model": "alpha", "prompt": "x", "max_tokens": 1},
                    headers={"Authorization": f"Bearer {key}"},
                )
                return r.status_code

            calls = [one(i, team_key) for i in range(3 * RPM)]
            calls += [one(i, roomy_key) for i in range(RPM)]
            return await asyncio.gather(*calls)

    statuses = asyncio.run(burst())
    limited, roomy = statuses[: 3 * RPM], statuses[3 * RPM :]
    assert limited.count(200) == RPM, limited  # zero overshoot, no under-admission
    assert limited.count(429) == 2 * RPM
    assert roomy == [200] * RPM  # a team below its limits is never refused
    # Each replica answered the requests sent to its port (admitted or refused: which
    # replica wins the shared quota is a race), and the admissions add up to the limit.
    after = [_answered_by_replica(u, "limited") for u in urls]
    per_replica = [
        {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}
        for a, b in zip(after, before, strict=True)
    ]
    assert [sum(p.values()) for p in per_replica] == [3 * RPM / REPLICAS] * REPLICAS, per_replica
    assert sum(p.get("200", 0) for p in per_replica) == RPM, per_replica


def test_a_revocation_reaches_every_replica_within_two_seconds(served) -> None:
    """docs/teams-and-quotas.md: every replica follows the store, so a revoked key is refused everywhere
    within a second or two (the file store here; each replica is asked on its own port)."""
    admin = KeyAdmin(served.key_store)
    admin.create_team({"name": "revoked"})
    issued = admin.create_key("revoked")
    headers = {"Authorization": f"Bearer {issued.plaintext}"}
    urls = served.replica_urls()

    def statuses() -> list[int]:
        return [httpx.get(f"{u}/v1/models", headers=headers, timeout=10).status_code for u in urls]

    deadline = time.monotonic() + 10
    while statuses() != [200] * REPLICAS:
        assert time.monotonic() < deadline, "a new key never reached every replica"
        time.sleep(0.05)
    admin.revoke_key(issued.record.key_id)
    revoked_at = time.monotonic()
    while (now := statuses()) != [401] * REPLICAS:
        assert time.monotonic() - revoked_at < 10, now
        time.sleep(0.05)
    took = time.monotonic() - revoked_at
    print(f"\nrevocation refused by all {REPLICAS} replicas after {took:.2f} s", flush=True)
    assert took < 2.0
