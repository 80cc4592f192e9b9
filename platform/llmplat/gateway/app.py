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
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
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
    InvalidRequest,
    NotFound,
    PermissionDenied,
    UpstreamError,
    error_response,
    from_engine_error,
)
from llmplat.gateway.requests import (
    ParsedRequest,
    parse_chat,
    parse_completion,
    read_json_body,
    requested_model,
)
from llmplat.gateway.state import GatewayModel, GatewayState, RequestRecord
from llmplat.gateway.streaming import CLIENT_DISCONNECTED, StreamOutcome, Usage, relay_stream
from llmplat.quotas.service import Admitted

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
    _install_error_handlers(app)
    app.include_router(admin_router(state))
    app.include_router(team_router(state))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        results = await asyncio.gather(
            *(_model_ready(state, m.model_id) for m in state.config.models)
        )
        models = dict(zip([m.model_id for m in state.config.models], results, strict=True))
        ready = all(v == "ready" for v in models.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "models": models},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            raise NotFound("Metrics are not enabled on this gateway.")
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
            raise _unknown_model(model_id)
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
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = NotFound if exc.status_code == 404 else InvalidRequest
        err = kind(str(exc.detail), status=exc.status_code)
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


def _unknown_model(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


async def _authenticate(state: GatewayState, request: Request) -> Principal:
    return await state.authenticator.authenticate(request.headers.get("authorization"))


async def _model_ready(state: GatewayState, model_id: str) -> str:
    try:
        await asyncio.wait_for(
            state.backends[model_id].check_health(), state.config.ready_timeout_s
        )
        return "ready"
    except TimeoutError:
        return "not answering"
    except Exception as exc:  # readiness reports, it does not raise
        return f"unhealthy: {type(exc).__name__}"


def _validate(
    state: GatewayState, principal: Principal, body: dict[str, Any], method: Method
) -> tuple[GatewayModel, ParsedRequest]:
    model_id = requested_model(body)
    model = state.model(model_id)
    if model is None:
        raise _unknown_model(model_id)
    if not principal.may_use(model_id):
        raise PermissionDenied(
            f"Team '{principal.team}' may not use model '{model_id}'.",
            param="model",
            code="model_not_allowed",
        )
    if method == "chat":
        parsed = parse_chat(body)
    else:
        parsed = parse_completion(body, state.fim.get(model_id), model_id)
    req = parsed.request
    cap = principal.max_tokens_cap
    explicit = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    if cap is not None and not explicit and (req.max_tokens is None or req.max_tokens > cap):
        req.max_tokens = cap  # the team's cap is also its default
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    if max_tokens is not None and max_tokens > model.max_model_len:
        raise InvalidRequest(
            f"'max_tokens' is {max_tokens}, but model '{model_id}' has a context of "
            f"{model.max_model_len} tokens (prompt and completion together).",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if cap is not None and max_tokens is not None and max_tokens > cap:
        raise InvalidRequest(
            f"'max_tokens' is {max_tokens}; team '{principal.team}' may ask for at most {cap}.",
            param="max_tokens",
        )
    req.priority = principal.vllm_priority
    return model, parsed


def _reservation_tokens(
    state: GatewayState, model: GatewayModel, parsed: ParsedRequest, principal: Principal
) -> int:
    """Prompt tokens (the model's tokenizer) plus the most the request may generate.

    Without ``max_tokens`` the engine may fill the context; a team cap then becomes the
    request's ``max_tokens``, so the reservation and the engine agree.
    """
    req = parsed.request
    size = state.counters[model.model_id].measure(req)
    if size.longest >= model.max_model_len:
        raise InvalidRequest(
            f"This model's maximum context length is {model.max_model_len} tokens, but the "
            f"prompt has {size.longest} tokens. Shorten the prompt.",
            param="messages" if method_of(req) == "chat" else "prompt",
            code="context_length_exceeded",
        )
    attr = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    max_tokens = getattr(req, attr)
    if max_tokens is None and principal.max_tokens_cap is not None:
        max_tokens = min(principal.max_tokens_cap, model.max_model_len - size.longest)
        req.max_tokens = max_tokens
    if max_tokens is None:
        max_tokens = model.max_model_len - size.longest
    choices = max(int(getattr(req, "n", None) or 1), 1)
    return size.tokens + size.prompts * choices * max_tokens


def method_of(req: Any) -> Method:
    return "chat" if hasattr(req, "messages") else "completions"


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
    admitted: Admitted | None = None
    principal: Principal | None = None
    try:
        principal = await _authenticate(state, request)
        record.team, record.key_id = principal.team, principal.key_id
        body = await read_json_body(request, state.config.max_request_bytes)
        model, parsed = _validate(state, principal, body, method)
        record.model, record.stream = model.model_id, parsed.stream
        tokens = _reservation_tokens(state, model, parsed, principal)
        admitted = await state.quotas.admit(principal, tokens)
        headers.update(admitted.headers)
        if state.metrics is not None:
            state.metrics.admitted(principal.team, state.clock() - record.started)
            state.metrics.started(principal.team, model.model_id)
            record.in_flight = True
        return await _forward(state, record, model, parsed, method, admitted, headers)
    except APIError as err:
        reason = getattr(err, "quota_reason", None)
        if reason is not None and state.metrics is not None and principal is not None:
            state.metrics.rejected(principal.team, reason)
        if admitted is None and principal is not None and err.status != 429:
            headers.update(await state.quotas.headers_for(principal))
        err.headers = {**headers, **err.headers}
        record.error_code = err.code or err.type
        await _finish(state, record, admitted, err.status, error=err.message)
        raise
    except Exception as exc:
        record.error_code = "internal_error"
        await _finish(state, record, admitted, 500, error=f"{type(exc).__name__}: {exc}")
        raise


async def _forward(
    state: GatewayState,
    record: RequestRecord,
    model: GatewayModel,
    parsed: ParsedRequest,
    method: Method,
    admitted: Admitted,
    headers: dict[str, str],
) -> Response:
    call = state.backends[model.model_id].call(method, parsed.request)
    upstream = call.__aiter__()
    try:
        first = await asyncio.wait_for(upstream.__anext__(), state.config.request_timeout_s)
    except APIError:
        raise
    except (StopAsyncIteration, TimeoutError, Exception) as exc:
        call.cancel()
        log.warning("upstream failure before first chunk: %s: %s", type(exc).__name__, exc)
        if isinstance(exc, TimeoutError):
            raise UpstreamError(
                "The model did not answer in time.", status=504, code="timeout"
            ) from exc
        raise UpstreamError(
            "The model failed before answering; retry the request.", code="engine_error"
        ) from exc

    head = first[0] if isinstance(first, list) and first else first
    if isinstance(head, ErrorResponse):
        raise from_engine_error(head.error.message, head.error.code, head.error.param)

    if not parsed.stream:
        usage = getattr(first, "usage", None)
        record.usage = Usage(usage.prompt_tokens, usage.completion_tokens or 0) if usage else None
        await _finish(state, record, admitted, 200)
        return JSONResponse(
            first.model_dump(), headers=headers, background=BackgroundTask(_drain, call, upstream)
        )

    outcome = StreamOutcome()

    async def body_iter() -> Any:
        try:
            async for text in relay_stream(
                call,
                first,
                upstream,
                client_wants_usage=parsed.client_wants_usage,
                client_wants_continuous_usage=parsed.client_wants_continuous_usage,
                outcome=outcome,
                clock=state.clock,
            ):
                yield text
        finally:
            record.usage = outcome.usage
            if outcome.first_chunk_at is not None:
                record.first_token_s = outcome.first_chunk_at - record.started
                generated = outcome.usage.completion_tokens if outcome.usage else 0
                if generated > 1 and outcome.last_chunk_at is not None:
                    span = outcome.last_chunk_at - outcome.first_chunk_at
                    record.inter_token_s = span / (generated - 1)
            if outcome.finished:
                status = 200
            elif outcome.error == CLIENT_DISCONNECTED:
                status = 499
            else:
                status = 502
                record.error_code = "engine_error"
            # Shielded: a disconnect cancels this generator's scope, yet billing must happen.
            with anyio.CancelScope(shield=True):
                await _finish(state, record, admitted, status, error=outcome.error)

    return StreamingResponse(
        body_iter(), media_type="text/event-stream", headers=headers | _SSE_HEADERS
    )


async def _drain(call: Any, upstream: Any) -> None:
    """After a non-streaming answer is sent: read the model call to its end (it yields once),
    so the handle's response generator finishes instead of being left open."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for _ in upstream:
                log.warning("non-streaming model call yielded more than one item")
    except Exception as exc:  # the client has its answer; release the call either way
        log.debug("closing a finished model call: %s: %s", type(exc).__name__, exc)
        call.cancel()


async def _finish(
    state: GatewayState,
    record: RequestRecord,
    admitted: Admitted | None,
    status: int,
    error: str | None = None,
) -> None:
    """Settle the quota reservation and record the outcome, exactly once per request.

    Billing: success and client disconnects pay for the tokens the engine processed;
    engine failures and refusals release the reservation.
    """
    record.status = status
    record.error = error
    record.ended = state.clock()
    if admitted is not None:
        billable = status == 200 or status == 499
        usage = record.usage
        actual = usage.prompt_tokens + usage.completion_tokens if usage and billable else 0
        await state.quotas.settle(admitted, actual)
    if state.metrics is not None:
        if record.in_flight:
            state.metrics.ended(record.team or "", record.model or "")
        state.metrics.record(record)
    try:
        state.on_finish(record)
    except Exception:  # recording must never break serving
        log.exception("on_finish hook failed")
