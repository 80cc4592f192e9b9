"""Teams declared in the chart's ConfigMap, applied to a key store at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.declared import apply_declared_teams, load_declared_teams
from llmplat.auth.file_store import FileKeyStore
from llmplat.config.loader import ConfigError
from llmplat.config.teams import Team


@pytest.fixture
def admin(tmp_path: Path) -> KeyAdmin:
    return KeyAdmin(FileKeyStore(tmp_path / "teams.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "declared.yaml"
    path.write_text(text)
    return path


def test_creates_updates_and_leaves_others_alone(tmp_path: Path, admin: KeyAdmin) -> None:
    admin.create_team({"name": "ide", "priority_class": "interactive"})
    admin.create_team({"name": "ci", "priority_class": "interactive"})
    key = admin.create_key("ci", name="github")
    declared = load_declared_teams(
        write(
            tmp_path,
            "teams:\n"
            "  - {name: ci, priority_class: batch, limits: {tokens_per_day: 1000}}\n"
            "  - {name: batch-jobs, models: [tiny-mixtral], priority_class: batch}\n",
        )
    )
    assert apply_declared_teams(admin, declared) == {"ci": "updated", "batch-jobs": "created"}
    ci = admin.get_team("ci")
    assert ci.priority_class == "batch" and ci.limits.tokens_per_day == 1000
    assert admin.get_team("batch-jobs").models == ("tiny-mixtral",)
    assert admin.get_team("ide").priority_class == "interactive"  # not declared: untouched
    assert [k.key_id for k in admin.list_keys(team="ci")] == [key.record.key_id]
    assert apply_declared_teams(admin, declared) == {"ci": "unchanged", "batch-jobs": "unchanged"}


def test_declared_limits_replace_the_stored_ones(tmp_path: Path, admin: KeyAdmin) -> None:
    admin.create_team({"name": "ci", "limits": {"requests_per_minute": 5, "tokens_per_day": 9}})
    declared = load_declared_teams(
        write(tmp_path, "teams:\n  - {name: ci, limits: {tokens_per_day: 7}}\n")
    )
    apply_declared_teams(admin, declared)
    limits = admin.get_team("ci").limits
    assert limits.tokens_per_day == 7 and limits.requests_per_minute is None


class _RacedFileStore(FileKeyStore):
    """Another gateway replica creates each team between this one's read and its create."""

    def __init__(self, path: Path, theirs: dict[str, object]) -> None:
        super().__init__(path)
        self.theirs = theirs

    def put_team(self, team: Team, *, create: bool) -> None:
        if create:
            super().put_team(team.model_copy(update=self.theirs), create=True)
        super().put_team(team, create=create)


@pytest.mark.parametrize(
    ("theirs", "done"),
    [({}, "unchanged"), ({"priority_class": "interactive"}, "updated")],
    ids=["same-declaration", "older-declaration"],
)
def test_a_team_created_meanwhile_is_compared_not_an_error(
    tmp_path: Path, theirs: dict[str, object], done: str
) -> None:
    admin = KeyAdmin(_RacedFileStore(tmp_path / "teams.yaml", theirs))
    declared = load_declared_teams(
        write(tmp_path, "teams:\n  - {name: ci, priority_class: batch}\n")
    )
    assert apply_declared_teams(admin, declared) == {"ci": done}
    assert admin.get_team("ci").priority_class == "batch"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teams:\n  - {name: ci}\n  - {name: ci}\n", "declared more than once: ci"),
        ("teams:\n  - {name: CI}\n", "teams.0.name"),
        ("teams:\n  - {name: ci, priority_class: urgent}\n", "teams.0.priority_class"),
    ],
)
def test_bad_declarations_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_declared_teams(write(tmp_path, text))


def test_declared_input_bounds_replace_the_stored_ones(tmp_path: Path, admin: KeyAdmin) -> None:
    admin.create_team({"name": "ci", "input_bounds": {"stop_count": 2, "schema_bytes": 9000}})
    declared = load_declared_teams(
        write(tmp_path, "teams:\n  - {name: ci, input_bounds: {schema_properties: 4096}}\n")
    )
    assert apply_declared_teams(admin, declared) == {"ci": "updated"}
    bounds = admin.get_team("ci").input_bounds
    assert bounds.schema_properties == 4096
    assert bounds.stop_count is None and bounds.schema_bytes is None
    with pytest.raises(ConfigError, match="input_bounds"):
        load_declared_teams(write(tmp_path, "teams:\n  - {name: ci, input_bounds: {nope: 1}}\n"))


def test_every_new_team_is_created(admin: KeyAdmin) -> None:
    declared = [Team(name="a"), Team(name="b", priority_class="batch"), Team(name="c")]
    assert apply_declared_teams(admin, declared) == {"a": "created", "b": "created", "c": "created"}
    assert [t.name for t in admin.list_teams()] == ["a", "b", "c"]
    assert admin.get_team("b").priority_class == "batch"


def test_a_key_created_without_a_name_has_none(admin: KeyAdmin) -> None:
    admin.create_team({"name": "ci"})
    issued = admin.create_key("ci")
    assert issued.record.name == ""
