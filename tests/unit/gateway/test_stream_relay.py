"""The stream relay on batches as Ray Serve's LLMServer delivers them under load: several
chunks (the usage chunk and [DONE] included) in one list."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmplat.engine.protocol import CompletionRequest
from llmplat.gateway.lifecycle import GuardedCall
from llmplat.gateway.streaming import StreamOutcome, relay_stream
from llmplat.gateway.usage import UsageTracker
from support import MODEL


async def _nothing() -> AsyncIterator[Any]:
    return
    yield


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
    call = GuardedCall(backend.call("completions", request))  # only completed or cancelled
    outcome, tracker = StreamOutcome(), UsageTracker()
    relayed = relay_stream(
        call,
        batch,
        _nothing(),
        client_wants_usage=client_wants_usage,
        outcome=outcome,
        tracker=tracker,
        deadline=math.inf,
        clock=time.monotonic,
    )
    events = [e for e in "".join([text async for text in relayed]).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert sum('"choices":[]' in e for e in events) == int(client_wants_usage)
    assert all('"usage"' not in e for e in events if '"choices":[]' not in e)  # per-chunk
    assert (outcome.status, outcome.error, outcome.chunks) == (200, None, 3)
    assert call.completed and not call.cancelled
    assert tracker.delivered(0).completion_tokens == 3
