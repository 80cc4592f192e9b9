"""The authentication contract between the gateway and any key store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from llmplat.config.teams import DEFAULT_MAX_CHOICES, InputBoundsOverrides, Limits, PriorityClass

VLLM_PRIORITY: dict[PriorityClass, int] = {"interactive": 0, "batch": 10}
"""vLLM's priority scheduler serves lower numbers first."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Never carries the secret."""

    team: str
    key_id: str
    models: frozenset[str] | None = None
    """Models the team may use; None means all."""
    priority_class: PriorityClass = "interactive"
    max_tokens_cap: int | None = None
    team_limits: Limits = field(default_factory=Limits)
    key_limits: Limits = field(default_factory=Limits)
    max_choices: int = DEFAULT_MAX_CHOICES
    cache_group: str = ""
    input_bounds: InputBoundsOverrides = field(default_factory=InputBoundsOverrides)
    """The team's own input bounds (unset fields: the gateway's)."""
    """Teams with the same group share the engine's prefix cache (default: the team)."""

    @property
    def cache_salt(self) -> str:
        """vLLM's ``cache_salt`` for this team's requests: prefix-cache entries are only
        shared between requests with the same salt."""
        group = self.cache_group or self.team
        return hashlib.sha256(f"llmplat-prefix-cache:{group}".encode()).hexdigest()[:32]

    @property
    def vllm_priority(self) -> int:
        return VLLM_PRIORITY[self.priority_class]

    def may_use(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models


class Authenticator(Protocol):
    """Turns the Authorization header into a Principal or raises an APIError (401)."""

    async def authenticate(self, authorization: str | None) -> Principal: ...


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
