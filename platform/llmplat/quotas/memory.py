"""In-process quota store: exact for one gateway replica (the default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llmplat.quotas.model import (
    Admission,
    LimitState,
    QuotaExceeded,
    QuotaStore,
    Reservation,
    Scope,
    ScopeUsage,
    tightest,
    windows,
)


@dataclass
class _Counters:
    minute: int = -1
    requests: int = 0
    minute_tokens: int = 0
    day: int = -1
    day_tokens: int = 0
    in_flight: dict[str, float] = field(default_factory=dict)
    """reservation id → lease expiry."""

    def roll(self, minute: int, day: int, now: float) -> None:
        if minute != self.minute:
            self.minute, self.requests, self.minute_tokens = minute, 0, 0
        if day != self.day:
            self.day, self.day_tokens = day, 0
        for rid in [r for r, exp in self.in_flight.items() if exp <= now]:
            del self.in_flight[rid]


class MemoryQuotaStore(QuotaStore):
    """Counters in a dict. Every method runs without awaiting, so each is atomic."""

    def __init__(self) -> None:
        self._scopes: dict[str, _Counters] = {}

    def _counters(self, name: str, minute: int, day: int, now: float) -> _Counters:
        c = self._scopes.setdefault(name, _Counters())
        c.roll(minute, day, now)
        return c

    async def reserve(
        self, scopes: Sequence[Scope], tokens: int, now: float, lease_s: float, reservation_id: str
    ) -> Admission:
        minute, day, minute_left, day_left = windows(now)
        counters = [self._counters(s.name, minute, day, now) for s in scopes]
        req_states: list[LimitState] = []
        tok_states: list[LimitState] = []
        for scope, c in zip(scopes, counters, strict=True):
            lim = scope.limits
            if lim.requests_per_minute is not None:
                req_states.append(
                    LimitState(
                        lim.requests_per_minute, lim.requests_per_minute - c.requests, minute_left
                    )
                )
            if lim.tokens_per_minute is not None:
                tok_states.append(
                    LimitState(
                        lim.tokens_per_minute, lim.tokens_per_minute - c.minute_tokens, minute_left
                    )
                )
        for scope, c in zip(scopes, counters, strict=True):
            self._check(scope, c, tokens, minute_left, day_left, req_states, tok_states)
        for c in counters:
            c.requests += 1
            c.minute_tokens += tokens
            c.day_tokens += tokens
            c.in_flight[reservation_id] = now + lease_s
        res = Reservation(reservation_id, tuple(s.name for s in scopes), tokens, minute, day)
        return Admission(
            res,
            tightest([LimitState(s.limit, s.remaining - 1, s.reset_s) for s in req_states]),
            tightest([LimitState(s.limit, s.remaining - tokens, s.reset_s) for s in tok_states]),
        )

    @staticmethod
    def _check(
        scope: Scope,
        c: _Counters,
        tokens: int,
        minute_left: float,
        day_left: float,
        req_states: list[LimitState],
        tok_states: list[LimitState],
    ) -> None:
        lim = scope.limits
        checks = (
            ("requests_per_minute", lim.requests_per_minute, c.requests, 1, minute_left),
            ("tokens_per_minute", lim.tokens_per_minute, c.minute_tokens, tokens, minute_left),
            ("tokens_per_day", lim.tokens_per_day, c.day_tokens, tokens, day_left),
            ("concurrent_requests", lim.concurrent_requests, len(c.in_flight), 1, 1.0),
        )
        for reason, limit, used, want, retry in checks:
            if limit is not None and used + want > limit:
                raise QuotaExceeded(
                    scope.name,
                    reason,  # type: ignore[arg-type]
                    limit,
                    used,
                    want,
                    retry,
                    tightest(req_states),
                    tightest(tok_states),
                )

    async def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        delta = max(actual_tokens, 0) - reservation.tokens
        for name in reservation.scopes:
            c = self._scopes.get(name)
            if c is None:
                continue
            c.in_flight.pop(reservation.id, None)
            if c.minute == reservation.minute:
                c.minute_tokens = max(c.minute_tokens + delta, 0)
            if c.day == reservation.day:
                c.day_tokens = max(c.day_tokens + delta, 0)

    async def renew(self, reservation: Reservation, now: float, lease_s: float) -> None:
        for name in reservation.scopes:
            c = self._scopes.get(name)
            if c is not None and reservation.id in c.in_flight:
                c.in_flight[reservation.id] = now + lease_s

    async def usage(self, scope: Scope, now: float) -> ScopeUsage:
        minute, day, minute_left, day_left = windows(now)
        c = self._counters(scope.name, minute, day, now)
        return ScopeUsage(
            scope.name,
            scope.limits,
            c.requests,
            c.minute_tokens,
            c.day_tokens,
            len(c.in_flight),
            minute_left,
            day_left,
        )
