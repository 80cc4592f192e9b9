"""The one owner of a generation request (``/v1/chat/completions``, ``/v1/completions``).

:meth:`GenerationHandler.generate` reads top to bottom: identify (request id, key),
prepare (body → engine request), admit (quotas), call the engine (hold a model that is
starting from zero, one retry on another replica), answer (unary or stream). Whatever ends
the request afterwards, the lifecycle middleware concludes it; the handler tells the
:class:`RequestLifecycle` what happened, one event at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from llmplat.engine.protocol import ErrorResponse
from llmplat.gateway.backends import Method
from llmplat.gateway.errors import (
    APIError,
    ServiceUnavailable,
    UpstreamError,
    from_engine_error,
)
from llmplat.gateway.lifecycle import RequestLifecycle
from llmplat.gateway.middleware import SCOPE_KEY
from llmplat.gateway.prepare import Prepared, prepare
from llmplat.gateway.requests import authenticate, client_address, given_request_id, read_body
from llmplat.gateway.state import GatewayModel, GatewayState
from llmplat.gateway.streaming import relay_stream
from llmplat.gateway.usage import Usage

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DRAIN_TIMEOUT_S = 10.0


class GenerationHandler:
    """Serves generation requests for one gateway replica (the role vLLM's
    ``OpenAIServingChat`` plays)."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    async def generate(self, request: Request, method: Method) -> Response:
        state = self._state
        # Serve's proxy (and a direct-ingress replica) puts an X-Request-ID on every request
        # and echoes it on the response; the audit log uses the same id, and the header is
        # set here only when nobody set one, so the response never carries two.
        given = given_request_id(request)
        request_id = given or uuid.uuid4().hex
        headers = {} if given else {"x-request-id": request_id}
        life = RequestLifecycle(state, method, request_id, client_address(state, request))
        request.scope[SCOPE_KEY] = life  # the lifecycle middleware concludes it
        try:
            # Cheap checks first: a key at its request or concurrency limit costs no body read.
            principal = await authenticate(state, request, request_id=request_id)
            life.identified(principal)
            await state.quotas.precheck(principal)
            # Until admission the request's body and parsing are charged to its caller: its
            # key's and team's concurrency, the replica's body budget, the body deadline. A
            # spec the engine has not compiled yet counts against the team's new
            # compilations until the engine's first answer (gateway.grammars).
            gateway = state.config.gateway
            with contextlib.ExitStack() as until_compiled:
                with state.quotas.receiving(principal), state.body_budget.hold() as body:
                    raw = await read_body(
                        request,
                        gateway.max_request_bytes,
                        timeout_s=gateway.body_timeout_s,
                        budget=body,
                    )
                    prepared = await prepare(state, principal, raw, method)
                    life.prepared(
                        prepared.model.model_id,
                        prepared.stream,
                        prepared.prompt_tokens,
                        prepared.choices,
                    )
                    grammar = until_compiled.enter_context(
                        state.grammars.compiling(
                            principal.team, prepared.grammar, prepared.grammar_limit
                        )
                    )
                    admitted = await life.admit(prepared.reserve_tokens)
                headers.update(admitted.headers)
                grammar.sent()
                try:
                    upstream, first = await self._call_engine(life, prepared, method)
                except APIError:
                    grammar.answered()  # an error answer, or the engine never had it
                    raise
                grammar.compiled(first_chunk=prepared.stream)
            return await self._answer(life, prepared, upstream, first, headers)
        except APIError as err:
            if (
                life.admitted is None
                and life.principal is not None
                and not any(h.startswith("x-ratelimit-") for h in err.headers)
            ):
                # Every answer to an authenticated caller carries its limits, whichever path
                # refused it (validation, the pre-check, admission itself).
                headers.update(await state.quotas.headers_for(life.principal))
            err.headers = {**headers, **err.headers}
            life.refused(err)
            raise
        except Exception as exc:
            life.failed(exc)
            raise

    # -- the engine call -----------------------------------------------------------------

    async def _call_engine(
        self, life: RequestLifecycle, prepared: Prepared, method: Method
    ) -> tuple[AsyncIterator[Any], Any]:
        """Make the engine call and wait for its first item.

        A model scaled to zero gets ``scale_from_zero_wait_s`` to start (then 503
        ``model_starting``, nothing billed). A call whose replica went away before it
        yielded anything (scale-down, upgrade, a crash) is made once more, on another
        replica.
        """
        state, model = self._state, prepared.model
        backend = state.backends[model.model_id]
        report = state.scale.report(model.model_id)
        hold_until: float | None = None
        if model.min_replicas == 0 and report is not None and report.running == 0:
            hold_until = state.clock() + model.scale_from_zero_wait_s
        limit = life.deadline if hold_until is None else min(life.deadline, hold_until)
        call = life.engine_called(backend.call(method, prepared.request))
        retried = False
        while True:
            upstream = call.__aiter__()
            try:
                wait = max(limit - state.clock(), 0.0)
                first = await asyncio.wait_for(upstream.__anext__(), wait)
            except APIError:
                raise
            except Exception as exc:  # StopAsyncIteration and TimeoutError included
                if not retried and not isinstance(exc, TimeoutError) and backend.replica_gone(exc):
                    retried = True
                    state.metrics.retried(model.model_id)
                    log.warning(
                        "request %s: the replica went away before answering (%s); sending it again",
                        life.record.request_id,
                        type(exc).__name__,
                    )
                    call = life.engine_called_again(backend.call(method, prepared.request))
                    continue
                starting = limit < life.deadline
                life.engine_dropped(refused=starting and isinstance(exc, TimeoutError))
                raise self._no_first_item(model, exc, starting=starting) from exc
            head = first[0] if isinstance(first, list) and first else first
            if isinstance(head, ErrorResponse):
                err = from_engine_error(head.error.message, head.error.code, head.error.param)
                life.engine_done(refused=err.status < 500)
                raise err
            return upstream, first

    def _no_first_item(self, model: GatewayModel, exc: Exception, *, starting: bool) -> APIError:
        """The error for a call that failed before its first item; ``starting``: the wait
        was cut short by a scale-from-zero hold (the model is still starting; the engine
        never saw the request)."""
        log.warning("upstream failure before first chunk: %s: %s", type(exc).__name__, exc)
        if not isinstance(exc, TimeoutError):
            return UpstreamError("The model failed before answering; retry the request.")
        if not starting:
            return UpstreamError("The model did not answer in time.", status=504, code="timeout")
        self._state.metrics.model_starting(model.model_id)
        retry_after = max(1, min(30, math.ceil(model.scale_from_zero_wait_s / 4)))
        return ServiceUnavailable(
            f"Model {model.model_id!r} was scaled to zero and is still starting; "
            f"retry in {retry_after} s.",
            code="model_starting",
            headers={"Retry-After": str(retry_after)},
        )

    # -- the answer ----------------------------------------------------------------------

    async def _answer(
        self,
        life: RequestLifecycle,
        prepared: Prepared,
        upstream: AsyncIterator[Any],
        first: Any,
        headers: dict[str, str],
    ) -> Response:
        if not prepared.stream:
            # The engine is done: counters are exact before the answer leaves.
            await life.answered(Usage.from_dict(_usage_dict(first)))
            drain = BackgroundTask(_drain, life, upstream)
            return JSONResponse(first.model_dump(), headers=headers, background=drain)
        body = relay_stream(
            first,
            upstream,
            life,
            life.streaming(),
            client_wants_usage=prepared.client_wants_usage,
            client_wants_continuous_usage=prepared.client_wants_continuous_usage,
            deadline=life.deadline,
            clock=self._state.clock,
        )
        return StreamingResponse(
            body, media_type="text/event-stream", headers=headers | _SSE_HEADERS
        )


def _usage_dict(response: Any) -> dict[str, Any] | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    return usage if isinstance(usage, dict) else usage.model_dump()


async def _drain(life: RequestLifecycle, upstream: AsyncIterator[Any]) -> None:
    """After a non-streaming answer is sent: read the model call to its end (it yields once),
    so the handle's response generator finishes instead of being left open."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for _ in upstream:
                log.warning("non-streaming model call yielded more than one item")
        life.engine_done()
    except Exception as exc:  # the client has its answer; release the call either way
        log.debug("closing a finished model call: %s: %s", type(exc).__name__, exc)
        life.engine_dropped()
