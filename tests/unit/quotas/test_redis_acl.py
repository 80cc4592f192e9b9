"""The chart's Redis ACL: the quota store works with exactly the commands and keys it grants,
and the gateway's credentials cannot wipe or read anything else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from llmplat.config.teams import Limits
from llmplat.quotas.model import QuotaExceeded, Scope
from llmplat.quotas.redis_store import RedisQuotaStore
from llmplat.settings import QuotaSettings
from support.redis_server import RedisServer, start_redis_server

ACL_FILE = Path(__file__).parents[3] / "helm" / "llmplat" / "files" / "redis-quota-acl.txt"
PREFIX = QuotaSettings().key_prefix  # the settings' default, which the ACL's key pattern names
T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisServer]:
    rule = ACL_FILE.read_text().split()
    server = start_redis_server(
        password="gw-secret",
        username="llmplat",
        extra_args=("--user", "default", "off", "--user", "llmplat", "on", ">gw-secret", *rule),
    )
    try:
        yield server
    finally:
        server.stop()


async def test_quota_store_works_under_the_acl(acl_redis: RedisServer) -> None:
    """Every store operation, with a fresh connection (the script cache is loaded through
    SCRIPT LOAD under the ACL too)."""
    store = await RedisQuotaStore.connect(acl_redis.url, key_prefix=PREFIX, socket_timeout_s=10)
    try:
        scope = Scope("team:acl", Limits(requests_per_minute=2, tokens_per_day=1000,
                                         concurrent_requests=2))  # fmt: skip
        first = await store.reserve([scope], 100, T0, 900.0, "r1")
        await store.renew(first.reservation, T0 + 1, 900.0)
        second = await store.reserve([scope], 100, T0, 900.0, "r2")
        with pytest.raises(QuotaExceeded):
            await store.reserve([scope], 100, T0, 900.0, "r3")
        await store.settle(first.reservation, 40, T0 + 2)
        await store.settle(second.reservation, 60, T0 + 2)
        usage = await store.usage(scope, T0 + 3)
        assert usage.in_flight == 0 and usage.tokens_today == 100
        # A tokens refusal walks the log; a read a minute later prunes it.
        tight = Scope("team:acl2", Limits(tokens_per_minute=150))
        await store.reserve([tight], 100, T0, 900.0, "t1")
        with pytest.raises(QuotaExceeded) as info:
            await store.reserve([tight], 100, T0 + 1, 900.0, "t2")
        assert info.value.retry_after_s == 59.0
        usage = await store.usage(scope, T0 + 61)
        assert (usage.requests_this_minute, usage.tokens_this_minute) == (0, 0)
    finally:
        await store.close()


async def test_gateway_credentials_cannot_wipe_or_read_beyond_quotas(
    acl_redis: RedisServer,
) -> None:
    r = aioredis.Redis.from_url(acl_redis.url)
    try:
        for command in (("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("CONFIG", "GET", "*"),
                        ("ACL", "LIST"), ("SHUTDOWN",)):  # fmt: skip
            with pytest.raises(NoPermissionError):
                await r.execute_command(*command)
        with pytest.raises(NoPermissionError):  # a key outside the quota prefix
            await r.set("other:data", "x")
        with pytest.raises(NoPermissionError):  # a script touching such a key
            await r.eval("return redis.call('GET', KEYS[1])", 1, "other:data")
    finally:
        await r.aclose()
    anonymous = aioredis.Redis(host="127.0.0.1", port=acl_redis.port)
    try:
        with pytest.raises(Exception, match="NOAUTH|Authentication required|authenticated"):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
