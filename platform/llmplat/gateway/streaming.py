"""Relay an engine stream to the client as SSE, learning its usage on the way.

The gateway always asks the engine for usage on every chunk (billing and metrics need it)
and forwards the final usage chunk only when the client asked for
``stream_options.include_usage``. A failure after the stream started, or the request
timeout, ends it with an error event, never a silent cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmplat.engine.protocol import ErrorResponse
from llmplat.gateway.errors import UpstreamError, from_engine_error, sse_error_event
from llmplat.gateway.lifecycle import GuardedCall
from llmplat.gateway.usage import Usage, UsageTracker

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
CLIENT_DISCONNECTED = "client disconnected"

__all__ = ["CLIENT_DISCONNECTED", "DONE", "StreamOutcome", "Usage", "relay_stream"]


@dataclass
class StreamOutcome:
    """What the relay learned; read it after the stream ends (or is cut)."""

    chunks: int = 0
    error: str | None = None
    status: int | None = None
    """200 once the stream ended cleanly; 502/504 once it ended with an error event."""
    error_code: str | None = None
    first_chunk_at: float | None = None
    last_chunk_at: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _is_usage_chunk(chunk: str) -> bool:
    # vLLM's final usage chunk has no choices; its JSON is compact.
    return '"choices":[]' in chunk and '"usage":{' in chunk


def _decode(chunk: str) -> dict[str, Any] | None:
    try:
        data = json.loads(chunk[len("data: ") :])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _without_usage(data: dict[str, Any]) -> str:
    data.pop("usage", None)
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _error_message(chunk: str) -> str:
    data = _decode(chunk) or {}
    error = data.get("error")
    return str(error.get("message")) if isinstance(error, dict) else "engine error"


async def relay_stream(
    call: GuardedCall,
    first: Any,
    rest: AsyncIterator[Any],
    *,
    client_wants_usage: bool,
    outcome: StreamOutcome,
    tracker: UsageTracker,
    deadline: float,
    clock: Callable[[], float],
    client_wants_continuous_usage: bool = False,
) -> AsyncIterator[str]:
    """Yield SSE text for the client; ``first`` is the already-read first batch.

    Each wait for the engine is bounded by ``deadline`` (``clock`` time): past it the
    stream ends with a ``timeout`` error event (status 504).
    """
    sent_done = False
    try:
        batch: Any = first
        while True:
            out: list[str] = []
            for item in batch if isinstance(batch, list) else [batch]:
                if isinstance(item, ErrorResponse):
                    err = from_engine_error(item.error.message, item.error.code)
                    outcome.error = err.message
                    out.append(sse_error_event(err))
                    sent_done = True
                    continue
                if not isinstance(item, str):
                    continue
                if item.startswith('data: {"error"'):
                    outcome.error = _error_message(item)
                elif item == DONE or item.startswith("data: [DONE]"):
                    sent_done = True
                elif _is_usage_chunk(item):
                    data = _decode(item)
                    if data is not None:
                        tracker.observe(data)
                    if not client_wants_usage:
                        continue
                else:
                    if '"usage":{' in item and (data := _decode(item)) is not None:
                        tracker.observe(data)
                        if not client_wants_continuous_usage:
                            item = _without_usage(data)
                    outcome.chunks += 1
                    outcome.last_chunk_at = clock()
                    if outcome.first_chunk_at is None:
                        outcome.first_chunk_at = outcome.last_chunk_at
                out.append(item)
            if out:
                yield "".join(out)
            if sent_done:
                break
            try:
                batch = await asyncio.wait_for(rest.__anext__(), max(deadline - clock(), 0.0))
            except StopAsyncIteration:
                break
        call.completed = True
        if not sent_done:
            outcome.error = "the engine ended the stream without finishing it"
            yield sse_error_event(UpstreamError(outcome.error))
        if outcome.error is None:
            outcome.status = 200
        else:
            outcome.status, outcome.error_code = 502, "engine_error"
    except TimeoutError:
        outcome.error, outcome.status, outcome.error_code = "request timeout", 504, "timeout"
        call.cancel()
        yield sse_error_event(
            UpstreamError(
                "The request took longer than this server allows and was stopped; the tokens "
                "generated so far are billed.",
                status=504,
                code="timeout",
            )
        )
    except Exception as exc:
        log.exception("stream failed after it started")
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.status, outcome.error_code = 502, "engine_error"
        call.cancel()
        yield sse_error_event(
            UpstreamError("The model failed while generating this response; retry the request.")
        )
    finally:
        if outcome.status is None:
            outcome.error = outcome.error or CLIENT_DISCONNECTED
            call.cancel()  # stop the engine working for nobody
