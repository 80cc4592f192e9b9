"""The outermost ASGI layer: whatever ends a generation request concludes its lifecycle.

Its ``finally`` runs however the request ends (its last byte sent, an error, the client
leaving before the response starts or mid-stream, a send that never returns, task
cancellation by Ray Serve, the hard timeout, shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmplat.gateway.lifecycle import RequestLifecycle

SCOPE_KEY = "llmplat.lifecycle"
"""Where a generation route leaves its lifecycle in the ASGI scope for the middleware."""

HARD_TIMEOUT_GRACE_S = 5.0
"""The hard stop comes this long after the request timeout: the relay ends a stream at the
timeout itself; the hard stop catches a send that never returns."""


class LifecycleMiddleware:
    """Outermost ASGI layer: concludes the request's lifecycle in its ``finally``."""

    def __init__(self, app: ASGIApp, request_timeout_s: Callable[[], float]) -> None:
        self.app = app
        self.request_timeout_s = request_timeout_s
        """Read per request: the gateway's current setting."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        delivered = False
        sent_bytes = 0

        async def tracked_send(message: Message) -> None:
            nonlocal delivered, sent_bytes
            await send(message)
            if message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
                if not message.get("more_body"):
                    delivered = True

        try:
            async with asyncio.timeout(self.request_timeout_s() + HARD_TIMEOUT_GRACE_S):
                await self.app(scope, receive, tracked_send)
        except TimeoutError:
            life: RequestLifecycle | None = scope.get(SCOPE_KEY)
            if life is None:
                raise
            life.hard_timeout()
        finally:
            life = scope.get(SCOPE_KEY)
            if life is not None:
                life.conclude(delivered, sent_bytes)
