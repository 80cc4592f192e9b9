"""Quota reservations: the contract every quota store implements identically.

**Per-minute limits slide.** Requests per minute and tokens per minute hold over *any*
60-second span, not per clock minute: each scope keeps a log of its reservations (time,
tokens) of the last ``WINDOW_S`` seconds, and a reservation at ``now`` is admitted only when
the entries after ``now - WINDOW_S`` plus this one stay within the limit. An entry stops
counting exactly ``WINDOW_S`` seconds after it was made, so no half-open 60 s span
``[s, s + 60)`` ever admits more than the limit (a fixed clock-aligned window admitted up
to twice its limit across a minute boundary).

Why a sliding log and not GCRA / a token bucket: settlement must stay exact. A request
reserves prompt + max_tokens and is later billed what it really used; with a log, the
refund is "set this reservation's entry to the real usage", exact for exactly as long as
the reservation still counts, and the log can tell when capacity frees (``Retry-After``).
A bucket only holds one number (a theoretical arrival time): a refund has to be credited
back as if it had never been taken, which overstates the room when the refunded tokens
would already have drained, and cannot say which span they belonged to. The log costs one
entry per admitted request per scope for 60 s: bounded by the request rate, pruned on
every call.

Tokens per day stay on the UTC day (``floor(now / 86400)``): a budget that resets at
midnight is what teams plan against. Admission reserves, for every scope of the caller
(its team, and its key when the key has limits of its own), one request, the request's
worst-case tokens and one in-flight slot, all or nothing. Settlement replaces the reserved
tokens with the real usage in the log entry (while it still counts) and in the reservation's
day, and frees the slot. In-flight slots are leases: a gateway that dies without settling
frees them when the lease ends.

What is reported: ``requests``/``tokens`` "this minute" are those of the last 60 s; a
limit's ``reset_s`` is when the scope's log is empty again (its newest entry slides out,
OpenAI's "resets to its initial state"); a refusal's ``retry_after_s`` is when enough
entries have slid out for the refused request to fit (assuming the outstanding
reservations are billed in full; a refund can only make it sooner).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llmplat.config.teams import Limits

WINDOW_S = 60.0
"""Length of the sliding window of the per-minute limits."""
DAY_S = 86_400

Reason = Literal[
    "requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests"
]
REASONS: tuple[Reason, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "concurrent_requests",
)


@dataclass(frozen=True)
class Scope:
    """Who a counter belongs to (``team:<name>`` or ``key:<id>``) and its limits."""

    name: str
    limits: Limits

    def limit_values(self) -> tuple[int | None, int | None, int | None, int | None]:
        """The four limits in ``REASONS`` order (None: unlimited)."""
        lim = self.limits
        return (
            lim.requests_per_minute,
            lim.tokens_per_minute,
            lim.tokens_per_day,
            lim.concurrent_requests,
        )


@dataclass(frozen=True)
class Reservation:
    id: str
    scopes: tuple[str, ...]
    tokens: int
    at: float
    """When it was reserved: its entry in each scope's log counts until ``at + WINDOW_S``."""
    day: int


@dataclass(frozen=True)
class LimitState:
    """One limit as the ``x-ratelimit-*`` headers report it."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Admission:
    reservation: Reservation
    requests: LimitState | None
    tokens: LimitState | None


@dataclass(frozen=True)
class ScopeUsage:
    """Current counters of one scope (what ``/v1/usage`` and ``llmplat status`` show).

    ``requests_this_minute`` / ``tokens_this_minute`` are those of the last ``WINDOW_S``
    seconds (the sliding window the per-minute limits hold over); ``minute_reset_s`` is
    when they are back to zero if nothing else is admitted (0 when they already are)."""

    scope: str
    limits: Limits
    requests_this_minute: int
    tokens_this_minute: int
    tokens_today: int
    in_flight: int
    minute_reset_s: float
    day_reset_s: float


@dataclass(frozen=True)
class Counts:
    """One scope's counters as a store read them, before any reservation of this call."""

    requests: int
    """Entries in the sliding window (requests admitted in the last ``WINDOW_S``)."""
    tokens: int
    """Tokens of those entries (reserved, or settled to the real usage)."""
    day_tokens: int
    in_flight: int
    newest: float | None
    """Time of the newest entry in the window (None: the window is empty)."""

    def used(self) -> tuple[int, int, int, int]:
        """The counters in ``REASONS`` order."""
        return self.requests, self.tokens, self.day_tokens, self.in_flight


class QuotaExceeded(Exception):
    """A limit would be exceeded; nothing was reserved."""

    def __init__(
        self,
        scope: str,
        reason: Reason,
        limit: int,
        used: int,
        requested: int,
        retry_after_s: float,
        requests: LimitState | None = None,
        tokens: LimitState | None = None,
    ) -> None:
        super().__init__(f"{scope}: {reason} limit {limit} reached")
        self.scope = scope
        self.reason = reason
        self.limit = limit
        self.used = used
        self.requested = requested
        self.retry_after_s = retry_after_s
        self.requests = requests
        self.tokens = tokens

    @property
    def never_fits(self) -> bool:
        """The request alone is larger than the limit: waiting will not help."""
        return self.reason != "concurrent_requests" and self.requested > self.limit


