"""The quota contract, run against every store: MemoryQuotaStore and RedisQuotaStore."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis.asyncio as aioredis

from llmplat.config.teams import Limits
from llmplat.quotas.model import (
    LimitState,
    QuotaExceeded,
    QuotaStoreUnavailable,
    Reservation,
    Scope,
)
from llmplat.quotas.redis_store import RedisQuotaStore, redact_url
from support.redis_server import RedisServer, free_port, redis_server

from .conftest import DAY0, T0, Tracked, unique_prefix

NEXT_MINUTE = DAY0 + 36_060  # the clock minute after T0's (T0 + 54.75)
WINDOW = 60.0  # a fresh entry counts this long: the reset right after an admission
DAY_LEFT = 86_400 - 36_005.25  # at T0
MIDNIGHT = DAY0 + 86_400


def team(**limits: int) -> Scope:
    return Scope("team:ide", Limits(**limits))


def key(name: str = "key:ci01", **limits: int) -> Scope:
    return Scope(name, Limits(**limits))


async def refused(q: Tracked, scopes: list[Scope], tokens: int, now: float = T0) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        await q.reserve(scopes, tokens, now)
    return info.value


# --- admission ----------------------------------------------------------------------------


async def test_admits_within_limits(quotas: Tracked) -> None:
    t = team(requests_per_minute=3, tokens_per_minute=1000, tokens_per_day=10_000)
    k = key(requests_per_minute=5, tokens_per_minute=500, concurrent_requests=2)
    a = await quotas.reserve([t, k], 100, T0, reservation_id="req-1")
    assert a.reservation == Reservation("req-1", ("team:ide", "key:ci01"), 100, T0, 20_000)
    assert a.requests == LimitState(3, 2, WINDOW)  # the team's is the tightest
    assert a.tokens == LimitState(500, 400, WINDOW)  # the key's is the tightest
    b = await quotas.reserve([t, k], 250, T0 + 1)
    assert b.requests == LimitState(3, 1, WINDOW)  # empty again 60 s after the newest entry
    assert b.tokens == LimitState(500, 150, WINDOW)
    u = await quotas.usage(t, T0 + 2)
    assert (u.scope, u.limits) == ("team:ide", t.limits)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today, u.in_flight) == (
        2,
        350,
        350,
        2,
    )
    assert (u.minute_reset_s, u.day_reset_s) == (WINDOW - 1, DAY_LEFT - 2)  # newest at T0 + 1
    assert (await quotas.usage(k, T0 + 2)).in_flight == 2


async def test_unlimited_scope_reports_no_limit_state(quotas: Tracked) -> None:
    a = await quotas.reserve([team()], 10**6, T0)
    assert (a.requests, a.tokens) == (None, None)
    assert (await quotas.usage(team(), T0)).tokens_today == 10**6


async def test_no_scopes_reserves_nothing(quotas: Tracked) -> None:
    a = await quotas.reserve([], 50, T0, reservation_id="anon")
    assert a.reservation == Reservation("anon", (), 50, T0, 20_000)
    assert (a.requests, a.tokens) == (None, None)
    await quotas.settle(a.reservation, 10, T0)


async def test_usage_of_an_unknown_scope_is_zero(quotas: Tracked) -> None:
    u = await quotas.usage(team(requests_per_minute=1), T0)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today, u.in_flight) == (
        0,
        0,
        0,
        0,
    )
    assert (u.minute_reset_s, u.day_reset_s) == (0.0, DAY_LEFT)  # nothing to slide out


# --- each limit refuses -------------------------------------------------------------------


async def test_requests_per_minute_refuses(quotas: Tracked) -> None:
    t = team(requests_per_minute=2, tokens_per_minute=1000)
    await quotas.reserve([t], 10, T0)
    await quotas.reserve([t], 10, T0)
    e = await refused(quotas, [t], 10, T0 + 0.25)
    assert (e.scope, e.reason, e.limit, e.used, e.requested) == (
        "team:ide",
        "requests_per_minute",
        2,
        2,
        1,
    )
    assert e.retry_after_s == WINDOW - 0.25  # when the first of them slides out
    assert e.requests == LimitState(2, 0, WINDOW - 0.25)
    assert e.tokens == LimitState(1000, 980, WINDOW - 0.25)
    assert not e.never_fits
    u = await quotas.usage(t, T0 + 1)
    assert (u.requests_this_minute, u.tokens_this_minute, u.in_flight) == (2, 20, 2)
    # Waiting retry_after_s is enough, and not a moment less.
    await refused(quotas, [t], 10, T0 + 59.999)
    await quotas.reserve([t], 10, T0 + 0.25 + e.retry_after_s)


async def test_tokens_per_minute_refuses(quotas: Tracked) -> None:
    t = team(tokens_per_minute=1000)
    await quotas.reserve([t], 600, T0)
    e = await refused(quotas, [t], 500, T0)
    assert (e.reason, e.limit, e.used, e.requested, e.retry_after_s) == (
        "tokens_per_minute",
        1000,
        600,
        500,
        WINDOW,
    )
    assert (e.requests, e.tokens) == (None, LimitState(1000, 400, WINDOW))
    assert not e.never_fits
    a = await quotas.reserve([t], 400, T0)  # exactly up to the limit
    assert a.tokens == LimitState(1000, 0, WINDOW)
    too_big = await refused(quotas, [t], 1001, T0 + WINDOW)
    assert too_big.never_fits and too_big.used == 0


async def test_tokens_per_day_refuses(quotas: Tracked) -> None:
    t = team(tokens_per_day=1000, requests_per_minute=10)
    await quotas.reserve([t], 700, T0)
    now = T0 + 125  # two minutes later: the minute budget does not matter
    e = await refused(quotas, [t], 400, now)
    assert (e.reason, e.limit, e.used, e.requested) == ("tokens_per_day", 1000, 700, 400)
    assert e.retry_after_s == MIDNIGHT - now
    assert e.requests == LimitState(10, 10, 0.0)  # the window is empty by now
    assert e.tokens is None
    await quotas.reserve([t], 300, now)


async def test_concurrent_requests_refuses(quotas: Tracked) -> None:
    t = team(concurrent_requests=2)
    a = await quotas.reserve([t], 5, T0)
    await quotas.reserve([t], 5, T0)
    e = await refused(quotas, [t], 5, T0)
    assert (e.reason, e.limit, e.used, e.requested, e.retry_after_s) == (
        "concurrent_requests",
        2,
        2,
        1,
        1.0,
    )
    assert not e.never_fits
    assert (await quotas.usage(t, T0)).in_flight == 2
    await quotas.settle(a.reservation, 5, T0)
    assert (await quotas.usage(t, T0)).in_flight == 1
    await quotas.reserve([t], 5, T0)


async def test_first_limit_of_first_scope_is_reported(quotas: Tracked) -> None:
    t = team(requests_per_minute=1, tokens_per_minute=100)
    k = key(requests_per_minute=1, tokens_per_minute=100)
    await quotas.reserve([t, k], 100, T0)
    e = await refused(quotas, [t, k], 100, T0)
    assert (e.scope, e.reason) == ("team:ide", "requests_per_minute")
    e = await refused(quotas, [k, t], 100, T0)
    assert (e.scope, e.reason) == ("key:ci01", "requests_per_minute")


# --- all or nothing across scopes ---------------------------------------------------------


async def test_key_refusal_reserves_nothing_in_the_team(quotas: Tracked) -> None:
    t = team(requests_per_minute=100, tokens_per_minute=100_000, concurrent_requests=10)
    k = key(requests_per_minute=1)
    await quotas.reserve([t, k], 100, T0)
    e = await refused(quotas, [t, k], 100, T0)
    assert (e.scope, e.reason) == ("key:ci01", "requests_per_minute")
    assert e.requests == LimitState(1, 0, WINDOW)
    assert e.tokens == LimitState(100_000, 99_900, WINDOW)
    u = await quotas.usage(t, T0)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today, u.in_flight) == (
        1,
        100,
        100,
        1,
    )
    # The team itself is not blocked: another key of it still gets in.
    await quotas.reserve([t, key("key:ci02")], 100, T0)
    assert (await quotas.usage(t, T0)).requests_this_minute == 2


async def test_team_refusal_reserves_nothing_in_the_key(quotas: Tracked) -> None:
    t = team(tokens_per_minute=300)
    k1, k2 = key("key:aaaa", tokens_per_minute=1000), key("key:bbbb", tokens_per_minute=1000)
    await quotas.reserve([t, k1], 200, T0)
    e = await refused(quotas, [t, k2], 200, T0)
    assert (e.scope, e.reason, e.used) == ("team:ide", "tokens_per_minute", 200)
    assert e.tokens == LimitState(300, 100, WINDOW)
    u = await quotas.usage(k2, T0)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today, u.in_flight) == (
        0,
        0,
        0,
        0,
    )


# --- windows ------------------------------------------------------------------------------


async def test_minute_limit_holds_across_a_clock_minute_boundary(quotas: Tracked) -> None:
    """The issue's burst: one request, then four just before a minute boundary and four
    just after it. A clock-aligned window admitted 8 within 4 s; the sliding one admits 4
    in any 60 s."""
    t = team(requests_per_minute=4)
    await quotas.reserve([t], 1, T0)
    for i in range(3):
        await quotas.reserve([t], 1, NEXT_MINUTE - 2 + i * 0.25)
    e = await refused(quotas, [t], 1, NEXT_MINUTE - 1)
    assert (e.reason, e.used) == ("requests_per_minute", 4)
    for i in range(4):
        e = await refused(quotas, [t], 1, NEXT_MINUTE + i * 0.25)
    # The T0 entry is the first to slide out: 60 s after it, not at the clock minute.
    assert e.retry_after_s == WINDOW - (NEXT_MINUTE + 0.75 - T0)
    assert e.requests == LimitState(4, 0, WINDOW - 2.25)  # empty 60 s after the newest
    await refused(quotas, [t], 1, T0 + 59.999)
    a = await quotas.reserve([t], 1, T0 + WINDOW)
    assert a.requests == LimitState(4, 0, WINDOW)
    await refused(quotas, [t], 1, NEXT_MINUTE - 2 + WINDOW - 0.001)
    await quotas.reserve([t], 1, NEXT_MINUTE - 2 + WINDOW)
    u = await quotas.usage(t, NEXT_MINUTE - 2 + WINDOW)
    assert (u.requests_this_minute, u.minute_reset_s) == (4, WINDOW)


async def test_tokens_per_minute_frees_as_entries_slide_out(quotas: Tracked) -> None:
    t = team(tokens_per_minute=100)
    await quotas.reserve([t], 60, T0)
    await quotas.reserve([t], 40, T0 + 30)
    e = await refused(quotas, [t], 50, T0 + 59)
    assert (e.used, e.retry_after_s) == (100, 1.0)  # the 60 leave at T0 + 60: room for 50
    e = await refused(quotas, [t], 100, T0 + 59)
    assert e.retry_after_s == 31.0  # both have to leave
    assert not e.never_fits
    a = await quotas.reserve([t], 50, T0 + 60)
    assert a.tokens == LimitState(100, 10, WINDOW)
    u = await quotas.usage(t, T0 + 60)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today) == (2, 90, 150)
    assert (await quotas.usage(t, T0 + 200)).tokens_this_minute == 0


async def test_day_budget_rolls_over_at_utc_midnight(quotas: Tracked) -> None:
    t = team(tokens_per_day=1000)
    a = await quotas.reserve([t], 1000, MIDNIGHT - 30)
    assert a.reservation.day == 20_000
    e = await refused(quotas, [t], 1, MIDNIGHT - 0.5)
    assert (e.reason, e.retry_after_s) == ("tokens_per_day", 0.5)
    b = await quotas.reserve([t], 1000, MIDNIGHT)
    assert b.reservation.day == 20_001
    u = await quotas.usage(t, MIDNIGHT + 1)
    assert (u.tokens_today, u.day_reset_s) == (1000, 86_399)
    await refused(quotas, [t], 1, MIDNIGHT + 3_600)


# --- settlement ---------------------------------------------------------------------------


async def test_settlement_lowers_and_raises_the_token_counters(quotas: Tracked) -> None:
    t = team(tokens_per_minute=2000, tokens_per_day=5000)
    a = await quotas.reserve([t], 500, T0)
    await quotas.settle(a.reservation, 120, T0 + 1)
    u = await quotas.usage(t, T0 + 1)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today, u.in_flight) == (
        1,
        120,
        120,
        0,
    )
    b = await quotas.reserve([t], 100, T0 + 2)
    await quotas.settle(b.reservation, 300, T0 + 3)
    u = await quotas.usage(t, T0 + 3)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today) == (2, 420, 420)
    c = await quotas.reserve([t], 100, T0 + 4)
    await quotas.settle(c.reservation, -7, T0 + 4)  # negative usage counts as zero
    assert (await quotas.usage(t, T0 + 4)).tokens_this_minute == 420


async def test_settlement_frees_room_for_the_next_request(quotas: Tracked) -> None:
    t = team(tokens_per_minute=1000)
    a = await quotas.reserve([t], 800, T0)
    await refused(quotas, [t], 300, T0)
    await quotas.settle(a.reservation, 100, T0)
    b = await quotas.reserve([t], 300, T0)
    assert b.tokens == LimitState(1000, 600, WINDOW)


async def test_settlement_touches_the_window_only_while_the_entry_counts(
    quotas: Tracked,
) -> None:
    t = team(tokens_per_minute=1000, tokens_per_day=10_000)
    k = key(tokens_per_minute=1000)
    a = await quotas.reserve([t, k], 500, T0)
    await quotas.reserve([t, k], 300, T0 + 61)
    await quotas.settle(a.reservation, 0, T0 + 62)  # a has slid out: only the day moves
    for scope, today in ((t, 300), (k, 300)):
        u = await quotas.usage(scope, T0 + 62)
        assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today) == (1, 300, today)
        assert u.in_flight == 1
    c = await quotas.reserve([t], 100, T0 + 63)
    await quotas.reserve([t], 50, T0 + 123)
    await quotas.settle(c.reservation, 900, T0 + 124)  # raising, also late
    u = await quotas.usage(t, T0 + 124)
    assert (u.tokens_this_minute, u.tokens_today) == (50, 300 + 900 + 50)


async def test_settlement_inside_the_window_replaces_the_entry(quotas: Tracked) -> None:
    t = team(tokens_per_minute=1000)
    a = await quotas.reserve([t], 500, T0)
    await quotas.settle(a.reservation, 900, NEXT_MINUTE + 1)  # next clock minute, same window
    u = await quotas.usage(t, NEXT_MINUTE + 1)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today) == (1, 900, 900)
    u = await quotas.usage(t, T0 + WINDOW)
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today) == (0, 0, 900)


async def test_late_settlement_after_midnight_keeps_the_new_day_intact(quotas: Tracked) -> None:
    t = team(tokens_per_day=1500, tokens_per_minute=1500)
    a = await quotas.reserve([t], 1000, MIDNIGHT - 10)
    b = await quotas.reserve([t], 200, MIDNIGHT + 5)
    await quotas.settle(a.reservation, 0, MIDNIGHT + 6)
    u = await quotas.usage(t, MIDNIGHT + 6)
    # The window spans midnight (both count in it); the new day holds only b.
    assert (u.requests_this_minute, u.tokens_this_minute, u.tokens_today) == (2, 200, 200)
    await quotas.settle(b.reservation, 150, MIDNIGHT + 7)
    u = await quotas.usage(t, MIDNIGHT + 7)
    assert (u.tokens_this_minute, u.tokens_today, u.in_flight) == (150, 150, 0)


# --- leases -------------------------------------------------------------------------------


async def test_in_flight_leases_expire(quotas: Tracked) -> None:
    t = team(concurrent_requests=1)
    a = await quotas.reserve([t], 100, T0, lease_s=30)
    e = await refused(quotas, [t], 100, T0 + 29.75)
    assert e.reason == "concurrent_requests"
    assert (await quotas.usage(t, T0 + 29.75)).in_flight == 1
    assert (await quotas.usage(t, T0 + 30)).in_flight == 0  # expiry <= now: gone
    b = await quotas.reserve([t], 100, T0 + 30, lease_s=30)
    # The dead gateway's late settlement neither frees the new slot nor breaks counters.
    await quotas.settle(a.reservation, 10, T0 + 31)
    u = await quotas.usage(t, T0 + 31)
    assert (u.in_flight, u.tokens_this_minute) == (1, 110)
    await quotas.settle(b.reservation, 100, T0 + 32)
    assert (await quotas.usage(t, T0 + 32)).in_flight == 0


async def test_renewed_lease_outlives_its_first_term_and_settled_stays_settled(
    quotas: Tracked,
) -> None:
    t = team(concurrent_requests=2)
    a = await quotas.reserve([t], 100, T0, lease_s=30)
    await quotas.store.renew(a.reservation, T0 + 20, 30)  # a long stream, still alive
    assert (await quotas.usage(t, T0 + 45)).in_flight == 1  # past the first term (T0 + 30)
    assert (await quotas.usage(t, T0 + 50)).in_flight == 0  # the renewed term ended
    b = await quotas.reserve([t], 100, T0 + 50, lease_s=30)
    await quotas.settle(b.reservation, 100, T0 + 51)
    await quotas.store.renew(b.reservation, T0 + 52, 30)  # a late renewal re-adds nothing
    assert (await quotas.usage(t, T0 + 52)).in_flight == 0


async def test_settling_twice_is_harmless_for_slots(quotas: Tracked) -> None:
    t = team(concurrent_requests=2)
    a = await quotas.reserve([t], 10, T0)
    await quotas.reserve([t], 10, T0)
    await quotas.settle(a.reservation, 10, T0)
    await quotas.settle(a.reservation, 10, T0)
    assert (await quotas.usage(t, T0)).in_flight == 1


# --- Redis specifics ----------------------------------------------------------------------


@pytest.fixture
async def raw(redis: RedisServer):
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    yield client
    await client.aclose()


async def test_redis_keys_and_expirations(redis: RedisServer, raw: aioredis.Redis) -> None:
    store = RedisQuotaStore(redis.url, key_prefix="layout-test")
    try:
        t = team(requests_per_minute=5)
        a = await store.reserve([t], 100, T0, 45.0, "rid-1")
        base = "layout-test:team:ide"
        assert await raw.zrange(f"{base}:log", 0, -1, withscores=True) == [("rid-1", T0)]
        assert await raw.hgetall(f"{base}:logtok") == {"r:rid-1": "100", "sum": "100"}
        assert await raw.get(f"{base}:tpd:20000") == "100"
        assert await raw.zrange(f"{base}:inflight", 0, -1, withscores=True) == [
            ("rid-1", T0 + 45.0)
        ]
        for suffix, left, grace in (
            ("log", WINDOW, 60),
            ("logtok", WINDOW, 60),
            ("tpd:20000", DAY_LEFT, 3_600),
            ("inflight", 45.0, 60),
        ):
            ttl = await raw.ttl(f"{base}:{suffix}")
            assert left < ttl <= left + grace + 1, suffix
        await store.settle(a.reservation, 40, T0 + 1)
        assert await raw.hgetall(f"{base}:logtok") == {"r:rid-1": "40", "sum": "40"}
        assert await raw.get(f"{base}:tpd:20000") == "40"
        assert await raw.zcard(f"{base}:inflight") == 0
        # Entries leave the log (and their tokens its sum) once out of the window.
        b = await store.reserve([t], 7, T0 + 30, 45.0, "rid-2")
        await store.usage(t, T0 + WINDOW)
        assert await raw.zrange(f"{base}:log", 0, -1) == ["rid-2"]
        assert await raw.hgetall(f"{base}:logtok") == {"r:rid-2": "7", "sum": "7"}
        # Settlement never recreates keys that have expired.
        await raw.delete(f"{base}:log", f"{base}:logtok", f"{base}:tpd:20000")
        await store.settle(b.reservation, 0, T0 + 31)
        assert await raw.exists(f"{base}:log", f"{base}:logtok", f"{base}:tpd:20000") == 0
        # A log that expired takes a tokens hash left behind with it.
        await raw.hset(f"{base}:logtok", mapping={"r:ghost": "9", "sum": "9"})
        assert (await store.usage(t, T0 + 32)).tokens_this_minute == 0
        assert await raw.exists(f"{base}:logtok") == 0
    finally:
        await store.close()


def closed_port_url(password: str = "s3cret") -> tuple[str, int]:
    port = free_port()
    return f"redis://:{password}@127.0.0.1:{port}/0", port


async def test_unreachable_redis_raises_quickly_without_the_password() -> None:
    url, port = closed_port_url()
    store = RedisQuotaStore(url)
    assert "s3cret" not in store.url and str(port) in store.url
    calls = {
        "ping": store.ping(),
        "reserve": store.reserve([team(requests_per_minute=1)], 1, T0, 30.0, "r"),
        "settle": store.settle(Reservation("r", ("team:ide",), 1, T0, 20_000), 1, T0),
        "usage": store.usage(team(), T0),
    }
    try:
        for what, call in calls.items():
            started = time.monotonic()
            with pytest.raises(QuotaStoreUnavailable) as info:
                await call
            assert time.monotonic() - started < 2.0, what
            message = str(info.value)
            assert "s3cret" not in message and "s3cret" not in repr(info.value)
            assert f"127.0.0.1:{port}" in message, message
            assert f" unavailable ({what}): " in message, message
    finally:
        await store.close()
    with pytest.raises(QuotaStoreUnavailable) as info:
        await RedisQuotaStore.connect(url)
    assert "s3cret" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


async def test_connect_uses_the_given_socket_timeout() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(QuotaStoreUnavailable) as info:
            await RedisQuotaStore.connect(
                f"redis://:s3cret@127.0.0.1:{port}/0", socket_timeout_s=0.2
            )
        elapsed = time.monotonic() - started
    assert elapsed < 0.45, elapsed  # 0.2 s, not the default 0.5 s
    # The cause keeps its exception type; the password is replaced by exactly "***".
    assert str(info.value).startswith(
        f"quota store Redis at redis://127.0.0.1:{port}/0 unavailable"
    )
    assert "TimeoutError: " in str(info.value) and "s3cret" not in str(info.value)


def test_error_texts_name_the_cause_and_mask_the_password() -> None:
    store = RedisQuotaStore("redis://:s3cret@127.0.0.1:1/0")
    scrubbed = store._unavailable("reserve", ConnectionError("AUTH s3cret refused"))
    assert str(scrubbed) == (
        "quota store Redis at redis://127.0.0.1:1/0 unavailable (reserve): "
        "ConnectionError: AUTH *** refused"
    )


async def test_silent_redis_times_out_once_without_retrying() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        store = RedisQuotaStore(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(QuotaStoreUnavailable, match="reserve"):
                await store.reserve([team()], 1, T0, 30.0, "r")
            elapsed = time.monotonic() - started
        finally:
            await store.close()
    assert 0.25 < elapsed < 1.0, elapsed  # one timeout, no retries with backoff


async def test_wrong_password_is_unavailable_and_not_echoed() -> None:
    with redis_server(password="right-one") as server:
        good = await RedisQuotaStore.connect(server.url)
        await good.reserve([team()], 1, T0, 30.0, "r")
        await good.settle(Reservation("r", ("team:ide",), 1, T0, 20_000), 1, T0)
        await good.close()
        bad_url = server.url.replace("right-one", "s3cret")
        with pytest.raises(QuotaStoreUnavailable) as info:
            await RedisQuotaStore.connect(bad_url)
        assert "s3cret" not in str(info.value)
        assert f"127.0.0.1:{server.port}" in str(info.value)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("redis://:s3cret@10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
        ("rediss://user:s3cret@redis.example:6380/2", "rediss://redis.example:6380/2"),
        ("redis://redis:6379", "redis://redis:6379"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("unix:/run/redis.sock?password=s3cret", "unix:/run/redis.sock?password=***"),
        (
            "redis://redis:6379/0?password=s3cret&client_name=",
            "redis://redis:6379/0?password=***&client_name=",
        ),
        (
            "redis://redis:6379/0?ssl_ca_certs=/etc/ca.pem",
            "redis://redis:6379/0?ssl_ca_certs=/etc/ca.pem",
        ),
        (":s3cret@redis:6379/0", "redis:6379/0"),  # no scheme: no netloc either
        ("redis:6379/0", "redis:6379/0"),
    ],
)
def test_redact_url(url: str, safe: str) -> None:
    assert redact_url(url) == safe


def test_an_invalid_url_says_why_without_the_password() -> None:
    with pytest.raises(ValueError) as info:
        RedisQuotaStore("redis://:s3cret@redis:notaport/0")
    message = str(info.value)
    assert message.startswith(
        "invalid Redis URL for the quota store: redis://redis:notaport/0 (ValueError: "
    ), message
    assert "notaport" in message.partition("(")[2] and "s3cret" not in message


def test_default_socket_timeouts() -> None:
    """A Redis that does not answer costs a request at most half a second by default."""
    store = RedisQuotaStore("redis://127.0.0.1:1/0")
    options = store._redis.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (0.5, 0.5)


@pytest.mark.parametrize(
    ("value", "score"), [(b"1.25", 1.25), (b"", None), (7, 7.0), ("2.5", 2.5), ("", None)]
)
def test_scores_as_scripts_return_them(value: object, score: float | None) -> None:
    from llmplat.quotas.redis_store import _score

    assert _score(value) == score


async def test_concurrent_reservations_on_one_store_are_exact(redis: RedisServer) -> None:
    """Concurrent calls on one store (one connection pool) stay exact."""
    # Exactness is the subject here, not latency: 20 fresh connections opened at once on
    # a loaded CI machine can exceed the production 0.5 s socket timeout (fail closed).
    store = await RedisQuotaStore.connect(
        redis.url, key_prefix="concurrency-test", socket_timeout_s=10.0
    )
    try:
        t = team(requests_per_minute=7)
        results = await asyncio.gather(
            *(store.reserve([t], 1, T0, 30.0, f"c{i}") for i in range(20)),
            return_exceptions=True,
        )
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(admitted) == 7, results
        assert all(isinstance(r, QuotaExceeded) for r in refused), refused
        for a in admitted:
            await store.settle(a.reservation, 1, T0)
        assert (await store.usage(t, T0)).in_flight == 0
    finally:
        await store.close()


async def test_an_endless_lease_keeps_its_in_flight_set_for_30_days(redis: RedisServer) -> None:
    """A lease without end (or beyond 30 days) must not make Redis keep the set forever,
    nor fail: its key expires 30 days (plus the grace) after the reservation."""
    store = await RedisQuotaStore.connect(redis.url, key_prefix=unique_prefix())
    try:
        t = team(concurrent_requests=2)
        for lease in (float("inf"), 90 * 86_400.0):
            adm = await store.reserve([t], 1, time.time(), lease, f"r{lease}")
            ttl = await store._redis.ttl(store._key(t.name, "inflight"))
            assert 30 * 86_400 < ttl <= 30 * 86_400 + 60, ttl
            assert (await store.usage(t, time.time())).in_flight >= 1
            await store.settle(adm.reservation, 1, time.time())
    finally:
        await store.close()
