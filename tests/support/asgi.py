"""Drive an ASGI app the way a server does, with a client that misbehaves on cue.

For fault injection: the client can fail the response start, disconnect after some body
chunks, or stop reading (a send that never returns); the caller can cancel the request's
task at any point, as Ray Serve does when a client goes away.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


class ClientGone(OSError):
    """What a server's send raises once the peer has closed the connection."""


@dataclass
class Client:
    """Scripted client behaviour. ``None`` disables each fault."""

    fail_start: bool = False
    disconnect_after_chunks: int | None = None
    block_at_chunk: int | None = None
    sent: list[Message] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    blocked: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def body_chunks(self) -> int:
        return sum(1 for m in self.sent if m["type"] == "http.response.body" and m.get("body"))

    @property
    def status(self) -> int | None:
        start = next((m for m in self.sent if m["type"] == "http.response.start"), None)
        return None if start is None else start["status"]

    @property
    def text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.sent[1:]).decode()


def http_scope(path: str, key: str, request_id: str | None = None) -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call(app: ASGIApp, path: str, body: dict[str, Any], key: str, client: Client) -> None:
    """One request through ``app``; returns when the app returns (or raises)."""
    payload = json.dumps(body).encode()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await client.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if client.disconnected.is_set():
            raise ClientGone("client disconnected")
        if message["type"] == "http.response.start" and client.fail_start:
            client.disconnected.set()
            raise ClientGone("client disconnected before the response started")
        if message["type"] == "http.response.body" and message.get("body"):
            if client.block_at_chunk is not None and client.body_chunks >= client.block_at_chunk:
                client.blocked.set()
                await asyncio.Event().wait()  # the client stopped reading
        client.sent.append(message)
        after = client.disconnect_after_chunks
        if after is not None and client.body_chunks >= after:
            client.disconnected.set()

    await app(http_scope(path, key), receive, send)
