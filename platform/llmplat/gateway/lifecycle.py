"""One generation request from admission to its single finaliser.

A :class:`RequestLifecycle` owns, for one request, the quota reservation (and its lease
renewal), the engine call, the usage learned from the engine, the in-flight gauge and the
record that becomes the audit line and the metrics. The handler (and the stream relay) tell
it what happened, one method per event; nothing else writes its fields or the record's.
It ends exactly once (``conclude`` from ``gateway.middleware``, or ``shut_down``): the
engine call is cancelled unless it completed, the reservation is settled to what the engine
did, the slot is released, and one record is written with the real outcome (200 only once
the last byte was handed to the server, 499 when the client went away, 502/504 for engine
failures and timeouts).

Billing rule: a request the gateway or the engine refused (4xx before any work) costs
nothing; every request the engine accepted costs its prompt plus the completion tokens the
engine produced for it, summed over every choice, whatever its outcome (success, client
gone, engine failure, timeout). When the engine never said how long the prompt was, the
prompt counted at admission is billed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmplat.gateway.backends import GuardedCall, UpstreamCall
from llmplat.gateway.usage import Usage, UsageTracker
from llmplat.observability.record import RequestRecord

if TYPE_CHECKING:
    from llmplat.auth.base import Principal
    from llmplat.errors import APIError
    from llmplat.gateway.admission import Admitted
    from llmplat.gateway.state import GatewayState

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499


@dataclass
class ChunkTimes:
    """When the stream relay handed the first and the last chunk of generated output to the
    client (clock time). The relay writes them; the lifecycle reads them at the end."""

    first: float | None = None
    last: float | None = None


@dataclass
class _Stream:
    """What the relay reported; taken into the record when the request concludes."""

    times: ChunkTimes = field(default_factory=ChunkTimes)
    status: int | None = None
    error: str | None = None
    error_code: str | None = None


class RequestLifecycle:
    """Admission, engine call, billing and the one record of a generation request."""

    def __init__(
        self, state: GatewayState, endpoint: str, request_id: str, client: str | None
    ) -> None:
        self._state = state
        self.record = RequestRecord(
            endpoint=endpoint, started=state.clock(), request_id=request_id, client=client
        )
        self.deadline = self.record.started + state.config.gateway.request_timeout_s
        self.principal: Principal | None = None
        self.admitted: Admitted | None = None
        self.call: GuardedCall | None = None
        self.tracker = UsageTracker()
        self.prompt_tokens = 0
        """The prompt as counted at admission (billed when the engine never said)."""
        self.engine_refused = False
        self.status: int | None = None
        """The status the response carries (from the events that say how it ended)."""
        self.timed_out = False
        self.finished = False
        self.settlement: asyncio.Future[None] | None = None
        self._stream: _Stream | None = None
        self._renewal: asyncio.TimerHandle | None = None
        state.live.add(self)

    # -- before the engine ---------------------------------------------------------------

    def identified(self, principal: Principal) -> None:
        """The caller's key was accepted."""
        self.principal = principal
        self.record.team, self.record.key_id = principal.team, principal.key_id

    def prepared(self, model_id: str, stream: bool, prompt_tokens: int, choices: int) -> None:
        """The body became an engine request for ``model_id``."""
        self.record.model, self.record.stream = model_id, stream
        self.prompt_tokens = prompt_tokens
        self.tracker.n = choices

    async def admit(self, tokens: int) -> Admitted:
        """Reserve quota for the identified caller; if the request is cancelled meanwhile, a
        reservation that is still granted afterwards is released at once."""
        assert self.principal is not None, "admit() before identified()"
        state = self._state
        # Tracked in ``pending``: a shutdown (or a test) draining settlements also waits
        # for an abandoned admission and the release it triggers.
        task = state.spawn(state.quotas.admit(self.principal, tokens))
        try:
            self.admitted = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_late)
            raise
        self._schedule_renewal()
        state.metrics.admitted(self.principal.team, state.clock() - self.record.started)
        return self.admitted

    def refused(self, err: APIError) -> None:
        """The gateway (or the engine, before any work) answered ``err``."""
        reason = getattr(err, "quota_reason", None)
        if reason is not None and self.principal is not None:
            self._state.metrics.rejected(self.principal.team, reason)
        self.record.error_code = err.code or err.type
        self.status, self.record.error = err.status, err.message

    def failed(self, exc: Exception) -> None:
        """An unexpected error ends the request (a 500)."""
        self.record.error_code = "internal_error"
        self.status, self.record.error = 500, f"{type(exc).__name__}: {exc}"

    def _release_late(self, task: asyncio.Future[Admitted]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self._state.spawn(self._state.quotas.settle(task.result(), 0))

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

    # -- the engine call -----------------------------------------------------------------

    def engine_called(self, call: UpstreamCall) -> GuardedCall:
        """The engine call is made: from now on the engine may be working for us."""
        record = self.record
        self._state.metrics.started(record.team or "", record.model or "")
        record.in_flight = True
        self.call = GuardedCall(call)
        return self.call

    def engine_called_again(self, call: UpstreamCall) -> GuardedCall:
        """The engine call is made again (its replica went away before answering)."""
        self.engine_dropped()
        self.call = GuardedCall(call)
        return self.call

    def engine_done(self, *, refused: bool = False) -> None:
        """The engine is finished with the call (``refused``: it did no billable work)."""
        if self.call is not None:
            self.call.completed = True
        self.engine_refused = self.engine_refused or refused

    def engine_dropped(self, *, refused: bool = False) -> None:
        """Nobody will read the engine call: cancel it now (``refused``: the engine never
        saw the request, e.g. a model still starting from zero)."""
        if self.call is not None:
            self.call.cancel()
        self.engine_refused = self.engine_refused or refused

    async def answered(self, usage: Usage | None) -> None:
        """A whole (non-streaming) answer is in hand: settle now, so counters are exact
        before the answer leaves."""
        self.tracker.final = usage
        await self.settle()
        self.status = 200

    # -- the stream (then reported by the relay: a ``StreamSink``) -----------------------

    def streaming(self) -> ChunkTimes:
        """The answer is a stream; the relay keeps the returned chunk times."""
        self._stream = _Stream()
        return self._stream.times

    def stream_ended(self, error: str | None) -> None:
        stream = self._reported()
        stream.error = error
        stream.status, stream.error_code = (200, None) if error is None else (502, "engine_error")

    def stream_failed(self, error: str, *, timeout: bool) -> None:
        stream = self._reported()
        stream.error, stream.status = error, 504 if timeout else 502
        stream.error_code = "timeout" if timeout else "engine_error"
        self.engine_dropped()

    def stream_cut(self, error: str) -> None:
        stream = self._reported()
        stream.error = error
        self.engine_dropped()

    def _reported(self) -> _Stream:
        if self._stream is None:  # reported by a relay the handler did not start
            self._stream = _Stream()
        return self._stream

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

    def hard_timeout(self) -> None:
        """The middleware stopped the request at its hard timeout."""
        self.timed_out = True
        log.warning("request %s stopped at the hard timeout", self.record.request_id)

    def conclude(self, delivered: bool, sent_bytes: int) -> None:
        """Called by the middleware when the ASGI call is over, whatever ended it."""
        self.record.response_bytes = sent_bytes
        if self.finished:
            return
        usage = self.billed()
        if self._stream is not None:
            self._take_stream(self._stream, usage)
        status = self.status
        if status is None or (not delivered and status < 400):
            # Nothing sent in full, and nothing failed on our side: the client left (or the
            # task was cancelled because it did), unless the hard timeout stopped it.
            status = 504 if self.timed_out else CLIENT_CLOSED
            if self.timed_out:
                self.record.error_code = "timeout"
        self._finish(status, usage)

    def shut_down(self) -> None:
        """The replica is stopping while the request runs: end it now (a 503)."""
        self.record.error_code = "shutdown"
        error = "the gateway shut down while the request was running"
        self._finish(503, self.billed(), error)

    def _take_stream(self, stream: _Stream, usage: Usage | None) -> None:
        record, times = self.record, stream.times
        if times.first is not None:
            record.first_token_s = times.first - record.started
            generated = (usage or self.tracker.delivered(0)).completion_tokens
            if generated > 1 and times.last is not None:
                record.inter_token_s = (times.last - times.first) / (generated - 1)
        if stream.status is not None:
            self.status = stream.status
            if stream.status >= 400:
                record.error_code, record.error = stream.error_code, stream.error
        elif stream.error is not None:
            record.error = stream.error

    def _finish(self, status: int, usage: Usage | None, error: str | None = None) -> None:
        """Idempotent and synchronous, so cancellation cannot interrupt it halfway: cancel
        the engine call unless it completed, settle ``usage`` (as a task of its own),
        release the in-flight slot, record metrics and the audit line."""
        if self.finished:
            return
        self.finished = True
        state, record = self._state, self.record
        state.live.discard(self)
        if self._renewal is not None:
            self._renewal.cancel()
        if self.call is not None:
            self.call.cancel()
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
