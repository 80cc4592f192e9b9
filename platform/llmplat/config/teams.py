"""Typed teams, API key records and quota limits (what the key stores persist)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmplat.settings import InputBounds

PriorityClass = Literal["interactive", "batch"]
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Team names are DNS labels: they become Kubernetes object names and metric labels."""
KEY_ID_PATTERN = r"^[a-z0-9]{4,32}$"
DEFAULT_MAX_CHOICES = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Record):
    """Quota limits of a team or a key. ``None`` is unlimited."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests admitted per minute.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Prompt + completion tokens per minute (reserved at admission)."
    )
    tokens_per_day: int | None = Field(None, ge=1, description="Tokens per UTC day.")
    concurrent_requests: int | None = Field(None, ge=1, description="Requests in flight at once.")

    def is_unlimited(self) -> bool:
        return all(v is None for v in self.model_dump().values())


def _override(name: str) -> Any:
    default = InputBounds.model_fields[name]
    ge = next((m.ge for m in default.metadata if hasattr(m, "ge")), None)
    return Field(None, ge=ge, description=f"{default.description} Unset: the gateway's.")


class InputBoundsOverrides(_Record):
    """A team's own values of the gateway's input bounds (``settings.InputBounds``, whose
    fields these are, one for one); an unset field is the gateway's setting. Raise one for a
    team that needs larger schemas, lower one to keep a team's compile work small."""

    schema_bytes: int | None = _override("schema_bytes")
    schema_depth: int | None = _override("schema_depth")
    schema_nodes: int | None = _override("schema_nodes")
    schema_properties: int | None = _override("schema_properties")
    schema_enum_values: int | None = _override("schema_enum_values")
    schema_patterns: int | None = _override("schema_patterns")
    schema_pattern_chars: int | None = _override("schema_pattern_chars")
    regex_chars: int | None = _override("regex_chars")
    grammar_chars: int | None = _override("grammar_chars")
    choice_count: int | None = _override("choice_count")
    choice_chars: int | None = _override("choice_chars")
    stop_count: int | None = _override("stop_count")
    stop_chars: int | None = _override("stop_chars")
    bad_words_count: int | None = _override("bad_words_count")
    bad_words_chars: int | None = _override("bad_words_chars")
    logit_bias_entries: int | None = _override("logit_bias_entries")
    token_ids: int | None = _override("token_ids")
    grammar_compiles: int | None = _override("grammar_compiles")
    prompts: int | None = _override("prompts")

    def applied_to(self, bounds: InputBounds) -> InputBounds:
        """``bounds`` with this team's values in place of the gateway's."""
        mine = self.model_dump(exclude_none=True)
        return bounds.model_copy(update=mine) if mine else bounds


class Team(_Record):
    """A tenant of the platform: what it may use, how much, and how urgently."""

    name: str = Field(..., pattern=NAME_PATTERN, description="DNS label, e.g. 'ide' or 'ci-main'.")
    models: tuple[str, ...] | None = Field(
        None, description="Model ids the team may use; None allows every served model."
    )
    priority_class: PriorityClass = Field(
        "interactive", description="'interactive' requests are scheduled ahead of 'batch'."
    )
    max_tokens_cap: int | None = Field(
        None, ge=1, description="Largest max_tokens a request may ask for (and the default)."
    )
    max_choices: int = Field(
        DEFAULT_MAX_CHOICES,
        ge=1,
        le=128,
        description="Largest 'n' (and 'best_of') a request may ask for: each choice is a "
        "sequence the engine generates, so 'n' multiplies a request's cost.",
    )
    prefix_cache_group: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Teams in the same group share the engine's prefix cache; by default "
        "each team has its own (its own cache salt), so no team can learn another's prompts "
        "from cache-hit timing.",
    )
    limits: Limits = Field(default_factory=Limits, description="Team-wide quotas.")
    input_bounds: InputBoundsOverrides = Field(
        default_factory=InputBoundsOverrides,
        description="The team's own input bounds (schema size and complexity, stop strings, "
        "...), each in place of the gateway's setting; unset ones are the gateway's.",
    )
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def cache_group(self) -> str:
        return self.prefix_cache_group or self.name


class ApiKeyRecord(_Record):
    """A stored key: its id and the SHA-256 of its secret, never the secret itself."""

    key_id: str = Field(..., pattern=KEY_ID_PATTERN)
    team: str = Field(..., pattern=NAME_PATTERN)
    name: str = Field("", max_length=128, description="What the key is for, e.g. 'github-ci'.")
    secret_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked: bool = False
    limits: Limits = Field(
        default_factory=Limits, description="Per-key quotas on top of the team's (CI keys)."
    )

    def is_active(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


class Registry(_Record):
    """Every team and key: one consistent snapshot of a key store."""

    teams: dict[str, Team] = Field(default_factory=dict)
    keys: dict[str, ApiKeyRecord] = Field(default_factory=dict)
