"""``/admin/`` with the admin token; a team key sees its own team only."""

from __future__ import annotations

import asyncio

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
    assert (await http.post("/admin/teams", json={"name": "ide"}, headers=ADMIN)).status_code == 409

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
