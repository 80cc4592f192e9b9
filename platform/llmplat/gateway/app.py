"""The gateway's FastAPI app: routes (OpenAI, health, readiness, metrics, admin) and the
error handlers. A generation request is served by ``gateway.handler.GenerationHandler``."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmplat.gateway.admin_routes import admin_router, team_router
from llmplat.gateway.errors import APIError, InvalidRequest, NotFound, error_response
from llmplat.gateway.handler import GenerationHandler
from llmplat.gateway.middleware import LifecycleMiddleware
from llmplat.gateway.prepare import unknown_model
from llmplat.gateway.readiness import ReadinessCache, check_models
from llmplat.gateway.requests import authenticate
from llmplat.gateway.state import GatewayModel, GatewayState

log = logging.getLogger(__name__)


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

    readiness = ReadinessCache(lambda: check_models(state))
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
        principal = await authenticate(state, request)
        cards = [_card(m) for m in state.config.models if principal.may_use(m.model_id)]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        principal = await authenticate(state, request)
        model = state.model(model_id)
        if model is None or not principal.may_use(model_id):
            raise unknown_model(model_id)
        return _card(model)

    generation = GenerationHandler(state)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generation.generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generation.generate(request, "completions")

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
