"""Security controls on the real platform: throttled bad keys, refused weak settings."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx
import pytest

from llmplat.settings import Settings
from support import MODEL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600, func_only=True)]


@pytest.mark.asyncio(loop_scope="function")  # a fresh loop: no client state shared by tests
async def test_repeated_bad_keys_from_one_address_get_429(live) -> None:
    """From its own loopback address (127.0.0.2), so other tests' failures do not count."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
    bad = {"Authorization": "Bearer llmp_wrong_" + "q" * 40}
    async with httpx.AsyncClient(base_url=live.url, transport=transport, timeout=30) as http:
        statuses = [
            (await http.post("/v1/completions", json=body, headers=bad)).status_code
            for _ in range(25)
        ]
        good = await http.post(
            "/v1/completions", json=body, headers={"Authorization": f"Bearer {live.key}"}
        )
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}, statuses
    assert good.status_code == 200  # a valid key from the same address is always served
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:  # 127.0.0.1
        other = await http.post("/v1/completions", json=body, headers=bad)
    assert other.status_code == 401


def test_short_admin_token_stops_serve_with_a_clear_message(tmp_path) -> None:
    env = {**os.environ, "LLMPLAT_HOME": str(tmp_path), "LLMPLAT_ADMIN_TOKEN": "too-short-token"}
    out = subprocess.run(
        [sys.executable, "-m", "llmplat", "serve"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "LLMPLAT_ADMIN_TOKEN" in out.stderr and "at least 32 characters" in out.stderr
    assert "too-short-token" not in out.stderr + out.stdout
    assert not (tmp_path / "ray").exists()  # refused before anything started


def _agent_port(live) -> int:
    session = Settings(home=live.home).ray_temp_dir / "session_latest"
    [port_file] = session.glob("dashboard_agent_listen_port_*")
    return int(port_file.read_text().strip())


def test_ray_endpoints_need_the_token(live) -> None:
    """The node's dashboard agent (job API included) answers 401 without the cluster's
    token, which only the owner of the platform's home can read."""
    token_file = live.home / "ray-auth-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    base = f"http://127.0.0.1:{_agent_port(live)}"
    job = {"entrypoint": "sh -c 'env; cat /etc/passwd'", "submission_id": "attack"}
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.post("/api/job_agent/jobs/", json=job).status_code == 401
        assert http.get("/api/job_agent/jobs/attack").status_code == 401
        wrong = {"Authorization": "Bearer " + "0" * 64}
        assert http.get("/api/job_agent/jobs/attack", headers=wrong).status_code == 403
        right = {"Authorization": f"Bearer {token}"}
        answer = http.get("/api/job_agent/jobs/attack", headers=right)
    assert answer.status_code not in (401, 403)  # past authentication (no such job)
