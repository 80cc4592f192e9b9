"""Relay an engine stream to the client as SSE, learning its usage on the way.

The gateway always asks the engine for usage on every chunk (billing and metrics need it)
and forwards the final usage chunk only when the client asked for
``stream_options.include_usage``. A failure after the stream started, or the request
timeout, ends it with an error event, never a silent cut. The relay says what happened to
a :class:`StreamSink` (the request's lifecycle), which decides what it means.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from llmplat.engine.protocol import ErrorResponse
from llmplat.gateway.errors import UpstreamError, from_engine_error, sse_error_event
from llmplat.gateway.lifecycle import ChunkTimes
from llmplat.gateway.usage import UsageTracker

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
CLIENT_DISCONNECTED = "client disconnected"


class StreamSink(Protocol):
    """What the relay reports, in order: the engine done, then one end (or, when the client
    left first, ``stream_cut``)."""

    tracker: UsageTracker

    def engine_done(self) -> None:
        """The engine call ran to its end (nothing to cancel)."""
        ...

    def stream_ended(self, error: str | None) -> None:
        """The relay reached the stream's end; ``error``: the engine reported one."""
        ...

    def stream_failed(self, error: str, *, timeout: bool) -> None:
        """The relay stopped the stream (the request timeout, or the engine call raised)."""
        ...

    def stream_cut(self, error: str) -> None:
        """The stream stopped before the relay ended it (the client left)."""
        ...


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
    data = {k: v for k, v in data.items() if k != "usage"}
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _error_message(chunk: str) -> str:
    data = _decode(chunk) or {}
    error = data.get("error")
    return str(error.get("message")) if isinstance(error, dict) else "engine error"


async def relay_stream(
    first: Any,
    rest: AsyncIterator[Any],
    sink: StreamSink,
    times: ChunkTimes,
    *,
    client_wants_usage: bool,
    deadline: float,
    clock: Callable[[], float],
    client_wants_continuous_usage: bool = False,
) -> AsyncIterator[str]:
    """Yield SSE text for the client; ``first`` is the already-read first batch.

    Each wait for the engine is bounded by ``deadline`` (``clock`` time): past it the
    stream ends with a ``timeout`` error event.
    """
    tracker = sink.tracker
    error: str | None = None
    ended = False
    sent_done = False
    try:
        batch: Any = first
        while True:
            out: list[str] = []
            for item in batch if isinstance(batch, list) else [batch]:
                if isinstance(item, ErrorResponse):
                    err = from_engine_error(item.error.message, item.error.code)
                    error = err.message
                    out.append(sse_error_event(err))
                    sent_done = True
                    continue
                if not isinstance(item, str):
                    continue
                if item.startswith('data: {"error"'):
                    error = _error_message(item)
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
                        if not client_wants_continuous_usage:
                            item = _without_usage(data)
                        tracker.observe(data)
                    times.last = clock()
                    if times.first is None:
                        times.first = times.last
                out.append(item)
            if out:
                yield "".join(out)
            if sent_done:
                break
            try:
                batch = await asyncio.wait_for(rest.__anext__(), max(deadline - clock(), 0.0))
            except StopAsyncIteration:
                break
        sink.engine_done()
        if not sent_done:
            error = "the engine ended the stream without finishing it"
            yield sse_error_event(UpstreamError(error))
        ended = True
        sink.stream_ended(error)
    except TimeoutError:
        ended = True
        sink.stream_failed("request timeout", timeout=True)
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
        ended = True
        sink.stream_failed(f"{type(exc).__name__}: {exc}", timeout=False)
        yield sse_error_event(
            UpstreamError("The model failed while generating this response; retry the request.")
        )
    finally:
        if not ended:
            sink.stream_cut(error or CLIENT_DISCONNECTED)  # stop the engine working for nobody
