"""Domain errors and their one translation into OpenAI-shaped error bodies.

The error classes live in the leaf module ``llmplat.errors`` (auth and quotas raise them
without importing the web layer); this module renders them into HTTP responses."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from llmplat.errors import (
    APIError,
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    UpstreamError,
    from_engine_error,
)

__all__ = [
    "APIError",
    "InvalidRequest",
    "AuthenticationFailed",
    "PermissionDenied",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "UpstreamError",
    "from_engine_error",
    "error_response",
    "sse_error_event",
]


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def sse_error_event(err: APIError) -> str:
    """The event that ends a stream that failed after it started (then ``[DONE]``)."""
    return f"data: {json.dumps(err.body(), separators=(',', ':'))}\n\ndata: [DONE]\n\n"
