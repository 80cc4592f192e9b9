"""Quota reservations: the contract every quota store implements identically.

Windows are fixed and aligned to UTC: requests and tokens per minute count in the minute
``floor(now / 60)``, tokens per day in the UTC day ``floor(now / 86400)``. Admission
reserves, for every scope of the caller (its team, and its key when the key has limits of
its own), one request, the request's worst-case tokens and one in-flight slot, all or
nothing. Settlement replaces the reserved tokens with the real usage in the windows the
reservation was made in and frees the slot. In-flight slots are leases: a gateway that dies
without settling frees them when the lease ends.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llmplat.config.teams import Limits

MINUTE_S = 60
DAY_S = 86_400

Reason = Literal[
    "requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests"
]


@dataclass(frozen=True)
class Scope:
    """Who a counter belongs to (``team:<name>`` or ``key:<id>``) and its limits."""

    name: str
    limits: Limits


@dataclass(frozen=True)
class Reservation:
    id: str
    scopes: tuple[str, ...]
    tokens: int
    minute: int
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
    """Current counters of one scope (what ``/v1/usage`` and ``llmplat status`` show)."""

    scope: str
    limits: Limits
    requests_this_minute: int
    tokens_this_minute: int
    tokens_today: int
    in_flight: int
    minute_reset_s: float
    day_reset_s: float


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


def windows(now: float) -> tuple[int, int, float, float]:
    """(minute index, day index, seconds to the next minute, seconds to the next day)."""
    minute = math.floor(now / MINUTE_S)
    day = math.floor(now / DAY_S)
    return minute, day, (minute + 1) * MINUTE_S - now, (day + 1) * DAY_S - now


def tightest(states: Sequence[LimitState]) -> LimitState | None:
    return min(states, key=lambda s: (s.remaining, s.limit)) if states else None


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
