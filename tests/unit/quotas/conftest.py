"""Quota store fixtures: one real redis-server per session, and both stores per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.quotas.model import Admission, QuotaStore, Reservation, Scope, ScopeUsage
from llmplat.quotas.redis_store import RedisQuotaStore
from support.redis_server import RedisServer, redis_server

DAY0 = 20_000 * 86_400
"""A UTC midnight (2024-10-04T00:00:00Z): tests drive the clock from here."""
T0 = DAY0 + 10 * 3_600 + 5.25
"""10:00:05.25 UTC on DAY0: 54.75 s left in the minute."""
STORE_KINDS = ("memory", "redis")


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One redis-server for the whole session (fails when redis-server is not installed)."""
    with redis_server() as server:
        yield server


def unique_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


async def make_store(kind: str, server: RedisServer | None) -> QuotaStore:
    if kind == "memory":
        return MemoryQuotaStore()
    assert server is not None
    return await RedisQuotaStore.connect(
        server.url, key_prefix=unique_prefix(), socket_timeout_s=10.0
    )


class Tracked:
    """A store plus every reservation not settled yet, so teardown can settle them all."""

    def __init__(self, store: QuotaStore) -> None:
        self.store = store
        self.outstanding: dict[str, Reservation] = {}
        self.scopes: dict[str, Scope] = {}
        self.latest = T0
        self._n = 0

    async def reserve(
        self,
        scopes: Sequence[Scope],
        tokens: int,
        now: float = T0,
        lease_s: float = 600.0,
        reservation_id: str | None = None,
    ) -> Admission:
        self._n += 1
        rid = reservation_id or f"r{self._n}"
        self.latest = max(self.latest, now)
        self.scopes.update((s.name, s) for s in scopes)
        admission = await self.store.reserve(scopes, tokens, now, lease_s, rid)
        self.outstanding[rid] = admission.reservation
        return admission

    async def settle(self, reservation: Reservation, actual_tokens: int, now: float = T0) -> None:
        self.latest = max(self.latest, now)
        await self.store.settle(reservation, actual_tokens, now)
        self.outstanding.pop(reservation.id, None)

    async def usage(self, scope: Scope, now: float = T0) -> ScopeUsage:
        self.latest = max(self.latest, now)
        return await self.store.usage(scope, now)

    async def settle_all_and_check(self) -> None:
        for res in list(self.outstanding.values()):
            await self.settle(res, res.tokens, self.latest)
        for scope in self.scopes.values():
            usage = await self.store.usage(scope, self.latest)
            assert usage.in_flight == 0, f"{scope.name}: {usage.in_flight} slots left in flight"


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def quotas(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Tracked]:
    """The store under test (memory or redis); teardown settles everything left in flight."""
    server = request.getfixturevalue("redis") if store_kind == "redis" else None
    store = await make_store(store_kind, server)
    tracked = Tracked(store)
    try:
        yield tracked
        await tracked.settle_all_and_check()
    finally:
        await store.close()
