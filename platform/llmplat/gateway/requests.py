"""What an HTTP request says before any route logic: its client address, its credential's
principal (the one authenticate-and-throttle step of every route that takes a key or the
admin token), its body (read with a size limit) as a JSON object. The generation body
becomes an engine request in ``gateway.prepare``."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from starlette.requests import ClientDisconnect, Request

from llmplat.auth.base import Principal, bearer_token
from llmplat.auth.keys import parse_key
from llmplat.gateway.errors import (
    APIError,
    AuthenticationFailed,
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
    RequestTimeout,
)
from llmplat.gateway.uploads import BodyBytes
from llmplat.observability.record import AuthFailure

if TYPE_CHECKING:
    from llmplat.gateway.state import GatewayState

log = logging.getLogger(__name__)

ADMIN_ACTOR = "admin-token"
"""Who an admin API call acts as (the audit line's ``actor``)."""

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""An ``X-Request-ID`` the gateway adopts (else it makes its own)."""

_CLIENT_KEY = "llmplat.client"

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def given_request_id(request: Request) -> str | None:
    """The request's ``X-Request-ID`` when it is one the gateway adopts."""
    incoming = request.headers.get("x-request-id", "")
    return incoming if REQUEST_ID.fullmatch(incoming) else None


def client_address(state: GatewayState, request: Request) -> str | None:
    """The client's address as the throttle, the audit log and the request record see it:
    the TCP peer, or, when the peer is one of ``gateway.trusted_proxies``, the right-most
    ``X-Forwarded-For`` entry outside them. Nothing a client writes is believed otherwise."""
    if _CLIENT_KEY not in request.scope:
        entries = [
            item.strip()
            for value in request.headers.getlist("x-forwarded-for")
            for item in value.split(",")
        ]
        peer = tcp_peer(request.scope, entries)
        trusted = state.config.gateway.trusted_proxies
        client = peer
        if entries and peer is not None and _within(peer, trusted):
            nearest = _rightmost_untrusted([_address(e) for e in entries], trusted)
            client = nearest if _ip(nearest) is not None else peer
        request.scope[_CLIENT_KEY] = client
    client = request.scope[_CLIENT_KEY]
    return client if isinstance(client, str) else None


def tcp_peer(scope: dict[str, Any], forwarded: list[str]) -> str | None:
    """The TCP peer. Ray Serve starts uvicorn (proxy and direct-ingress replicas alike)
    without ``proxy_headers``/``forwarded_allow_ips``, so uvicorn's defaults hold: its
    ``ProxyHeadersMiddleware`` rewrites ``scope["client"]`` from ``X-Forwarded-For`` when the
    peer is 127.0.0.1 or ::1 (or what ``FORWARDED_ALLOW_IPS`` says) and keeps no copy of the
    original anywhere in the scope. A client address that is one of the header's entries
    (as written, or any host part of it uvicorn may have read) therefore stands for a
    loopback peer, whatever the header says; a remote peer that names itself in its own
    header shares the loopback address's count (it can only lose by it)."""
    client = scope.get("client")
    host = client[0] if client else None
    if host is None or not any(host in _readings(entry) for entry in forwarded):
        return host
    server = scope.get("server")
    ipv6 = bool(server) and ":" in str(server[0])
    return "::1" if ipv6 else "127.0.0.1"


def _readings(entry: str) -> set[str]:
    """Every host uvicorn's ``ProxyHeadersMiddleware`` may read from one entry (``1.2.3.4``,
    ``1.2.3.4:80``, ``[::1]:80``, ``::1``, or anything kept whole)."""
    found = {entry}
    if entry.startswith("[") and "]" in entry:
        found.add(entry[1 : entry.index("]")])
    if entry.count(":") == 1:
        found.add(entry.rsplit(":", 1)[0])
    return found


def _address(entry: str) -> str:
    """The IP address an entry names (port and brackets dropped), else the entry."""
    for reading in sorted(_readings(entry), key=len):
        if _ip(reading) is not None:
            return reading
    return entry


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _within(host: str, networks: Networks) -> bool:
    address = _ip(host)
    return address is not None and any(address in net for net in networks)


def _rightmost_untrusted(hosts: list[str], trusted: Networks) -> str:
    """Each proxy appends its peer: the right-most entry no trusted proxy wrote is the
    client (the left-most when every entry is a trusted proxy)."""
    for host in reversed(hosts):
        if not _within(host, trusted):
            return host
    return hosts[0]


async def authenticate(
    state: GatewayState, request: Request, *, request_id: str | None = None
) -> Principal:
    """The principal of the request's key. A refused key is audited and counted per client
    address (429 past the limit)."""
    try:
        return await state.authenticator.authenticate(request.headers.get("authorization"))
    except AuthenticationFailed as exc:
        raise refused(state, request, exc, request_id=request_id) from None


def authenticate_admin(state: GatewayState, request: Request, admin_token: SecretStr) -> str:
    """The admin API's credential check, audited and throttled like a key's; the actor."""
    token = bearer_token(request.headers.get("authorization"))
    error: APIError | None = None
    if token is None:
        error = AuthenticationFailed(
            "The admin API needs 'Authorization: Bearer <admin token>'.",
            code="missing_admin_token",
        )
    elif not hmac.compare_digest(token.encode(), admin_token.get_secret_value().encode()):
        error = PermissionDenied(
            "This credential may not use the admin API.", code="admin_token_required"
        )
    if error is not None:
        raise refused(state, request, error)
    return ADMIN_ACTOR


def refused(
    state: GatewayState,
    request: Request,
    error: APIError,
    *,
    request_id: str | None = None,
    throttle: bool = True,
    key_id: str | None = None,
) -> APIError:
    """A refused credential: counted against the client address (the error to answer: 429
    once over the limit, unless ``throttle`` is off) and one ``auth_failure`` audit line
    (``key_id``: of a key that was accepted but may not do this)."""
    client = client_address(state, request)
    answer = state.auth_throttle.failed(client, error) if throttle else error
    failure = AuthFailure(
        route=f"{request.method} {request.url.path[:200]}",
        client=client,
        reason=error.code or type(error).__name__,
        status=answer.status,
        key_id=key_id or _known_key_id(state, request),
        request_id=request_id or given_request_id(request),
    )
    try:
        state.on_audit(failure)
    except Exception:
        log.exception("auditing a failed login failed")
    return answer


def _known_key_id(state: GatewayState, request: Request) -> str | None:
    """The id of a key this replica knows, when the credential is one of its format (never
    anything of an unknown credential: it may be a mistyped secret)."""
    token = bearer_token(request.headers.get("authorization"))
    parsed = parse_key(token) if token else None
    registry = getattr(state.authenticator, "registry", None)
    keys = getattr(registry, "keys", None)
    if parsed is None or not isinstance(keys, dict):
        return None
    return parsed[0] if parsed[0] in keys else None


async def read_body(
    request: Request,
    max_bytes: int,
    *,
    timeout_s: float | None = None,
    budget: BodyBytes | None = None,
) -> bytes:
    """The raw body, refusing oversize bodies before reading them whole. With a
    ``timeout_s`` a body that has not arrived by then is a 408 (the connection closes);
    with a ``budget`` the declared length (else each chunk) is taken from it first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > max_bytes:
            raise _too_large(int(declared), max_bytes)
        if budget is not None:
            budget.grow_to(int(declared))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(size, max_bytes)
                if budget is not None:
                    budget.grow_to(size)
                chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequest("The client closed the connection while sending the body.") from exc
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout_s:g} s "
            f"({size} bytes received); send it faster or send less.",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object (small admin bodies: parsed on the loop)."""
    return parse_json_object(await read_body(request, max_bytes))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (a 400 for anything else, deep nesting included)."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "The body must be a JSON object."
        ) from exc
    except RecursionError:
        raise InvalidRequest(
            "The JSON body of your request is nested too deeply to parse."
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(data).__name__}.")
    return data


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is {size} bytes, over this server's limit of {limit} bytes.",
        code="request_too_large",
    )
