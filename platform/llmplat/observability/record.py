"""What one generation request did, as metrics and the audit log record it (a leaf the
gateway fills in and observability reads)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage | None:
        if not data:
            return None
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


@dataclass
class RequestRecord:
    """The outcome of one generation request, handed to ``on_finish`` exactly once.

    ``team``/``key_id``/``model`` are None when the request failed before they were known.
    """

    endpoint: str
    started: float
    wall_started: float = field(default_factory=time.time)
    request_id: str = ""
    client: str | None = None
    team: str | None = None
    key_id: str | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    ended: float = 0.0
    usage: Usage | None = None
    first_token_s: float | None = None
    inter_token_s: float | None = None
    """Mean time between generated tokens of a stream."""
    in_flight: bool = False
    """Counted in the in-flight gauge (admitted and forwarded)."""
    error: str | None = None
    """Internal detail for the server log; never sent to the audit sink."""
    error_code: str | None = None
    response_bytes: int = 0
    """Body bytes handed to the HTTP server (what a client that got everything received)."""
