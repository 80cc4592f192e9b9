"""``/admin/`` with the admin token; a team key sees its own team only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from support import ADMIN_TOKEN, MODEL, auth

ADMIN = auth(ADMIN_TOKEN)


async def _wait_accepted(http: httpx.AsyncClient, key: str) -> None:
    for _ in range(100):
        if (await http.get("/v1/models", headers=auth(key))).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("new key never accepted")


async def test_admin_lifecycle_team_key_revoke(http) -> None:
    r = await http.post(
        "/admin/teams",
        json={
            "name": "ide",
            "priority_class": "interactive",
            "limits": {"requests_per_minute": 50},
        },
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    again = await http.post("/admin/teams", json={"name": "ide"}, headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert "team 'ide' already exists" in again.json()["error"]["message"]

    r = await http.post("/admin/teams/ide/keys", json={"name": "laptop"}, headers=ADMIN)
    assert r.status_code == 201
    created = r.json()
    key, key_id = created["key"], created["key_id"]
    assert key.startswith(f"llmp_{key_id}_") and "secret_sha256" not in created

    listed = (await http.get("/admin/keys", params={"team": "ide"}, headers=ADMIN)).json()["data"]
    assert [k["key_id"] for k in listed] == [key_id]
    assert "key" not in listed[0] and "secret_sha256" not in listed[0]

    await _wait_accepted(http, key)
    client = openai.AsyncOpenAI(
        api_key=key, base_url="http://gw/v1", http_client=http, max_retries=0
    )
    await client.completions.create(model=MODEL, prompt="x", max_tokens=1)

    r = await http.patch(
        "/admin/teams/ide", json={"limits": {"tokens_per_day": 100}}, headers=ADMIN
    )
    assert r.json()["limits"] == {
        "requests_per_minute": 50,
        "tokens_per_minute": None,
        "tokens_per_day": 100,
        "concurrent_requests": None,
    }
    usage = (await http.get("/admin/teams/ide/usage", headers=ADMIN)).json()
    assert usage["usage"][0]["requests_this_minute"] >= 1

    rotated = (await http.post(f"/admin/keys/{key_id}/rotate", headers=ADMIN)).json()
    assert rotated["key"] != key and rotated["team"] == "ide"
    for _ in range(100):
        if (await http.get("/v1/models", headers=auth(key))).status_code == 401:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("rotated-out key still accepted")
    await _wait_accepted(http, rotated["key"])

    # GET one team; revoke the rotated key (its state, its refusal, idempotence).
    team = (await http.get("/admin/teams/ide", headers=ADMIN)).json()
    assert team["name"] == "ide" and team["priority_class"] == "interactive"
    r = await http.post(f"/admin/keys/{rotated['key_id']}/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"] is True, r.text
    for _ in range(100):
        if (await http.get("/v1/models", headers=auth(rotated["key"]))).status_code == 401:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("revoked key still accepted")
    denied = await http.get("/v1/models", headers=auth(rotated["key"]))
    assert denied.json()["error"]["code"] == "revoked_api_key"
    listed = (await http.get("/admin/keys", params={"team": "ide"}, headers=ADMIN)).json()["data"]
    assert {k["key_id"]: k["revoked"] for k in listed} == {key_id: True, rotated["key_id"]: True}
    missing = await http.post("/admin/keys/nokey/revoke", headers=ADMIN)
    assert missing.status_code == 404 and "nokey" in missing.json()["error"]["message"]

    assert (await http.delete("/admin/teams/ide", headers=ADMIN)).status_code == 200
    assert (await http.get("/admin/teams/ide", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "priority_class": "urgent"}, "priority_class"),
        ({"name": "ok2", "limits": {"requests_per_minute": 0}}, "requests_per_minute"),
        ({"name": "ok3", "colour": "red"}, "colour"),
    ],
)
async def test_bad_team_bodies_are_400_naming_the_field(http, body, fragment) -> None:
    r = await http.post("/admin/teams", json=body, headers=ADMIN)
    assert r.status_code == 400
    assert fragment in r.json()["error"]["message"]


async def test_creation_time_is_the_servers_not_the_clients(http) -> None:
    before = datetime.now(UTC)
    body = {"name": "backdated", "created_at": "2000-01-01T00:00:00Z"}
    r = await http.post("/admin/teams", json=body, headers=ADMIN)
    assert r.status_code in (200, 201), r.text
    created = datetime.fromisoformat(r.json()["created_at"])
    assert before <= created <= datetime.now(UTC)


async def test_admin_needs_the_admin_token(http) -> None:
    assert (await http.get("/admin/teams")).status_code == 401
    assert (await http.get("/admin/teams", headers=auth("wrong"))).status_code == 403


async def test_team_key_reads_own_usage_never_another_team_nor_admin(http) -> None:
    for name in ("alpha", "beta"):
        await http.post("/admin/teams", json={"name": name}, headers=ADMIN)
    key = (await http.post("/admin/teams/alpha/keys", json={}, headers=ADMIN)).json()["key"]
    await _wait_accepted(http, key)
    own = await http.get("/v1/usage", headers=auth(key))
    assert own.status_code == 200 and own.json()["team"] == "alpha"
    assert (await http.get("/v1/teams/alpha/usage", headers=auth(key))).status_code == 200
    other = await http.get("/v1/teams/beta/usage", headers=auth(key))
    assert other.status_code == 403 and other.json()["error"]["code"] == "other_team"
    assert (await http.get("/admin/teams", headers=auth(key))).status_code == 403
    assert (await http.get("/admin/teams/beta/usage", headers=auth(key))).status_code == 403


async def test_keys_with_their_own_limits_and_expiry(gateway, http) -> None:
    state = gateway.state.gateway
    state.quotas.clock = lambda: 1_800_000_010.0  # 10 s into a minute: no window boundary
    await http.post("/admin/teams", json={"name": "ci"}, headers=ADMIN)
    r = await http.post(
        "/admin/teams/ci/keys",
        json={"name": "runner", "expires_in_days": 2, "limits": {"requests_per_minute": 1}},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    made = r.json()
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=2) - timedelta(minutes=1) < expires - datetime.now(UTC) <= timedelta(2)
    assert made["limits"]["requests_per_minute"] == 1 and made["name"] == "runner"
    await _wait_accepted(http, made["key"])
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    assert (await http.post("/v1/completions", json=body, headers=auth(made["key"]))).is_success
    limited = await http.post("/v1/completions", json=body, headers=auth(made["key"]))
    assert limited.status_code == 429 and f"key '{made['key_id']}'" in limited.text

    short = await http.post("/admin/teams/ci/keys", json={"expires_in_days": 1e-5}, headers=ADMIN)
    assert short.status_code == 201  # 0.86 s
    for _ in range(100):  # the replica's store watch has the key (expired or not)
        if short.json()["key_id"] in state.authenticator.registry.keys:
            break
        await asyncio.sleep(0.05)
    expires_at = datetime.fromisoformat(short.json()["expires_at"])
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.1)
    expired = await http.get("/v1/models", headers=auth(short.json()["key"]))
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("PATCH", "/admin/teams/ghost", {"max_choices": 2}, 404, "ghost"),
        ("DELETE", "/admin/teams/ghost", None, 404, "ghost"),
        ("PATCH", "/admin/teams/ops", {"priority_class": "urgent"}, 400, "priority_class"),
        ("PATCH", "/admin/teams/ops", {"colour": "red"}, 400, "colour"),
        ("PATCH", "/admin/teams/ops", ["not", "an", "object"], 400, "object"),
        ("PATCH", "/admin/teams/ops", {"name": "renamed"}, 400, "name"),
        ("POST", "/admin/teams/ghost/keys", {}, 404, "ghost"),
        ("POST", "/admin/teams/ops/keys", {"expires_in_days": 0}, 400, "expires_in_days"),
        ("POST", "/admin/teams/ops/keys", {"scopes": ["all"]}, 400, "scopes"),
        ("POST", "/admin/keys/nokey/rotate", None, 404, "nokey"),
        ("GET", "/admin/teams/ghost/usage", None, 404, "ghost"),
    ],
)
async def test_admin_errors_are_openai_shaped_and_change_nothing(
    http, method, path, body, status, fragment
) -> None:
    await http.post("/admin/teams", json={"name": "ops", "max_choices": 3}, headers=ADMIN)
    r = await http.request(method, path, json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"]
    ops = (await http.get("/admin/teams/ops", headers=ADMIN)).json()
    assert (ops["priority_class"], ops["max_choices"]) == ("interactive", 3)
    assert (await http.get("/admin/keys", headers=ADMIN)).json()["data"] == []


async def test_admin_status_reports_deployments_under_serve_only(gateway, http) -> None:
    state = gateway.state.gateway
    assert (await http.get("/admin/status", headers=ADMIN)).status_code == 404  # no Serve here
    deployments = {"Gateway": {"status": "HEALTHY", "replicas": {"RUNNING": 2}}}
    state.status = lambda: deployments
    try:
        r = await http.get("/admin/status", headers=ADMIN)
    finally:
        state.status = None
    assert r.json() == {"deployments": deployments}
    assert (await http.get("/admin/status")).status_code == 401


async def test_admin_api_is_off_without_a_token(replica) -> None:
    async with replica(admin_token=None) as (_, h):
        for path in ("/admin/teams", "/admin/status", "/admin/keys"):
            r = await h.get(path, headers=ADMIN)  # even with what was the token
            assert r.status_code == 404 and r.json()["error"]["code"] == "admin_disabled"
        assert "LLMPLAT_ADMIN_TOKEN" in r.json()["error"]["message"]
        r = await h.post("/admin/teams", json={"name": "x"}, headers=ADMIN)
        assert r.status_code == 404
        assert (await h.get("/v1/models", headers=auth())).status_code == 200  # still serving


async def test_rotation_keeps_name_expiry_window_and_limits(http) -> None:
    await http.post("/admin/teams", json={"name": "ci"}, headers=ADMIN)
    old = (
        await http.post(
            "/admin/teams/ci/keys",
            json={"name": "runner", "expires_in_days": 30, "limits": {"tokens_per_day": 500}},
            headers=ADMIN,
        )
    ).json()
    new = (await http.post(f"/admin/keys/{old['key_id']}/rotate", headers=ADMIN)).json()
    assert (new["team"], new["name"], new["limits"]) == ("ci", "runner", old["limits"])
    window = datetime.fromisoformat(new["expires_at"]) - datetime.fromisoformat(new["created_at"])
    assert abs(window - timedelta(days=30)) < timedelta(seconds=1)
    again = await http.post(f"/admin/keys/{old['key_id']}/rotate", headers=ADMIN)
    assert again.status_code == 400
    assert f"key '{old['key_id']}' is revoked already" in again.json()["error"]["message"]
