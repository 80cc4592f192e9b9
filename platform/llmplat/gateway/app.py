"""The gateway's FastAPI app: OpenAI routes, health, and the request pipeline.

Per generation request: authenticate → validate (model, body) → admit (team quotas plug
in here) → forward through the model's handle with the team's priority → stream back,
learn usage, record the outcome once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmplat.auth.base import Principal
from llmplat.engine.protocol import ErrorResponse
from llmplat.gateway.admin_routes import admin_router, team_router
from llmplat.gateway.backends import Method
from llmplat.gateway.errors import (
    APIError,
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    error_response,
    from_engine_error,
)
from llmplat.gateway.lifecycle import SCOPE_KEY, GuardedCall, LifecycleMiddleware, RequestLifecycle
from llmplat.gateway.prepare import INLINE_BODY_BYTES, Prepared, prepare, unknown_model
from llmplat.gateway.readiness import ReadinessCache
from llmplat.gateway.requests import client_address, read_body
from llmplat.gateway.scaling import scale_state
from llmplat.gateway.state import GatewayModel, GatewayState, RequestRecord
from llmplat.gateway.streaming import StreamOutcome, relay_stream
from llmplat.gateway.usage import Usage

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DRAIN_TIMEOUT_S = 10.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(state: GatewayState) -> FastAPI:
    """Build the ASGI app of one gateway replica."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for hook in state.on_startup:
            await _maybe_await(hook())
        try:
            yield
        finally:
            for hook in state.on_shutdown:
                try:
                    await _maybe_await(hook())
                except Exception:
                    log.exception("shutdown hook failed")

    app = FastAPI(
        title="llmplat", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.gateway = state
    app.add_middleware(
        LifecycleMiddleware, request_timeout_s=lambda: state.config.gateway.request_timeout_s
    )
    _install_error_handlers(app)
    app.include_router(admin_router(state))
    app.include_router(team_router(state))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def check_models() -> dict[str, str]:
        ids = [m.model_id for m in state.config.models]
        results = await asyncio.gather(*(_model_ready(state, m) for m in ids))
        return dict(zip(ids, results, strict=True))

    readiness = ReadinessCache(check_models)
    app.state.readiness = readiness

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        now = await readiness.get()
        return JSONResponse(
            {"status": "ready" if now.ready else "not_ready", "models": now.models},
            status_code=200 if now.ready else 503,
        )

    if state.config.gateway.metrics_port is None:
        # With a metrics port, /metrics (team names and volumes) is served there only.
        @app.get("/metrics")
        async def metrics() -> Response:
            registry = state.metrics.registry
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        principal = await _authenticate(state, request)
        cards = [_card(m) for m in state.config.models if principal.may_use(m.model_id)]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        principal = await _authenticate(state, request)
        model = state.model(model_id)
        if model is None or not principal.may_use(model_id):
            raise unknown_model(model_id)
        return _card(model)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _generate(state, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(state, request, "completions")

    return app


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        route = f"{request.method} {request.url.path[:200]}"
        if exc.status_code == 404:
            err: APIError = NotFound(
                f"Unknown route: {route}. This server answers /v1/models, "
                "/v1/chat/completions, /v1/completions, /healthz and /readyz.",
                status=404,
            )
        elif exc.status_code == 405:
            err = InvalidRequest(f"{route}: method not allowed on this route.", status=405)
        else:
            err = InvalidRequest(str(exc.detail), status=exc.status_code)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError("Internal server error; the request was not served."))


def _card(model: GatewayModel) -> dict[str, Any]:
    return {
        "id": model.model_id,
        "object": "model",
        "created": model.created,
        "owned_by": "llmplat",
        "max_model_len": model.max_model_len,
    }


async def _authenticate(state: GatewayState, request: Request) -> Principal:
    try:
        return await state.authenticator.authenticate(request.headers.get("authorization"))
    except AuthenticationFailed as exc:
        raise state.auth_throttle.failed(client_address(request), exc) from None


async def _model_ready(state: GatewayState, model_id: str) -> str:
    model = state.model(model_id)
    if model is not None and model.autoscaled:
        # Never ask a model at zero replicas: the health call itself would wake it.
        scaled = scale_state(state.scale.report(model_id), model.min_replicas)
        if scaled is not None:
            return scaled
    try:
        await asyncio.wait_for(
            state.backends[model_id].check_health(), state.config.gateway.ready_timeout_s
        )
        return "ready"
    except TimeoutError:
        return "not answering"
    except Exception as exc:  # readiness reports, it does not raise
        return f"unhealthy: {type(exc).__name__}"


async def _generate(state: GatewayState, request: Request, method: Method) -> Response:
    incoming = request.headers.get("x-request-id", "")
    given = bool(_REQUEST_ID.fullmatch(incoming))
    record = RequestRecord(
        endpoint=method,
        started=state.clock(),
        request_id=incoming if given else uuid.uuid4().hex,
        client=request.client.host if request.client else None,
    )
    # Serve's proxy (and a direct-ingress replica) puts an X-Request-ID on every request and
    # echoes it on the response; the audit log uses the same id, and the header is set here
    # only when nobody set one, so the response never carries two.
    headers = {} if given else {"x-request-id": record.request_id}
    life = RequestLifecycle(state, record)
    request.scope[SCOPE_KEY] = life  # LifecycleMiddleware concludes it, whatever happens
    principal: Principal | None = None
    try:
        # Cheap checks first: a key at its request or concurrency limit costs no body read.
        principal = await _authenticate(state, request)
        record.team, record.key_id = principal.team, principal.key_id
        await state.quotas.precheck(principal)
        raw = await read_body(request, state.config.gateway.max_request_bytes)
        if len(raw) <= INLINE_BODY_BYTES:
            prepared = prepare(state, principal, raw, method)
        else:
            prepared = await asyncio.get_running_loop().run_in_executor(
                state.executor, prepare, state, principal, raw, method
            )
        record.model, record.stream = prepared.model.model_id, prepared.parsed.stream
        life.prompt_tokens = prepared.prompt_tokens
        life.tracker.n = prepared.choices
        admitted = await life.admit(principal, prepared.reserve_tokens)
        headers.update(admitted.headers)
        state.metrics.admitted(principal.team, state.clock() - record.started)
        return await _forward(state, life, prepared, method, headers)
    except APIError as err:
        reason = getattr(err, "quota_reason", None)
        if reason is not None and principal is not None:
            state.metrics.rejected(principal.team, reason)
        if (
            life.admitted is None
            and principal is not None
            and not any(h.startswith("x-ratelimit-") for h in err.headers)
        ):
            # Every answer to an authenticated caller carries its limits, whichever path
            # refused it (validation, the pre-check, admission itself).
            headers.update(await state.quotas.headers_for(principal))
        err.headers = {**headers, **err.headers}
        record.error_code = err.code or err.type
        life.status, record.error = err.status, err.message
        raise
    except Exception as exc:
        record.error_code = "internal_error"
        life.status, record.error = 500, f"{type(exc).__name__}: {exc}"
        raise


async def _first_item(
    state: GatewayState, life: RequestLifecycle, prepared: Prepared, method: Method
) -> tuple[GuardedCall, Any, Any]:
    """Make the engine call and wait for its first item.

    A model scaled to zero gets ``scale_from_zero_wait_s`` to start (then 503
    ``model_starting``, nothing billed). A call whose replica went away before it yielded
    anything (scale-down, upgrade, a crash) is made once more, on another replica.
    """
    model = prepared.model
    backend = state.backends[model.model_id]
    request = prepared.parsed.request
    report = state.scale.report(model.model_id)
    hold_until: float | None = None
    if model.min_replicas == 0 and report is not None and report.running == 0:
        hold_until = state.clock() + model.scale_from_zero_wait_s
    limit = life.deadline if hold_until is None else min(life.deadline, hold_until)
    call = life.forward(backend.call(method, request))
    retried = False
    while True:
        upstream = call.__aiter__()
        try:
            first = await asyncio.wait_for(upstream.__anext__(), max(limit - state.clock(), 0.0))
            return call, upstream, first
        except APIError:
            raise
        except Exception as exc:  # StopAsyncIteration and TimeoutError included
            call.cancel()
            if not retried and not isinstance(exc, TimeoutError) and backend.replica_gone(exc):
                retried = True
                state.metrics.retried(model.model_id)
                log.warning(
                    "request %s: the replica went away before answering (%s); sending it again",
                    life.record.request_id,
                    type(exc).__name__,
                )
                call = life.reforward(backend.call(method, request))
                continue
            raise _no_first_item(state, life, model, exc, starting=limit < life.deadline) from exc


def _no_first_item(
    state: GatewayState,
    life: RequestLifecycle,
    model: GatewayModel,
    exc: Exception,
    *,
    starting: bool,
) -> APIError:
    """The error for a call that failed before its first item; ``starting``: the wait was
    cut short by a scale-from-zero hold (the model is still starting)."""
    log.warning("upstream failure before first chunk: %s: %s", type(exc).__name__, exc)
    if not isinstance(exc, TimeoutError):
        return UpstreamError("The model failed before answering; retry the request.")
    if not starting:
        return UpstreamError("The model did not answer in time.", status=504, code="timeout")
    life.engine_refused = True  # the engine never saw it: nothing to bill
    state.metrics.model_starting(model.model_id)
    retry_after = max(1, min(30, math.ceil(model.scale_from_zero_wait_s / 4)))
    return ServiceUnavailable(
        f"Model {model.model_id!r} was scaled to zero and is still starting; "
        f"retry in {retry_after} s.",
        code="model_starting",
        headers={"Retry-After": str(retry_after)},
    )


async def _forward(
    state: GatewayState,
    life: RequestLifecycle,
    prepared: Prepared,
    method: Method,
    headers: dict[str, str],
) -> Response:
    parsed = prepared.parsed
    call, upstream, first = await _first_item(state, life, prepared, method)

    head = first[0] if isinstance(first, list) and first else first
    if isinstance(head, ErrorResponse):
        call.completed = True
        err = from_engine_error(head.error.message, head.error.code, head.error.param)
        life.engine_refused = err.status < 500
        raise err

    if not parsed.stream:
        life.tracker.final = Usage.from_dict(_usage_dict(first))
        await life.settle()  # the engine is done: counters are exact before the answer leaves
        life.status = 200
        return JSONResponse(
            first.model_dump(), headers=headers, background=BackgroundTask(_drain, call, upstream)
        )

    outcome = StreamOutcome()
    life.stream_outcome = outcome
    body = relay_stream(
        call,
        first,
        upstream,
        client_wants_usage=parsed.client_wants_usage,
        client_wants_continuous_usage=parsed.client_wants_continuous_usage,
        outcome=outcome,
        tracker=life.tracker,
        deadline=life.deadline,
        clock=state.clock,
    )
    return StreamingResponse(body, media_type="text/event-stream", headers=headers | _SSE_HEADERS)


def _usage_dict(response: Any) -> dict[str, Any] | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    return usage if isinstance(usage, dict) else usage.model_dump()


async def _drain(call: GuardedCall, upstream: Any) -> None:
    """After a non-streaming answer is sent: read the model call to its end (it yields once),
    so the handle's response generator finishes instead of being left open."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for _ in upstream:
                log.warning("non-streaming model call yielded more than one item")
        call.completed = True
    except Exception as exc:  # the client has its answer; release the call either way
        log.debug("closing a finished model call: %s: %s", type(exc).__name__, exc)
        call.cancel()
