"""Failed authentications are throttled per client address; valid credentials never are."""

from __future__ import annotations

import httpx

from llmplat.gateway.errors import AuthenticationFailed
from llmplat.gateway.throttle import FailedAuthThrottle
from support import ADMIN_TOKEN, DEV_KEY, MODEL, auth

BAD_KEY = "llmp_nope_" + "x" * 40


def test_window_slides_and_addresses_are_separate() -> None:
    now = [0.0]
    throttle = FailedAuthThrottle(limit=3, window_s=60.0, clock=lambda: now[0])
    error = AuthenticationFailed("bad key")
    assert [throttle.failed("10.0.0.1", error).status for _ in range(3)] == [401] * 3
    refused = throttle.failed("10.0.0.1", error)
    assert refused.status == 429 and refused.code == "too_many_failed_authentications"
    assert refused.headers["retry-after"] == "60"
    assert refused.message == (
        "Too many failed authentications from this address (3 per 60 s); "
        "check the API key and retry after 60 s."
    )
    assert throttle.failed("10.0.0.2", error).status == 401  # another address
    now[0] = 30.0
    assert throttle.failed("10.0.0.1", error).status == 429
    assert throttle.failed("10.0.0.1", error).headers["retry-after"] == "30"
    now[0] = 200.0  # a quiet window later: counted afresh
    assert throttle.failed("10.0.0.1", error).status == 401


def test_clients_without_an_address_share_one_count() -> None:
    throttle = FailedAuthThrottle(limit=2)
    error = AuthenticationFailed("bad key")
    assert [throttle.failed(None, error).status for _ in range(3)] == [401, 401, 429]
    assert throttle.failed("unknown", error).status == 429
    assert throttle.failed("10.0.0.1", error).status == 401


def test_memory_is_bounded() -> None:
    throttle = FailedAuthThrottle(limit=1, max_addresses=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 250}.{i % 250}", AuthenticationFailed("bad"))
    assert len(throttle._failures) == 100


def test_zero_disables() -> None:
    throttle = FailedAuthThrottle(limit=0)
    assert all(throttle.failed("a", AuthenticationFailed("x")).status == 401 for _ in range(50))


async def test_bad_keys_get_429_and_good_keys_still_work(gateway, http: httpx.AsyncClient) -> None:
    limit = gateway.state.gateway.auth_throttle.limit
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    statuses = [
        (await http.post("/v1/completions", json=body, headers=auth(BAD_KEY))).status_code
        for _ in range(limit + 2)
    ]
    assert statuses == [401] * limit + [429, 429]
    refused = await http.get("/v1/models", headers=auth(BAD_KEY))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "too_many_failed_authentications"
    assert (await http.post("/v1/completions", json=body, headers=auth(DEV_KEY))).status_code == 200
    assert (await http.get("/admin/teams", headers=auth(ADMIN_TOKEN))).status_code == 200


async def test_wrong_admin_tokens_are_throttled(gateway, http: httpx.AsyncClient) -> None:
    limit = gateway.state.gateway.auth_throttle.limit
    wrong = auth("w" * 40)
    statuses = [
        (await http.get("/admin/teams", headers=wrong)).status_code for _ in range(limit + 1)
    ]
    assert statuses == [403] * limit + [429]
    assert (await http.get("/admin/teams", headers=auth(ADMIN_TOKEN))).status_code == 200


async def test_admin_api_says_which_credential_it_wants(http: httpx.AsyncClient) -> None:
    missing = await http.get("/admin/teams")
    assert missing.status_code == 401
    assert missing.json()["error"]["message"] == (
        "The admin API needs 'Authorization: Bearer <admin token>'."
    )
    team_key = await http.get("/admin/teams", headers=auth(DEV_KEY))
    assert team_key.status_code == 403
    assert team_key.json()["error"] == {
        "message": "This credential may not use the admin API.",
        "type": "permission_error",
        "param": None,
        "code": "admin_token_required",
    }
    assert (await http.get("/admin/teams", headers=auth(ADMIN_TOKEN))).status_code == 200
