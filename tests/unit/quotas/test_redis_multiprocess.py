"""Exactness across processes: several gateways, one Redis, one team budget.

The burst processes are spawned (a fresh interpreter each) and run this very file with
``runpy.run_path``: pytest imports test modules under names a child cannot import, so the
process target is the importable ``runpy.run_path`` and the arguments travel in its
``init_globals``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import runpy
import time
import uuid
from typing import Any

from llmplat.config.teams import Limits
from llmplat.quotas.model import Admission, QuotaExceeded, Reservation, Scope
from llmplat.quotas.redis_store import RedisQuotaStore

PROCESSES = 4
BURST = 50  # reservations per process at each team
NOW = 20_000 * 86_400 + 10 * 3_600 + 5.25  # fixed: every reservation is in one window
TOKENS = 100
HOT = Scope("team:hot", Limits(requests_per_minute=60, tokens_per_minute=6000))
COOL = Scope(
    "team:cool",
    Limits(
        requests_per_minute=10_000,
        tokens_per_minute=10_000_000,
        tokens_per_day=10_000_000,
        concurrent_requests=1_000,
    ),
)
KEY_RPM = 20  # each process reserves at the hot team through a key of its own


def key_scope(worker: int) -> Scope:
    return Scope(f"key:w{worker}", Limits(requests_per_minute=KEY_RPM))


async def _burst(url: str, prefix: str, worker: int, start: Any) -> dict[str, Any]:
    # A generous socket timeout: this test is about exactness, on a possibly busy machine.
    store = await RedisQuotaStore.connect(url, key_prefix=prefix, socket_timeout_s=10.0)
    try:
        await asyncio.to_thread(start.wait, 60)  # every process fires at once

        async def one(scopes: list[Scope], rid: str) -> Admission | QuotaExceeded:
            try:
                return await store.reserve(scopes, TOKENS, NOW, 300.0, rid)
            except QuotaExceeded as e:
                return e

        hot = [one([HOT, key_scope(worker)], f"hot-{worker}-{i}") for i in range(BURST)]
        cool = [one([COOL], f"cool-{worker}-{i}") for i in range(BURST)]
        results = await asyncio.gather(*hot, *cool)
    finally:
        await store.close()
    admitted = [r.reservation for r in results if isinstance(r, Admission)]
    refused = [(r.scope, r.reason) for r in results if isinstance(r, QuotaExceeded)]
    return {
        "worker": worker,
        "admitted": [(r.id, r.scopes, r.tokens, r.at, r.day) for r in admitted],
        "refused": refused,
    }


WORKER_RUN_NAME = "__quota_burst_worker__"


def burst_worker(url: str, prefix: str, worker: int, start: Any, results: Any) -> None:
    """Process body (spawned): one store, one burst, results on the queue."""
    try:
        results.put(asyncio.run(_burst(url, prefix, worker, start)))
    except BaseException as exc:  # report instead of dying silently
        results.put({"worker": worker, "error": repr(exc)})


async def test_team_budget_is_exact_across_processes(redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    prefix = f"mp:{uuid.uuid4().hex[:12]}"
    start = ctx.Barrier(PROCESSES)
    results_q = ctx.Queue()
    procs = [
        ctx.Process(
            target=runpy.run_path,
            args=(__file__,),
            kwargs={
                "run_name": WORKER_RUN_NAME,
                "init_globals": {"WORKER_ARGS": (redis.url, prefix, w, start, results_q)},
            },
        )
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    reports: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while len(reports) < PROCESSES and time.monotonic() < deadline:
            try:
                reports.append(await asyncio.to_thread(results_q.get, True, 0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results_q.empty():
                    break  # a process died without reporting
    finally:
        for p in procs:
            await asyncio.to_thread(p.join, 30)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert len(reports) == PROCESSES, (
        f"only {len(reports)} of {PROCESSES} burst processes reported; "
        f"exit codes {[p.exitcode for p in procs]}"
    )
    errors = [r for r in reports if "error" in r]
    assert not errors, errors
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    reservations = [Reservation(*a) for r in reports for a in r["admitted"]]
    hot = [r for r in reservations if "team:hot" in r.scopes]
    cool = [r for r in reservations if "team:cool" in r.scopes]
    # Exactly the limit: no overshoot, no under-admission.
    assert len(hot) == 60
    assert len(cool) == PROCESSES * BURST  # the generous team never refuses
    refusals = [ref for r in reports for ref in r["refused"]]
    assert len(refusals) == PROCESSES * BURST - 60
    assert all(scope != "team:cool" for scope, _ in refusals)
    assert {reason for _, reason in refusals} <= {"requests_per_minute", "tokens_per_minute"}

    store = await RedisQuotaStore.connect(redis.url, key_prefix=prefix, socket_timeout_s=10.0)
    try:
        u = await store.usage(HOT, NOW)
        assert (u.requests_this_minute, u.tokens_this_minute, u.in_flight) == (60, 6000, 60)
        for r in reports:  # all or nothing: each key counted exactly its admitted requests
            mine = sum(1 for a in r["admitted"] if f"key:w{r['worker']}" in a[1])
            assert mine <= KEY_RPM
            ku = await store.usage(key_scope(r["worker"]), NOW)
            assert (ku.requests_this_minute, ku.in_flight) == (mine, mine)
        for res in reservations:
            await store.settle(res, 40, NOW + 1)
        for scope in (HOT, COOL, *(key_scope(w) for w in range(PROCESSES))):
            assert (await store.usage(scope, NOW + 1)).in_flight == 0, scope.name
        u = await store.usage(HOT, NOW + 1)
        assert (u.requests_this_minute, u.tokens_this_minute) == (60, 60 * 40)
    finally:
        await store.close()


if __name__ == WORKER_RUN_NAME:  # a spawned burst process (see the module docstring)
    burst_worker(*WORKER_ARGS)  # type: ignore[name-defined]  # noqa: F821
