"""Errors a client sees: HTTP status plus an OpenAI error body, raised anywhere (auth,
quotas, the gateway) and rendered into HTTP in one place (``llmplat.gateway.errors``).
A leaf module: no web framework, no other llmplat package."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client should see: HTTP status plus an OpenAI error body."""

    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # RFC 6750: a 401 names the scheme the client must use.
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="llmplat"')


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class RequestTimeout(APIError):
    status = 408
    type = "invalid_request_error"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable"


class UpstreamError(APIError):
    """The engine failed; the request may be retried. Code ``engine_error`` unless given."""

    status = 502
    type = "server_error"

    def __init__(self, message: str, *, code: str | None = "engine_error", **kwargs: Any) -> None:
        super().__init__(message, code=code, **kwargs)


_TYPE_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    408: RequestTimeout,
    413: PayloadTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
}


def from_engine_error(message: str, status: int | None, param: str | None = None) -> APIError:
    """Map an engine ``ErrorResponse`` (vLLM's status codes) onto our error classes; the
    engine's own failures (5xx) get code ``engine_error``, as every other engine failure."""
    status = status if isinstance(status, int) and 400 <= status < 600 else 500
    cls = _TYPE_BY_STATUS.get(status, UpstreamError if status >= 500 else InvalidRequest)
    code = "engine_error" if status >= 500 else None
    return cls(message, param=param, status=status, code=code)
