"""What an HTTP request says before any route logic: its peer, its key's principal, its
body (read with a size limit) as a JSON object. The generation body becomes an engine
request in ``gateway.prepare``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request

from llmplat.auth.base import Principal
from llmplat.gateway.errors import AuthenticationFailed, InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from llmplat.gateway.state import GatewayState


def client_address(request: Request) -> str | None:
    """The peer's address (behind an Ingress: the controller's)."""
    return request.client.host if request.client else None


async def authenticate(state: GatewayState, request: Request) -> Principal:
    """The principal of the request's key; failures are counted per client address (429
    past the limit)."""
    try:
        return await state.authenticator.authenticate(request.headers.get("authorization"))
    except AuthenticationFailed as exc:
        raise state.auth_throttle.failed(client_address(request), exc) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing oversize bodies before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(size, max_bytes)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequest("The client closed the connection while sending the body.") from exc
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
