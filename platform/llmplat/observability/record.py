"""What one generation request did, as metrics and the audit log record it, and the other
events the audit log keeps: administration and failed logins (a leaf the gateway and the CLI
fill in and observability reads)."""

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


@dataclass(frozen=True)
class AdminAction:
    """One administrative action (admin API or CLI), whatever its outcome. Never a secret:
    keys are named by their id."""

    actor: str
    """Whose credential: ``admin-token`` (the admin API) or the local OS user (the CLI)."""
    client: str | None
    """The client address (admin API) or ``cli``."""
    action: str
    """``team.create``, ``team.update``, ``team.delete``, ``team.get``, ``team.list``,
    ``team.usage``, ``key.create``, ``key.list``, ``key.revoke``, ``key.rotate``,
    ``status.read``."""
    ok: bool
    status: int | None = None
    """The admin API's HTTP status; None from the CLI."""
    error_code: str | None = None
    team: str | None = None
    key_id: str | None = None
    new_key_id: str | None = None
    """The key a ``key.create`` or ``key.rotate`` issued."""
    request_id: str | None = None
    wall_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AuthFailure:
    """A refused credential (API key or admin token) on any route, or a team key asking for
    another team's data. Never the credential itself."""

    route: str
    """``METHOD /path`` as requested (path cut at 200 characters)."""
    client: str | None
    reason: str
    """The error code: ``missing_api_key``, ``invalid_api_key``, ``revoked_api_key``,
    ``expired_api_key``, ``admin_token_required``, ``other_team``."""
    status: int
    """What the client got: 401/403, or 429 once its address is throttled."""
    key_id: str | None = None
    """The id of a key this replica knows, when the credential named one."""
    request_id: str | None = None
    wall_time: float = field(default_factory=time.time)
