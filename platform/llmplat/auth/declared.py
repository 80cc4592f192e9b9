"""Teams declared in a file (the Helm chart's teams ConfigMap), applied to a key store.

Declared teams are created when missing and updated to match when they differ; teams that
are not declared (made with ``llmplat teams create`` or the admin API) are left alone, and so
are all keys: a declaration never deletes anything.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.store import ConflictError, NotFoundError
from llmplat.config.loader import load_yaml_model
from llmplat.config.platform import repeated
from llmplat.config.teams import Team

_COMPARED = (
    "models",
    "priority_class",
    "max_tokens_cap",
    "max_choices",
    "prefix_cache_group",
    "limits",
    "input_bounds",
)


class DeclaredTeams(BaseModel):
    """``teams.yaml``: ``teams: [{name, models, priority_class, max_tokens_cap, limits}]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teams: list[Team] = Field(default_factory=list)

    @field_validator("teams")
    @classmethod
    def _unique(cls, teams: list[Team]) -> list[Team]:
        if dupes := repeated(t.name for t in teams):
            raise ValueError(f"teams declared more than once: {dupes}")
        return teams


def load_declared_teams(path: Path) -> list[Team]:
    return load_yaml_model(path, DeclaredTeams).teams


def apply_declared_teams(admin: KeyAdmin, teams: list[Team]) -> dict[str, str]:
    """Make the store hold every declared team as declared. Returns team → what was done
    ('created', 'updated' or 'unchanged')."""
    done = {}
    for team in teams:
        wanted = team.model_dump(include=set(_COMPARED))
        try:
            current = admin.get_team(team.name)
        except NotFoundError:
            try:
                admin.create_team({"name": team.name, **wanted})
                done[team.name] = "created"
                continue
            except ConflictError:  # created meanwhile (another replica applying the same file)
                current = admin.get_team(team.name)
        if current.model_dump(include=set(_COMPARED)) == wanted:
            done[team.name] = "unchanged"
        else:
            admin.update_team(team.name, wanted)
            done[team.name] = "updated"
    return done
