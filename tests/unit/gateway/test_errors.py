"""Engine errors map onto OpenAI-shaped errors with the engine's status when it is an HTTP
error status, else 500."""

from __future__ import annotations

import pytest

from llmplat.gateway.errors import (
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    from_engine_error,
)


@pytest.mark.parametrize(
    ("status", "expected", "cls"),
    [
        (400, 400, InvalidRequest),
        (409, 409, InvalidRequest),
        (422, 422, InvalidRequest),
        (404, 404, NotFound),
        (503, 503, ServiceUnavailable),
        (502, 502, UpstreamError),
        (None, 500, UpstreamError),
        (200, 500, UpstreamError),
        (700, 500, UpstreamError),
    ],
)
def test_engine_status_is_kept_when_it_is_an_error_status(
    status: int | None, expected: int, cls: type
) -> None:
    err = from_engine_error("the engine said no", status, param="n")
    assert isinstance(err, cls)
    assert (err.status, err.message, err.param) == (expected, "the engine said no", "n")
    assert err.code == ("engine_error" if expected >= 500 else None)
