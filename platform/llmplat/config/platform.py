"""The platform config: which model profiles one deployment serves."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator


def repeated(items: Iterable[str]) -> str:
    """The items given more than once, sorted and comma-separated ('' when none)."""
    seen: set[str] = set()
    twice: set[str] = set()
    for item in items:
        (twice if item in seen else seen).add(item)
    return ", ".join(sorted(twice))


class PlatformConfig(BaseModel):
    """Top-level YAML (``configs/local.yaml``): the models this platform serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(
        ...,
        min_length=1,
        description="Profile names (configs/models/<name>.yaml) or paths to profile files.",
    )

    @field_validator("models")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if dupes := repeated(value):
            raise ValueError(f"listed more than once: {dupes}")
        return value
