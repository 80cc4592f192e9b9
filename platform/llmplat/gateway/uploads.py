"""The replica-wide bound on request-body bytes held for requests not yet admitted."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llmplat.errors import ServiceUnavailable


class BodyBudget:
    """The request-body bytes one replica holds for requests not yet admitted, bounded: a
    caller that opens many uploads and stalls them makes the next ones wait for a 503, not
    the replica grow until every tenant's streams go down with it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[BodyBytes]:
        """Bytes taken through the yielded :class:`BodyBytes` are given back on exit."""
        taken = BodyBytes(self)
        try:
            yield taken
        finally:
            self.held -= taken.size

    def take(self, n: int) -> None:
        if self.held + n > self.max_bytes:
            raise ServiceUnavailable(
                "This gateway replica is receiving too many request bodies at once; retry shortly.",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self.held += n


class BodyBytes:
    """One request's share of the :class:`BodyBudget`."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        if size > self.size:
            self._budget.take(size - self.size)
            self.size = size
