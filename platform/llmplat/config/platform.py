"""The platform config: which model profiles one deployment serves."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
        dupes = sorted({m for m in value if value.count(m) > 1})
        if dupes:
            raise ValueError(f"listed more than once: {', '.join(dupes)}")
        return value
