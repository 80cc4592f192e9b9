"""One generation request from admission to its single finaliser.

A :class:`RequestLifecycle` owns, for one request, the quota reservation (and its lease
renewal), the engine call, the usage learned from the engine, the in-flight gauge and the
record that becomes the audit line and the metrics. :class:`LifecycleMiddleware` is the
outermost ASGI layer around the app: whatever ends a request (its last byte sent, an error,
the client leaving before the response starts or mid-stream, a send that never returns,
task cancellation by Ray Serve, the hard timeout, shutdown) runs its ``finally``, which
concludes the lifecycle exactly once: the engine call is cancelled when nobody will read
it, the reservation is settled to what the engine did, the slot is released, and one record
is written with the real outcome (200 only once the last byte was handed to the server,
499 when the client went away, 502/504 for engine failures and timeouts).

Billing rule: a request the gateway or the engine refused (4xx before any work) costs
nothing; every request the engine accepted costs its prompt plus the completion tokens the
engine produced for it, summed over every choice, whatever its outcome (success, client
gone, engine failure, timeout). When the engine never said how long the prompt was, the
prompt counted at admission is billed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmplat.gateway.usage import Usage, UsageTracker

if TYPE_CHECKING:
    from llmplat.auth.base import Principal
    from llmplat.gateway.backends import UpstreamCall
    from llmplat.gateway.state import GatewayState, RequestRecord
    from llmplat.gateway.streaming import StreamOutcome
    from llmplat.quotas.service import Admitted

log = logging.getLogger(__name__)

SCOPE_KEY = "llmplat.lifecycle"
"""Where a generation route leaves its lifecycle in the ASGI scope for the middleware."""

CLIENT_CLOSED = 499
HARD_TIMEOUT_GRACE_S = 5.0
"""The middleware's hard stop comes this long after the request timeout: the relay ends a
stream at the timeout itself; the hard stop catches a send that never returns."""


class GuardedCall:
    """An engine call whose cancellation is idempotent and skipped once it completed."""

    def __init__(self, call: UpstreamCall) -> None:
        self._call = call
        self.completed = False
        self.cancelled = False

    def __aiter__(self) -> Any:
        return self._call.__aiter__()

    def cancel(self) -> None:
        if self.completed or self.cancelled:
            return
        self.cancelled = True
        try:
            self._call.cancel()
        except Exception as exc:  # cancelling must never break finalisation
            log.warning("cancelling an engine call failed: %s: %s", type(exc).__name__, exc)


class RequestLifecycle:
    """Admission, engine call, billing and the one record of a generation request."""

    def __init__(self, state: GatewayState, record: RequestRecord) -> None:
        self._state = state
        self.record = record
        self.deadline = record.started + state.config.gateway.request_timeout_s
        self.principal: Principal | None = None
        self.admitted: Admitted | None = None
        self.call: GuardedCall | None = None
        self.tracker = UsageTracker()
        self.prompt_tokens = 0
        """The prompt as counted at admission (billed when the engine never said)."""
        self.engine_refused = False
        self.status: int | None = None
        """The status the response carries (set by the route or the stream relay)."""
        self.stream_outcome: StreamOutcome | None = None
        self.timed_out = False
        self.finished = False
        self.settlement: asyncio.Future[None] | None = None
        self._renewal: asyncio.TimerHandle | None = None
        state.live.add(self)

    # -- admission and forwarding --------------------------------------------------------

    async def admit(self, principal: Principal, tokens: int) -> Admitted:
        """Reserve quota; if the request is cancelled meanwhile, a reservation that is still
        granted afterwards is released at once."""
        self.principal = principal
        # Tracked in ``pending``: a shutdown (or a test) draining settlements also waits
        # for an abandoned admission and the release it triggers.
        task = self._state.spawn(self._state.quotas.admit(principal, tokens))
        try:
            self.admitted = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_late)
            raise
        self._schedule_renewal()
        return self.admitted

    def _release_late(self, task: asyncio.Future[Admitted]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self._state.spawn(self._state.quotas.settle(task.result(), 0))

    def forward(self, call: UpstreamCall) -> GuardedCall:
        """The engine call is made: from now on the engine may be working for us."""
        self.call = GuardedCall(call)
        record = self.record
        self._state.metrics.started(record.team or "", record.model or "")
        record.in_flight = True
        return self.call

    def reforward(self, call: UpstreamCall) -> GuardedCall:
        """The engine call is made again (its replica went away before answering)."""
        if self.call is not None:
            self.call.cancel()
        self.call = GuardedCall(call)
        return self.call

    def _schedule_renewal(self) -> None:
        lease_s = self._state.quotas.lease_s
        if self.admitted is None or self.admitted.admission is None or lease_s == float("inf"):
            return
        loop = asyncio.get_running_loop()
        self._renewal = loop.call_later(lease_s / 2, self._renew)

    def _renew(self) -> None:
        """A stream outliving half its lease extends it (the slot stays held while alive)."""
        if self.finished or self.admitted is None:
            return
        self._state.spawn(self._state.quotas.renew(self.admitted))
        self._schedule_renewal()

    # -- billing -------------------------------------------------------------------------

    def billed(self) -> Usage | None:
        """What this request costs now (None: nothing, it never reached the engine)."""
        if self.call is None or self.engine_refused:
            return None
        return self.tracker.delivered(self.prompt_tokens)

    async def settle(self) -> None:
        """Settle now (the engine is done with the request, e.g. a non-streaming answer in
        hand), so counters are exact before the response is even sent."""
        if self.admitted is not None and self.settlement is None:
            usage = self.billed()
            self.settlement = self._state.spawn(
                self._state.quotas.settle(self.admitted, usage.total_tokens if usage else 0)
            )
        if self.settlement is not None:
            await asyncio.shield(self.settlement)

    # -- the one end ---------------------------------------------------------------------

    def conclude(self, delivered: bool) -> None:
        """Called by the middleware when the ASGI call is over, whatever ended it."""
        if self.finished:
            return
        if self.stream_outcome is not None:
            self._take_stream_outcome(self.stream_outcome)
        status = self.status
        if status is None or (not delivered and status < 400):
            # Nothing sent in full, and nothing failed on our side: the client left (or the
            # task was cancelled because it did), unless the hard timeout stopped it.
            status = 504 if self.timed_out else CLIENT_CLOSED
            if self.timed_out:
                self.record.error_code = "timeout"
        self.finish(status)

    def _take_stream_outcome(self, outcome: StreamOutcome) -> None:
        record = self.record
        if outcome.first_chunk_at is not None:
            record.first_token_s = outcome.first_chunk_at - record.started
            generated = self.tracker.delivered(0).completion_tokens
            if generated > 1 and outcome.last_chunk_at is not None:
                span = outcome.last_chunk_at - outcome.first_chunk_at
                record.inter_token_s = span / (generated - 1)
        if outcome.status is not None:
            self.status = outcome.status
            if outcome.status >= 400:
                record.error_code, record.error = outcome.error_code, outcome.error
        elif outcome.error is not None:
            record.error = outcome.error

    def finish(self, status: int, error: str | None = None) -> None:
        """Idempotent and synchronous, so cancellation cannot interrupt it halfway: cancel
        the engine call unless it completed, settle (as a task of its own), release the
        in-flight slot, record metrics and the audit line."""
        if self.finished:
            return
        self.finished = True
        state, record = self._state, self.record
        state.live.discard(self)
        if self._renewal is not None:
            self._renewal.cancel()
        if self.call is not None:
            self.call.cancel()
        usage = self.billed()
        record.usage = usage
        record.status = status
        if error is not None:
            record.error = error
        record.ended = state.clock()
        if self.admitted is not None and self.settlement is None:
            tokens = usage.total_tokens if usage else 0
            self.settlement = state.spawn(state.quotas.settle(self.admitted, tokens))
        if record.in_flight:
            state.metrics.ended(record.team or "", record.model or "")
        state.metrics.record(record)
        try:
            state.on_finish(record)
        except Exception:  # recording must never break serving
            log.exception("on_finish hook failed")


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
            life = scope.get(SCOPE_KEY)
            if life is None:
                raise
            life.timed_out = True
            log.warning("request %s stopped at the hard timeout", life.record.request_id)
        finally:
            life = scope.get(SCOPE_KEY)
            if life is not None:
                life.record.response_bytes = sent_bytes
                life.conclude(delivered)
