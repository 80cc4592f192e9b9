"""Real Ray Serve wiring with several models: one LLMServer deployment per model behind
four Gateway replicas sharing quotas in a real Redis, the shared fake engine injected
through ``engine_cls``."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from pydantic import SecretStr

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.config.loader import load_profile
from llmplat.engine.fake import FakeEngine, fake_tokens
from llmplat.engine.llm_config import build_llm_config
from llmplat.gateway.state import GatewayConfig
from llmplat.serving.builder import BuiltModel, build_application, gateway_config
from llmplat.settings import GatewaySettings, QuotaSettings, Settings
from support import V3_TOKENIZER
from support.redis_server import redis_server

pytestmark = pytest.mark.integration
KEY = "llmp_dev_multi-model-test-key"
RPM = 20


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="module")
def team_key(served) -> str:
    _, _, home = served
    return (home / "limited.key").read_text()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[str, GatewayConfig, object]]:
    import ray
    from ray import serve

    home = tmp_path_factory.mktemp("mm")
    admin = KeyAdmin(FileKeyStore(home / "teams.yaml"))
    admin.create_team({"name": "limited", "limits": {"requests_per_minute": RPM}})
    (home / "limited.key").write_text(admin.create_key("limited").plaintext)
    admin.create_team({"name": "roomy", "limits": {"requests_per_minute": 100 * RPM}})
    (home / "roomy.key").write_text(admin.create_key("roomy").plaintext)
    model_dir = home / "model"
    model_dir.mkdir()
    shutil.copy(V3_TOKENIZER, model_dir / "tokenizer.model.v3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        home=home,
        port=port,
        dev_api_key=SecretStr(KEY),
        gateway=GatewaySettings(replicas=4),
        quotas=QuotaSettings(backend="redis", redis_url=SecretStr(redis_url)),
    )
    base = load_profile("tiny-mixtral-cpu", settings.config_dir)
    models = []
    for model_id in ("alpha", "beta"):
        profile = base.model_copy(update={"model_id": model_id, "name": model_id})
        cfg = build_llm_config(profile, settings, str(model_dir))
        models.append(BuiltModel(model_id, str(model_dir), cfg, profile))
    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(settings.ray_temp_dir))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_application(models, settings, engine_cls=FakeEngine)
        serve.run(app, name="llmplat", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "fake platform never became ready"
            time.sleep(0.5)
        yield url, gateway_config(models, settings), home
    finally:
        serve.shutdown()
        ray.shutdown()


def test_each_model_is_its_own_deployment(served) -> None:
    from ray import serve

    deployments = serve.status().applications["llmplat"].deployments
    assert {"Gateway", "PlatformLLMServer:alpha", "PlatformLLMServer:beta"} <= set(deployments)


def test_requests_route_to_the_named_model(served) -> None:
    url, _, _ = served
    client = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["alpha", "beta"]
    for model_id in ("alpha", "beta"):
        resp = client.completions.create(model=model_id, prompt="p q", max_tokens=3)
        assert resp.model == model_id
        assert resp.choices[0].text == " ".join(fake_tokens("p q", 3))
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gamma", prompt="p", max_tokens=1)


def test_streams_through_serve_handles_with_usage(served) -> None:
    url, _, _ = served
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
    url, _, _ = served
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


def test_four_gateway_replicas_share_one_exact_quota(served, team_key) -> None:
    """Concurrent bursts spread over the four replicas: exactly RPM admitted, never more."""
    import asyncio

    url, _, home = served
    roomy_key = (home / "roomy.key").read_text()
    if time.time() % 60 > 45:  # keep the burst inside one minute window
        time.sleep(61 - time.time() % 60)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def one(key: str) -> int:
                r = await http.post(
                    "/v1/completions",
                    json={"model": "alpha", "prompt": "x", "max_tokens": 1},
                    headers={"Authorization": f"Bearer {key}"},
                )
                return r.status_code

            calls = [one(team_key) for _ in range(3 * RPM)] + [one(roomy_key) for _ in range(RPM)]
            return await asyncio.gather(*calls)

    statuses = asyncio.run(burst())
    limited, roomy = statuses[: 3 * RPM], statuses[3 * RPM :]
    assert limited.count(200) == RPM, limited  # zero overshoot, no under-admission
    assert limited.count(429) == 2 * RPM
    assert roomy == [200] * RPM  # a team below its limits is never refused
