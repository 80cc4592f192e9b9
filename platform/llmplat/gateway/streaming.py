"""Relay an engine stream to the client as SSE, learning its usage on the way.

The gateway always asks the engine for the final usage chunk (quota settlement and metrics
need it) and forwards it only when the client asked for ``stream_options.include_usage``.
A failure after the stream started ends it with an error event, never a silent cut.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llmplat.engine.protocol import ErrorResponse
from llmplat.gateway.backends import UpstreamCall
from llmplat.gateway.errors import UpstreamError, from_engine_error, sse_error_event

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
CLIENT_DISCONNECTED = "client disconnected"


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage | None:
        if not data:
            return None
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


@dataclass
class StreamOutcome:
    """What the relay learned; read it after the stream ends (or is cut)."""

    usage: Usage | None = None
    chunks: int = 0
    error: str | None = None
    finished: bool = False
    first_chunk_at: float | None = None
    last_chunk_at: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _is_usage_chunk(chunk: str) -> bool:
    # vLLM's final usage chunk has no choices; its JSON is compact.
    return '"choices":[]' in chunk and '"usage":{' in chunk


def _usage_of(chunk: str) -> Usage | None:
    try:
        return Usage.from_dict(json.loads(chunk[len("data: ") :]).get("usage"))
    except (ValueError, AttributeError):
        return None


def _take_usage(chunk: str, keep: bool) -> tuple[str, Usage | None]:
    """The usage a content chunk carries (continuous usage stats), and the chunk as the client
    should see it: unchanged when it asked for per-chunk usage, else without the field."""
    try:
        data = json.loads(chunk[len("data: ") :])
        usage = Usage.from_dict(data.get("usage"))
    except (ValueError, AttributeError):
        return chunk, None
    if keep:
        return chunk, usage
    data.pop("usage", None)
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n", usage


def _error_message(chunk: str) -> str:
    try:
        return str(json.loads(chunk[len("data: ") :])["error"].get("message"))
    except (ValueError, KeyError, AttributeError, TypeError):
        return "engine error"


async def relay_stream(
    call: UpstreamCall,
    first: Any,
    rest: AsyncIterator[Any],
    *,
    client_wants_usage: bool,
    outcome: StreamOutcome,
    client_wants_continuous_usage: bool = False,
    clock: Any,
) -> AsyncIterator[str]:
    """Yield SSE text for the client; ``first`` is the already-read first batch."""
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
                    outcome.usage = _usage_of(item)
                    if not client_wants_usage:
                        continue
                else:
                    if '"usage":{' in item:
                        item, usage = _take_usage(item, client_wants_continuous_usage)
                        outcome.usage = usage or outcome.usage
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
                batch = await rest.__anext__()
            except StopAsyncIteration:
                break
        if not sent_done:
            outcome.error = "the engine ended the stream without finishing it"
            yield sse_error_event(UpstreamError(outcome.error))
        outcome.finished = outcome.error is None
    except Exception as exc:
        log.exception("stream failed after it started")
        outcome.error = f"{type(exc).__name__}: {exc}"
        yield sse_error_event(
            UpstreamError("The model failed while generating this response; retry the request.")
        )
    finally:
        if not outcome.finished:
            if outcome.error is None:
                outcome.error = CLIENT_DISCONNECTED
            # Stop the engine working for nobody (client gone, or stream broken).
            call.cancel()
