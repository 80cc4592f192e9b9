"""The first stream chunk is sent at once; later ones are gathered per interval."""

from __future__ import annotations

import asyncio
import time

from llmplat.serving.llm_server import eager_first_batches


async def _paced(n: int, delay_s: float):
    for i in range(n):
        await asyncio.sleep(delay_s)
        yield i


async def test_first_chunk_is_not_delayed_by_the_interval() -> None:
    t0 = time.perf_counter()
    batches = eager_first_batches(_paced(1, 0.0), interval_ms=500)
    first = await batches.__anext__()
    assert first == [0]
    assert time.perf_counter() - t0 < 0.25


async def test_rest_is_batched_and_nothing_is_lost() -> None:
    batches = [b async for b in eager_first_batches(_paced(30, 0.005), interval_ms=40)]
    assert batches[0] == [0]
    assert [x for b in batches for x in b] == list(range(30))
    assert len(batches) < 20  # ~150 ms of chunks in 40 ms batches


async def test_empty_stream_yields_nothing() -> None:
    assert [b async for b in eager_first_batches(_paced(0, 0), interval_ms=10)] == []


async def test_errors_propagate() -> None:
    async def broken():
        yield 1
        await asyncio.sleep(0.01)
        raise RuntimeError("engine died")

    seen = []
    try:
        async for b in eager_first_batches(broken(), interval_ms=5):
            seen.extend(b)
    except RuntimeError as exc:
        assert "engine died" in str(exc)
    else:
        raise AssertionError("error was swallowed")
    assert seen == [1]
