"""The stream relay on batches as Ray Serve's LLMServer delivers them under load: several
chunks (the usage chunk and [DONE] included) in one list."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmplat.engine.protocol import CompletionRequest
from llmplat.gateway.lifecycle import ChunkTimes
from llmplat.gateway.streaming import relay_stream
from llmplat.gateway.usage import UsageTracker
from support import MODEL


@dataclass
class _Sink:
    """Records what the relay reports (the request's lifecycle in the gateway)."""

    tracker: UsageTracker = field(default_factory=UsageTracker)
    events: list[Any] = field(default_factory=list)

    def engine_done(self) -> None:
        self.events.append("engine_done")

    def stream_ended(self, error: str | None) -> None:
        self.events.append(("ended", error))

    def stream_failed(self, error: str, *, timeout: bool) -> None:
        self.events.append(("failed", error, timeout))

    def stream_cut(self, error: str) -> None:
        self.events.append(("cut", error))


async def _nothing() -> AsyncIterator[Any]:
    for item in ():
        yield item


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_a_whole_stream_in_one_batch(gateway, client_wants_usage: bool) -> None:
    backend = gateway.state.gateway.backends[MODEL]
    request = CompletionRequest.model_validate(
        {
            "model": MODEL,
            "prompt": "a b",
            "max_tokens": 3,
            "stream": True,
            # What the gateway asks of the engine for every stream (billing a cut stream).
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )
    # The engine's whole stream, as one list (LLMServer batches what is queued).
    batch = [item async for items in backend.call("completions", request) for item in items]
    assert batch[-1] == "data: [DONE]\n\n" and '"choices":[]' in batch[-2]
    sink, times = _Sink(), ChunkTimes()
    relayed = relay_stream(
        batch,
        _nothing(),
        sink,
        times,
        client_wants_usage=client_wants_usage,
        deadline=math.inf,
        clock=time.monotonic,
    )
    events = [e for e in "".join([text async for text in relayed]).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert sum('"choices":[]' in e for e in events) == int(client_wants_usage)
    assert all('"usage"' not in e for e in events if '"choices":[]' not in e)  # per-chunk
    # Three chunks relayed, the engine call completed (never cancelled), no error: a 200.
    assert sum('"choices":[{' in e for e in events) == 3
    assert times.first is not None and times.last is not None and times.first <= times.last
    assert sink.events == ["engine_done", ("ended", None)]
    assert sink.tracker.delivered(0).completion_tokens == 3
