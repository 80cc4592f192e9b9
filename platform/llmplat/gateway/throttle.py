"""Failed authentications are throttled per client address.

Past ``limit`` failed attempts (bad or unknown API key, wrong admin token) from one address
within ``window_s``, that address's further *failed* attempts are answered 429 with a
``Retry-After`` instead of 401/403 (each still gets its audit line). A valid credential is
always served: behind an Ingress every client shares the controller's address, and one
misconfigured CI job must not lock a whole company out. Per replica, in memory, bounded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from llmplat.gateway.errors import APIError, RateLimited

MAX_ADDRESSES = 10_000
"""Addresses tracked at once; the least recently failing one is forgotten first."""


class FailedAuthThrottle:
    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def failed(self, address: str | None, error: APIError) -> APIError:
        """Record a failed attempt; the error to answer (429 once over the limit)."""
        if self.limit <= 0:
            return error
        key = address or "unknown"
        now = self._clock()
        times = self._failures.pop(key, None) or deque(maxlen=self.limit + 1)
        while times and now - times[0] >= self.window_s:
            times.popleft()
        times.append(now)
        self._failures[key] = times  # most recent last
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
        if len(times) <= self.limit:
            return error
        retry_after = max(1, math.ceil(self.window_s - (now - times[0])))
        return RateLimited(
            f"Too many failed authentications from this address ({self.limit} per "
            f"{self.window_s:.0f} s); check the API key and retry after {retry_after} s.",
            code="too_many_failed_authentications",
            headers={"retry-after": str(retry_after)},
        )
