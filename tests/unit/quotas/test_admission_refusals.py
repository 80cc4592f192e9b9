"""gateway.admission.QuotaService over the quota stores: what a refused caller is told (which
scope refused), settlement, usage."""

from __future__ import annotations

import logging

import pytest

from llmplat.auth.base import Principal
from llmplat.config.teams import Limits
from llmplat.errors import RateLimited, ServiceUnavailable
from llmplat.gateway.admission import QuotaService, format_reset
from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.quotas.model import QuotaStore
from llmplat.quotas.redis_store import RedisQuotaStore
from support.redis_server import RedisServer, free_port

from .conftest import T0, unique_prefix


def service() -> QuotaService:
    return QuotaService(MemoryQuotaStore(), clock=lambda: T0)


@pytest.mark.parametrize(
    ("limits", "prefix"),
    [
        (
            "team_limits",
            "Rate limit reached for team 'ide' on requests per minute: limit 1, used 1, "
            "requested 1. Retry after ",
        ),
        ("key_limits", "Rate limit reached for key 'k1' on requests per minute: "),
    ],
)
async def test_a_refusal_names_the_scope_whose_limit_it_is(limits: str, prefix: str) -> None:
    quotas = service()
    ide = Principal("ide", "k1", **{limits: Limits(requests_per_minute=1)})
    await quotas.admit(ide, 10)
    with pytest.raises(RateLimited) as info:
        await quotas.admit(ide, 10)
    assert info.value.message.startswith(prefix), info.value.message


async def test_a_request_over_a_team_limit_never_fits() -> None:
    ide = Principal("ide", "k1", team_limits=Limits(tokens_per_minute=100))
    with pytest.raises(RateLimited) as info:
        await service().admit(ide, 101)
    assert info.value.code == "request_too_large"
    assert info.value.message == (
        "Request too large for team 'ide': it needs up to 101 tokens (prompt + max_tokens) "
        "but the limit is 100 tokens per minute. Lower max_tokens or shorten the prompt."
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (360, "6m0s"),
        (3661, "1h1m1s"),
    ],
)
def test_reset_times_in_openai_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_settling_bills_the_actual_tokens_once(kind: str, redis: RedisServer) -> None:
    store: QuotaStore = (
        MemoryQuotaStore()
        if kind == "memory"
        else await RedisQuotaStore.connect(redis.url, key_prefix=unique_prefix())
    )
    quotas = QuotaService(store, clock=lambda: T0)
    ide = Principal("ide", "k1", team_limits=Limits(tokens_per_day=1000))
    try:
        admitted = await quotas.admit(ide, 100)
        await quotas.settle(admitted, 10)
        await quotas.settle(admitted, 10)  # idempotent: a second settle changes nothing
        [team] = await quotas.usage(ide)
    finally:
        await store.close()
    assert (team.tokens_today, team.tokens_this_minute, team.in_flight) == (10, 10, 0)


async def test_usage_with_the_store_unreachable_is_503() -> None:
    store = RedisQuotaStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await QuotaService(store, clock=lambda: T0).usage(Principal("ide", "k1"))
    finally:
        await store.close()
    assert (info.value.message, info.value.code) == (
        "The quota store is unreachable; usage cannot be read now.",
        "quota_store_unavailable",
    )


class _SettleFails(MemoryQuotaStore):
    async def settle(self, reservation: object, actual_tokens: int, now: float) -> None:
        raise ConnectionError("redis went away")


async def test_a_failed_settlement_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    failed: list[str] = []
    quotas = QuotaService(_SettleFails(), clock=lambda: T0, on_store_error=failed.append)
    admitted = await quotas.admit(Principal("ide", "k1"), 10)
    with caplog.at_level(logging.ERROR, logger="llmplat.gateway.admission"):
        await quotas.settle(admitted, 5)
    assert failed == ["settle"]
    assert caplog.messages == [
        "quota settlement failed (lease expiry will free the slot): redis went away"
    ]


class _Down(MemoryQuotaStore):
    async def reserve(self, *args: object, **kwargs: object) -> object:
        from llmplat.quotas.model import QuotaStoreUnavailable

        raise QuotaStoreUnavailable("quota store Redis at redis://r:6379/0 unavailable")


async def test_store_down_fails_closed_with_a_503_by_default() -> None:
    with pytest.raises(ServiceUnavailable) as info:
        await QuotaService(_Down(), clock=lambda: T0).admit(Principal("ide", "k1"), 10)
    assert (info.value.message, info.value.code, info.value.headers) == (
        "The quota store is unreachable, so no request can be admitted; retry shortly.",
        "quota_store_unavailable",
        {"Retry-After": "1"},
    )


async def test_store_down_fails_open_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    quotas = QuotaService(_Down(), clock=lambda: T0, fail_open=True)
    with caplog.at_level(logging.WARNING, logger="llmplat.gateway.admission"):
        admitted = await quotas.admit(Principal("ide", "k1"), 10)
    assert (admitted.admission, admitted.headers) == (None, {})
    assert caplog.messages == [
        "quota store unreachable, admitting without quota: "
        "quota store Redis at redis://r:6379/0 unavailable"
    ]
