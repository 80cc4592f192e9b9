"""The client address (throttle bucket, audit ``client``) is the TCP peer; X-Forwarded-For
counts only from ``gateway.trusted_proxies``, and uvicorn's own rewrite (Ray Serve runs
uvicorn with ``proxy_headers`` on, trusting loopback) cannot make a forged one count."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from llmplat.gateway.requests import client_address
from llmplat.settings import GatewaySettings
from support import MODEL, auth
from support.audit import wait_audit_lines

BAD_KEY = "llmp_nope_" + "x" * 40
BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 2}


def _resolve(
    peer: tuple[str, int] | None, forwarded: list[str], trusted: list[str] = ()
) -> str | None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-forwarded-for", v.encode()) for v in forwarded],
        "client": peer,
        "server": ("127.0.0.1", 8000),
    }
    gateway = GatewaySettings(trusted_proxies=[ipaddress.ip_network(t) for t in trusted])
    state = SimpleNamespace(config=SimpleNamespace(gateway=gateway))
    return client_address(state, Request(scope))  # type: ignore[arg-type]


def test_the_peer_unless_it_is_a_trusted_proxy() -> None:
    assert _resolve(("203.0.113.7", 5000), []) == "203.0.113.7"
    assert _resolve(("203.0.113.7", 5000), ["198.51.100.1"]) == "203.0.113.7"
    assert _resolve(None, []) is None
    proxies = ["10.0.0.0/8"]
    assert _resolve(("10.0.0.5", 1), ["198.51.100.1"], proxies) == "198.51.100.1"
    # The right-most entry no trusted proxy wrote: what the client wrote itself is left of it.
    chain = ["1.1.1.1, 198.51.100.1, 10.0.0.9:443"]
    assert _resolve(("10.0.0.5", 1), chain, proxies) == "198.51.100.1"
    assert _resolve(("10.0.0.5", 1), ["1.1.1.1", "[2001:db8::1]:80"], proxies) == "2001:db8::1"
    assert _resolve(("10.0.0.5", 1), ["10.0.0.7, 10.0.0.8"], proxies) == "10.0.0.7"
    assert _resolve(("10.0.0.5", 1), ["not-an-address"], proxies) == "10.0.0.5"
    assert _resolve(("10.0.0.5", 1), [], proxies) == "10.0.0.5"
    # An untrusted peer's header counts for nothing, trusted list or not.
    assert _resolve(("203.0.113.7", 1), ["198.51.100.1"], proxies) == "203.0.113.7"


@pytest.mark.parametrize(
    "forged", ["198.51.100.1", "198.51.100.1:80", "[2001:db8::5]:1", "junk", "9.9.9.9, 127.0.0.1"]
)
async def test_uvicorns_rewrite_is_undone(forged: str) -> None:
    """Behind uvicorn's ProxyHeadersMiddleware (as Serve starts it: loopback trusted), a
    loopback peer's forged header still resolves to the loopback peer."""
    seen: list[str | None] = []
    gateway = GatewaySettings()
    state = SimpleNamespace(config=SimpleNamespace(gateway=gateway))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"][0])
        seen.append(client_address(state, Request(scope)))  # type: ignore[arg-type]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1,::1")
    transport = httpx.ASGITransport(app=wrapped, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as h:
        await h.get("/", headers={"x-forwarded-for": forged})
    rewritten, resolved = seen
    assert rewritten != "127.0.0.1"  # uvicorn believed the header
    assert resolved == "127.0.0.1"


async def _statuses(h: httpx.AsyncClient, n: int, path: str, forwarded: str | None = None):
    out = []
    for i in range(n):
        headers = auth(BAD_KEY) | {"x-forwarded-for": forwarded or f"198.51.100.{i}"}
        if path.startswith("/v1/completions"):
            r = await h.post(path, json=BODY, headers=headers)
        else:
            r = await h.get(path, headers=headers)
        out.append(r.status_code)
    return out


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/usage", "/v1/teams/dev/usage"])
async def test_forged_forwarded_for_shares_the_peers_bucket(
    gateway, audit_path: Path, path: str
) -> None:
    limit = gateway.state.gateway.auth_throttle.limit
    # As Ray Serve serves it: uvicorn's proxy-header rewrite in front, peer on loopback.
    wrapped = ProxyHeadersMiddleware(gateway, trusted_hosts="127.0.0.1,::1")
    transport = httpx.ASGITransport(app=wrapped, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as h:
        assert await _statuses(h, limit + 2, path) == [401] * limit + [429, 429]
    failures = await wait_audit_lines(audit_path, "auth_failure", limit + 2)
    assert {x["client"] for x in failures} == {"127.0.0.1"}
    assert [x["status"] for x in failures] == [401] * limit + [429, 429]
    if path == "/v1/completions":
        requests = await wait_audit_lines(audit_path, "request", limit + 2)
        assert {x["client"] for x in requests} == {"127.0.0.1"}


async def test_trusted_proxies_throttle_per_forwarded_client(replica, audit_path: Path) -> None:
    behind_proxy = GatewaySettings(max_request_bytes=64 * 1024, trusted_proxies=["127.0.0.1/32"])
    async with replica(gateway=behind_proxy) as (state, h):
        limit = state.auth_throttle.limit
        alice = "198.51.100.10"
        statuses = await _statuses(h, limit + 1, "/v1/usage", f"6.6.6.6, {alice}")
        assert statuses == [401] * limit + [429]
        # Another client behind the same proxy is not locked out.
        assert await _statuses(h, 1, "/v1/usage", "198.51.100.11") == [401]
        ok = await h.get("/v1/usage", headers=auth() | {"x-forwarded-for": alice})
        assert ok.status_code == 200  # a valid key from a throttled client is served
        r = await h.post("/v1/completions", json=BODY, headers=auth() | {"x-forwarded-for": alice})
        assert r.status_code == 200
    failures = await wait_audit_lines(audit_path, "auth_failure", limit + 2)
    assert [x["client"] for x in failures] == [alice] * (limit + 1) + ["198.51.100.11"]
    requests = await wait_audit_lines(audit_path, "request", 1)
    assert requests[-1]["client"] == alice and requests[-1]["status"] == 200
