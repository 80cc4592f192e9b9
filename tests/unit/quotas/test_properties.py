"""Property tests: random reserve / settle / clock sequences on both quota stores.

Each example runs the same operations on a MemoryQuotaStore and a RedisQuotaStore and on a
plain reference model, and checks after every step that

* both stores make the same decision (same Admission, or same QuotaExceeded fields);
* the decision is the model's: admitted exactly when every limit of every scope has room;
* a refusal's retry_after_s is the model's: when enough of the sliding window frees;
* no admission takes a counter past its limit, and **no 60 s span admits more than the
  per-minute limit**: at most ``requests_per_minute`` admissions in any ``[s, s + 60)``, and
  their tokens (as finally billed) at most ``tokens_per_minute`` plus what settlements
  billed beyond the reservations (a request can only be refused before it runs);
* the counters equal the settled actual tokens plus the outstanding reservations of the
  last 60 s (and of the UTC day), and the in-flight count equals the unexpired, unsettled
  reservations.
"""

from __future__ import annotations

import math
import uuid
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
    day_window,
    window_reset,
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
        st.floats(0, 0.5, allow_nan=False),  # bursts
        st.sampled_from(["minute", "midnight", "edge"]),  # onto / just before a boundary
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

    def window(self, scope: str, now: float) -> list[Booked]:
        """The scope's reservations that still count at ``now``: made in the last 60 s."""
        return sorted(
            (b for b in self.booked if scope in b.res.scopes and b.res.at > now - 60),
            key=lambda b: b.res.at,
        )

    def usage(self, scope: str, now: float) -> tuple[int, int, int, int]:
        day = day_window(now)[0]
        mine = [b for b in self.booked if scope in b.res.scopes]
        window = self.window(scope, now)
        return (
            len(window),
            sum(b.contribution() for b in window),
            sum(b.contribution() for b in mine if b.res.day == day),
            sum(1 for b in mine if b.actual is None and b.expiry > now),
        )

    def reset(self, scope: str, now: float) -> float:
        window = self.window(scope, now)
        return window_reset(now, window[-1].res.at if window else None)

    def retry_after(self, scope: Scope, reason: str, tokens: int, now: float) -> float:
        """When enough of the window slides out for the refused request to fit."""
        if reason == "tokens_per_day":
            return day_window(now)[1]
        if reason == "concurrent_requests":
            return 1.0
        window = self.window(scope.name, now)
        per = (lambda b: 1) if reason == "requests_per_minute" else Booked.contribution
        want = 1 if reason == "requests_per_minute" else tokens
        limit = getattr(scope.limits, reason)
        left = sum(per(b) for b in window)
        for b in window:
            left -= per(b)
            if left + want <= limit:
                return 60 - (now - b.res.at)
        return self.reset(scope.name, now)

    def check_spans(self, scope: Scope) -> None:
        """No span [s, s + 60) admitted more than the per-minute limits."""
        mine = sorted(
            (b for b in self.booked if scope.name in b.res.scopes), key=lambda b: b.res.at
        )
        rpm, tpm = scope.limits.requests_per_minute, scope.limits.tokens_per_minute
        for i, first in enumerate(mine):
            span = [b for b in mine[i:] if b.res.at < first.res.at + 60]
            assert rpm is None or len(span) <= rpm, (scope.name, first.res.at, len(span))
            billed = sum(b.contribution() for b in span)
            overrun = sum(max(b.contribution() - b.res.tokens, 0) for b in span)
            assert tpm is None or billed <= tpm + overrun, (scope.name, first.res.at, billed)

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
    now = DAY0 + 86_400 - start_before_midnight
    try:
        for n, op in enumerate(ops):
            if op[0] == "advance":
                if op[1] == "minute":
                    now = (math.floor(now / 60) + 1) * 60.0
                elif op[1] == "midnight":
                    now = (math.floor(now / 86_400) + 1) * 86_400.0
                elif op[1] == "edge":  # half a second before the next clock minute
                    now = max(now, (math.floor(now / 60) + 1) * 60.0 - 0.5)
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
                    assert res.at == now
                    model.booked.append(Booked(res, now + lease_s))
                    for scope in scopes:
                        model.check_spans(scope)
                        counters = model.usage(scope.name, now)
                        for field, value in zip(LIMIT_FIELDS, counters, strict=True):
                            limit = getattr(scope.limits, field)
                            assert limit is None or value <= limit, (scope.name, field)
                else:
                    assert isinstance(results[0], QuotaExceeded), (op, expected)
                    assert (results[0].scope, results[0].reason) == expected
                    failed = next(s for s in scopes if s.name == expected[0])
                    want = model.retry_after(failed, expected[1], tokens, now)
                    assert math.isclose(results[0].retry_after_s, want, abs_tol=1e-9), op
            else:
                outstanding = [b for b in model.booked if b.actual is None]
                if not outstanding:
                    continue
                booked = outstanding[op[1] % len(outstanding)]
                event("settled late" if booked.res.at <= now - 60 else "settled")
                actual = round(booked.res.tokens * op[2])
                for s in stores:
                    await s.settle(booked.res, actual, now)
                booked.actual = actual
            for scope in (team, key):
                expected_usage = model.usage(scope.name, now)
                for s in stores:
                    u = await s.usage(scope, now)
                    assert usage_tuple(u) == expected_usage, (type(s).__name__, scope.name)
                    assert u.minute_reset_s == model.reset(scope.name, now)
                    assert u.day_reset_s == day_window(now)[1]
        for b in model.booked:
            if b.actual is None:
                for s in stores:
                    await s.settle(b.res, b.res.tokens, now)
        for scope in (team, key):
            model.check_spans(scope)  # settlements after the last admission included
            for s in stores:
                assert (await s.usage(scope, now)).in_flight == 0
    finally:
        await redis_store.close()
