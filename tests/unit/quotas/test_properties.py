"""Property tests: random reserve / settle / clock sequences on both quota stores.

Each example runs the same operations on a MemoryQuotaStore and a RedisQuotaStore and on a
plain reference model, and checks after every step that

* both stores make the same decision (same Admission, or same QuotaExceeded fields);
* the decision is the model's: admitted exactly when every limit of every scope has room;
* no window ever admits more requests than its limit, and no admission takes a counter
  past its limit;
* the counters equal the settled actual tokens plus the outstanding reservations of the
  current window, and the in-flight count equals the unexpired, unsettled reservations.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmplat.config.teams import Limits
from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.quotas.model import (
    Admission,
    QuotaExceeded,
    QuotaStore,
    Reservation,
    Scope,
    ScopeUsage,
    windows,
)
from llmplat.quotas.redis_store import RedisQuotaStore
from support.redis_server import RedisServer

from .conftest import DAY0

LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests")


def optional(lo: int, hi: int) -> st.SearchStrategy[int | None]:
    return st.none() | st.integers(lo, hi)


limits_st = st.builds(
    Limits,
    requests_per_minute=optional(1, 6),
    tokens_per_minute=optional(1, 900),
    tokens_per_day=optional(1, 1500),
    concurrent_requests=optional(1, 4),
)

reserve_st = st.tuples(
    st.just("reserve"),
    st.integers(0, 300),  # tokens
    st.sampled_from([5.0, 30.0, 95.5]),  # lease
    st.sampled_from(["team", "key+team", "team+key"]),
)
settle_st = st.tuples(
    st.just("settle"),
    st.integers(0, 10_000),  # which outstanding reservation
    st.floats(0, 1.25),  # actual / reserved
)
advance_st = st.tuples(
    st.just("advance"),
    st.one_of(
        st.floats(0, 12, allow_nan=False),
        st.sampled_from(["minute", "midnight"]),  # exactly onto the next boundary
    ),
)
ops_st = st.lists(
    st.one_of(reserve_st, reserve_st, reserve_st, settle_st, settle_st, advance_st),
    min_size=10,
    max_size=50,
)


@dataclass
class Booked:
    res: Reservation
    expiry: float
    actual: int | None = None  # None: outstanding

    def contribution(self) -> int:
        return self.res.tokens if self.actual is None else max(self.actual, 0)


class Model:
    """The contract, written the slow and obvious way."""

    def __init__(self) -> None:
        self.booked: list[Booked] = []

    def usage(self, scope: str, now: float) -> tuple[int, int, int, int]:
        minute, day, _, _ = windows(now)
        mine = [b for b in self.booked if scope in b.res.scopes]
        return (
            sum(1 for b in mine if b.res.minute == minute),
            sum(b.contribution() for b in mine if b.res.minute == minute),
            sum(b.contribution() for b in mine if b.res.day == day),
            sum(1 for b in mine if b.actual is None and b.expiry > now),
        )

    def refusal(self, scopes: list[Scope], tokens: int, now: float) -> tuple[str, str] | None:
        for scope in scopes:
            used = self.usage(scope.name, now)
            for field, u, want in zip(LIMIT_FIELDS, used, (1, tokens, tokens, 1), strict=True):
                limit = getattr(scope.limits, field)
                if limit is not None and u + want > limit:
                    return scope.name, field
        return None


def outcome(result: Admission | BaseException) -> object:
    if isinstance(result, QuotaExceeded):
        e = result
        return ("refused", e.scope, e.reason, e.limit, e.used, e.requested, e.retry_after_s,
                e.requests, e.tokens)  # fmt: skip
    return result


async def attempt(store: QuotaStore, *args: object) -> Admission | QuotaExceeded:
    try:
        return await store.reserve(*args)  # type: ignore[arg-type]
    except QuotaExceeded as e:
        return e


def usage_tuple(u: ScopeUsage) -> tuple[int, int, int, int]:
    return (u.requests_this_minute, u.tokens_this_minute, u.tokens_today, u.in_flight)


@settings(
    max_examples=60,
    deadline=None,
    database=None,  # no example database in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    team_limits=limits_st,
    key_limits=limits_st,
    start_before_midnight=st.floats(0, 400, allow_nan=False),
    ops=ops_st,
)
async def test_stores_agree_with_the_model(
    redis: RedisServer,
    team_limits: Limits,
    key_limits: Limits,
    start_before_midnight: float,
    ops: list[tuple],
) -> None:
    team, key = Scope("team:t", team_limits), Scope("key:k", key_limits)
    scope_sets = {"team": [team], "key+team": [key, team], "team+key": [team, key]}
    memory = MemoryQuotaStore()
    redis_store = RedisQuotaStore(
        redis.url, key_prefix=f"prop:{uuid.uuid4().hex[:12]}", socket_timeout_s=10.0
    )
    stores: tuple[QuotaStore, QuotaStore] = (memory, redis_store)
    model = Model()
    admitted_per_window: Counter[tuple[str, int]] = Counter()
    now = DAY0 + 86_400 - start_before_midnight
    try:
        for n, op in enumerate(ops):
            if op[0] == "advance":
                if op[1] == "minute":
                    now = (math.floor(now / 60) + 1) * 60.0
                elif op[1] == "midnight":
                    now = (math.floor(now / 86_400) + 1) * 86_400.0
                else:
                    now += op[1]
            elif op[0] == "reserve":
                _, tokens, lease_s, which = op
                scopes = scope_sets[which]
                expected = model.refusal(scopes, tokens, now)
                results = [await attempt(s, scopes, tokens, now, lease_s, f"r{n}") for s in stores]
                assert outcome(results[0]) == outcome(results[1]), op
                event("admitted" if expected is None else f"refused: {expected[1]}")
                if expected is None:
                    assert isinstance(results[0], Admission), (op, results[0])
                    res = results[0].reservation
                    model.booked.append(Booked(res, now + lease_s))
                    for scope in scopes:
                        admitted_per_window[(scope.name, res.minute)] += 1
                        rpm = scope.limits.requests_per_minute
                        assert rpm is None or admitted_per_window[(scope.name, res.minute)] <= rpm
                        counters = model.usage(scope.name, now)
                        for field, value in zip(LIMIT_FIELDS, counters, strict=True):
                            limit = getattr(scope.limits, field)
                            assert limit is None or value <= limit, (scope.name, field)
                else:
                    assert isinstance(results[0], QuotaExceeded), (op, expected)
                    assert (results[0].scope, results[0].reason) == expected
            else:
                outstanding = [b for b in model.booked if b.actual is None]
                if not outstanding:
                    continue
                booked = outstanding[op[1] % len(outstanding)]
                event("settled late" if booked.res.minute != windows(now)[0] else "settled")
                actual = round(booked.res.tokens * op[2])
                for s in stores:
                    await s.settle(booked.res, actual, now)
                booked.actual = actual
            for scope in (team, key):
                expected_usage = model.usage(scope.name, now)
                for s in stores:
                    u = await s.usage(scope, now)
                    assert usage_tuple(u) == expected_usage, (type(s).__name__, scope.name)
                    assert (u.minute_reset_s, u.day_reset_s) == windows(now)[2:]
        for b in model.booked:
            if b.actual is None:
                for s in stores:
                    await s.settle(b.res, b.res.tokens, now)
        for scope in (team, key):
            for s in stores:
                assert (await s.usage(scope, now)).in_flight == 0
    finally:
        await redis_store.close()
