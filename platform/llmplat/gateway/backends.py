"""How the gateway reaches a model: a Serve DeploymentHandle, or an in-process engine.

Both yield what LLMServer yields: for a stream, lists of ``data: …`` strings (LLMServer
batches chunks every ``stream_batching_interval_ms``) possibly with ``ErrorResponse``
objects; otherwise one response object or ``ErrorResponse``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from llmplat.engine.protocol import GenerationRequest, LLMEngine

log = logging.getLogger(__name__)

Method = Literal["chat", "completions"]


class UpstreamCall(Protocol):
    """One request in flight to a model; iterate it, or cancel it."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None: ...


class GuardedCall:
    """An engine call whose cancellation is idempotent and skipped once it completed.

    The request's lifecycle owns it: only it marks the call completed or cancels it.
    """

    def __init__(self, call: UpstreamCall) -> None:
        self._call = call
        self.completed = False
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._call.__aiter__()

    def cancel(self) -> None:
        if self.completed or self.cancelled:
            return
        self.cancelled = True
        try:
            self._call.cancel()
        except Exception as exc:  # cancelling must never break finalisation
            log.warning("cancelling an engine call failed: %s: %s", type(exc).__name__, exc)


class ModelBackend(Protocol):
    def call(self, method: Method, request: GenerationRequest) -> UpstreamCall: ...

    async def check_health(self) -> None: ...

    def replica_gone(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the replica serving the call went away (stopped, died):
        a call that had not yielded anything yet may be made again, on another replica."""
        ...


class _HandleCall:
    def __init__(self, response_gen: Any) -> None:
        self._gen = response_gen

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen.__aiter__()

    def cancel(self) -> None:
        self._gen.cancel()


class ServeBackend:
    """Calls an LLMServer deployment through its DeploymentHandle (no second HTTP hop)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle.options(stream=True)
        self._health = handle.options(stream=False)

    def call(self, method: Method, request: GenerationRequest) -> UpstreamCall:
        return _HandleCall(getattr(self._handle, method).remote(request, None))

    async def check_health(self) -> None:
        await self._health.check_health.remote()

    def replica_gone(self, exc: BaseException) -> bool:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import ReplicaUnavailableError

        return isinstance(exc, RayActorError | ReplicaUnavailableError)


class EngineCallCancelled(Exception):
    """Iterating an in-process engine call that was cancelled (Serve raises its
    ``RequestCancelledError`` in the same place)."""


class _EngineCall:
    """Like a Serve handle's response: ``cancel`` stops the engine's generation even while
    the gateway is waiting for its next item (each item is awaited as a task of its own)."""

    def __init__(self, engine: LLMEngine, method: Method, request: GenerationRequest) -> None:
        self._agen = getattr(engine, method)(request, None)
        self._stream = bool(request.stream)
        self._step: asyncio.Future[Any] | None = None
        self._cancelled = False

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            if self._cancelled:
                raise EngineCallCancelled("the engine call was cancelled")
            self._step = asyncio.ensure_future(self._agen.__anext__())
            try:
                item = await self._step
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our caller was cancelled, not the engine call
                raise EngineCallCancelled("the engine call was cancelled") from None
            # Mimic LLMServer: stream chunks arrive in lists.
            yield [item] if self._stream else item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    def cancel(self) -> None:
        self._cancelled = True
        if self._step is not None and not self._step.done():
            self._step.cancel()  # the generator sees CancelledError where it waits
        else:
            asyncio.ensure_future(self._agen.aclose())


class EngineBackend:
    """Runs an engine in the gateway's own process: unit tests with the fake engine."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    def call(self, method: Method, request: GenerationRequest) -> UpstreamCall:
        return _EngineCall(self.engine, method, request)

    async def check_health(self) -> None:
        await self.engine.check_health()

    def replica_gone(self, exc: BaseException) -> bool:
        # The fake engine's stand-in for Ray's actor errors says so itself.
        return bool(getattr(exc, "replica_gone", False))