class QuotaStoreUnavailable(Exception):
    """The shared quota store cannot be reached."""


def day_window(now: float) -> tuple[int, float]:
    """(UTC day index, seconds to the next UTC midnight)."""
    day = math.floor(now / DAY_S)
    return day, (day + 1) * DAY_S - now


def window_reset(now: float, newest: float | None) -> float:
    """Seconds until a window whose newest entry was made at ``newest`` is empty."""
    return 0.0 if newest is None else WINDOW_S - (now - newest)


def tightest(states: Sequence[LimitState]) -> LimitState | None:
    return min(states, key=lambda s: (s.remaining, s.limit)) if states else None


def first_refusal(
    scopes: Sequence[Scope], counts: Sequence[Counts], tokens: int
) -> tuple[int, int] | None:
    """(scope index, ``REASONS`` index) of the first limit this reservation would exceed."""
    wants = (1, tokens, tokens, 1)
    for i, (scope, c) in enumerate(zip(scopes, counts, strict=True)):
        for j, (limit, used, want) in enumerate(
            zip(scope.limit_values(), c.used(), wants, strict=True)
        ):
            if limit is not None and used + want > limit:
                return i, j
    return None


def limit_states(
    scopes: Sequence[Scope], counts: Sequence[Counts], now: float, added: int | None = None
) -> tuple[LimitState | None, LimitState | None]:
    """The tightest per-minute (requests, tokens) states; ``added``: the tokens of a request
    just admitted at ``now`` (None: as read, before any admission)."""
    reqs: list[LimitState] = []
    toks: list[LimitState] = []
    for scope, c in zip(scopes, counts, strict=True):
        requests, tokens, newest = c.requests, c.tokens, c.newest
        if added is not None:
            requests, tokens = requests + 1, tokens + added
            newest = now if newest is None else max(newest, now)
        reset = window_reset(now, newest)
        rpm, tpm = scope.limits.requests_per_minute, scope.limits.tokens_per_minute
        if rpm is not None:
            reqs.append(LimitState(rpm, rpm - requests, reset))
        if tpm is not None:
            toks.append(LimitState(tpm, tpm - tokens, reset))
    return tightest(reqs), tightest(toks)


def exceeded(
    scopes: Sequence[Scope],
    counts: Sequence[Counts],
    refusal: tuple[int, int],
    tokens: int,
    now: float,
    window_retry_s: float,
) -> QuotaExceeded:
    """The refusal of ``first_refusal``; ``window_retry_s``: when enough of the sliding
    window frees (used for the per-minute reasons)."""
    i, j = refusal
    scope, c = scopes[i], counts[i]
    limit = scope.limit_values()[j]
    assert limit is not None
    retry = (window_retry_s, window_retry_s, day_window(now)[1], 1.0)[j]
    requests, token_state = limit_states(scopes, counts, now)
    return QuotaExceeded(
        scope.name,
        REASONS[j],
        limit,
        c.used()[j],
        (1, tokens, tokens, 1)[j],
        retry,
        requests,
        token_state,
    )


def admitted(
    reservation: Reservation, scopes: Sequence[Scope], counts: Sequence[Counts], now: float
) -> Admission:
    requests, tokens = limit_states(scopes, counts, now, added=reservation.tokens)
    return Admission(reservation, requests, tokens)


def usage_of(scope: Scope, c: Counts, now: float) -> ScopeUsage:
    return ScopeUsage(
        scope.name,
        scope.limits,
        c.requests,
        c.tokens,
        c.day_tokens,
        c.in_flight,
        window_reset(now, c.newest),
        day_window(now)[1],
    )


class QuotaStore(ABC):
    """Atomic reserve / settle over every scope of a request."""

    @abstractmethod
    async def reserve(
        self, scopes: Sequence[Scope], tokens: int, now: float, lease_s: float, reservation_id: str
    ) -> Admission:
        """Reserve one request, ``tokens`` tokens and an in-flight slot in every scope.

        Raises QuotaExceeded (nothing reserved) or QuotaStoreUnavailable.
        """

    @abstractmethod
    async def settle(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        """Replace the reserved tokens with ``actual_tokens`` and free the in-flight slot."""

    @abstractmethod
    async def renew(self, reservation: Reservation, now: float, lease_s: float) -> None:
        """Extend the in-flight lease of a live reservation to ``now + lease_s`` (a request
        that outlives its lease keeps its slot); a settled reservation stays settled."""

    @abstractmethod
    async def usage(self, scope: Scope, now: float) -> ScopeUsage: ...

    async def ping(self) -> None:  # noqa: B027 - optional hook, nothing to check in process
        """Raise QuotaStoreUnavailable when the store cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
