"""In-process quota store: exact for one gateway replica (the default).

The sliding-window log of each scope (see ``quotas.model``) is a dict of entries plus a
heap ordered by time for pruning; the day's tokens and the in-flight leases as before.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmplat.quotas.model import (
    WINDOW_S,
    Admission,
    Counts,
    QuotaStore,
    Reservation,
    Scope,
    ScopeUsage,
    admitted,
    day_window,
    exceeded,
    first_refusal,
    usage_of,
    window_reset,
)


@dataclass
class _Entry:
    at: float
    tokens: int


@dataclass
class _Counters:
    log: dict[str, _Entry] = field(default_factory=dict)
    """reservation id → its entry in the sliding window."""
    by_time: list[tuple[float, str]] = field(default_factory=list)
    """Heap of (time, reservation id) of the log's entries."""
    tokens: int = 0
    """Sum of the log's tokens."""
    newest: float | None = None
    day: int = -1
    day_tokens: int = 0
    in_flight: dict[str, float] = field(default_factory=dict)
    """reservation id → lease expiry."""

    def roll(self, now: float, day: int) -> None:
        cutoff = now - WINDOW_S
        while self.by_time and self.by_time[0][0] <= cutoff:
            _, rid = heapq.heappop(self.by_time)
            entry = self.log.pop(rid, None)
            if entry is not None:
                self.tokens -= entry.tokens
        if not self.log:
            self.newest = None
        if day != self.day:
            self.day, self.day_tokens = day, 0
        for rid in [r for r, exp in self.in_flight.items() if exp <= now]:
            del self.in_flight[rid]

    def counts(self) -> Counts:
        return Counts(len(self.log), self.tokens, self.day_tokens, len(self.in_flight), self.newest)

    def add(self, rid: str, now: float, tokens: int, lease_expiry: float) -> None:
        self.log[rid] = _Entry(now, tokens)
        heapq.heappush(self.by_time, (now, rid))
        self.tokens += tokens
        self.newest = now if self.newest is None else max(self.newest, now)
        self.day_tokens += tokens
        self.in_flight[rid] = lease_expiry

    def window_retry(self, reason: int, limit: int, want: int, now: float) -> float:
        """Seconds until enough entries slide out for ``want`` more of ``reason`` (0:
        requests, 1: tokens) to fit under ``limit``; when it never fits, until the window is
        empty."""
        left = len(self.log) if reason == 0 else self.tokens
        for entry in sorted(self.log.values(), key=lambda e: e.at):
            left -= 1 if reason == 0 else entry.tokens
            if left + want <= limit:
                return WINDOW_S - (now - entry.at)
        return window_reset(now, self.newest)


class MemoryQuotaStore(QuotaStore):
    """Counters in a dict. Every method runs without awaiting, so each is atomic."""

    def __init__(self) -> None:
        self._scopes: dict[str, _Counters] = {}

    def _counters(self, name: str, now: float) -> _Counters:
        c = self._scopes.setdefault(name, _Counters())
        c.roll(now, day_window(now)[0])
        return c

    async def reserve(
        self, scopes: Sequence[Scope], tokens: int, now: float, lease_s: float, reservation_id: str
    ) -> Admission:
        counters = [self._counters(s.name, now) for s in scopes]
        counts = [c.counts() for c in counters]
        refusal = first_refusal(scopes, counts, tokens)
        if refusal is not None:
            i, j = refusal
            retry = 0.0
            if j in (0, 1):
                limit = scopes[i].limit_values()[j]
                assert limit is not None
                retry = counters[i].window_retry(j, limit, 1 if j == 0 else tokens, now)
            raise exceeded(scopes, counts, refusal, tokens, now, retry)
        for c in counters:
            c.add(reservation_id, now, tokens, now + lease_s)
        res = Reservation(
            reservation_id, tuple(s.name for s in scopes), tokens, now, day_window(now)[0]
        )
        return admitted(res, scopes, counts, now)

    async def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        actual = max(actual_tokens, 0)
        for name in reservation.scopes:
            c = self._scopes.get(name)
            if c is None:
                continue
            c.in_flight.pop(reservation.id, None)
            entry = c.log.get(reservation.id)
            if entry is not None:
                c.tokens += actual - entry.tokens
                entry.tokens = actual
            if c.day == reservation.day:
                c.day_tokens = max(c.day_tokens + actual - reservation.tokens, 0)

    async def renew(self, reservation: Reservation, now: float, lease_s: float) -> None:
        for name in reservation.scopes:
            c = self._scopes.get(name)
            if c is not None and reservation.id in c.in_flight:
                c.in_flight[reservation.id] = now + lease_s

    async def usage(self, scope: Scope, now: float) -> ScopeUsage:
        return usage_of(scope, self._counters(scope.name, now).counts(), now)
