"""`llmplat teams|keys`: the key alone on stdout, errors on stderr with exit 1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmplat.auth.file_store import FileKeyStore
from llmplat.auth.keys import parse_key, secret_matches
from llmplat.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    return tmp_path


def test_create_team_and_key_prints_key_alone(home, capsys) -> None:
    assert (
        main(["teams", "create", "ci", "--priority", "batch", "--rpm", "10", "--models", "m1,m2"])
        == 0
    )
    capsys.readouterr()
    assert main(["keys", "create", "--team", "ci", "--name", "github", "--expires-in", "30d"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert out == key + "\n" and "shown once" in err and key not in err
    key_id, secret = parse_key(key)
    stored = FileKeyStore(home / "teams.yaml").load()
    rec = stored.keys[key_id]
    assert rec.team == "ci" and rec.name == "github" and rec.expires_at is not None
    assert secret_matches(secret, rec.secret_sha256)
    assert secret not in (home / "teams.yaml").read_text()
    team = stored.teams["ci"]
    assert team.priority_class == "batch" and team.models == ("m1", "m2")
    assert team.limits.requests_per_minute == 10


def test_update_list_revoke_rotate_delete(home, capsys) -> None:
    main(["teams", "create", "ide"])
    capsys.readouterr()
    main(["keys", "create", "--team", "ide", "--concurrency", "2"])
    key_id = parse_key(capsys.readouterr().out.strip())[0]
    assert main(["teams", "update", "ide", "--tpm", "5000", "--max-tokens-cap", "256"]) == 0
    assert "tpm=5000" in capsys.readouterr().out
    assert main(["keys", "rotate", key_id]) == 0
    new_id = parse_key(capsys.readouterr().out.strip())[0]
    assert main(["keys", "list", "--team", "ide"]) == 0
    listing = capsys.readouterr().out
    assert f"{key_id}" in listing and "revoked" in listing and new_id in listing
    assert "concurrency=2" in listing.split(new_id)[1].splitlines()[0]
    assert main(["keys", "revoke", new_id]) == 0
    assert f"revoked key '{new_id}' of team 'ide'" in capsys.readouterr().err
    stored = FileKeyStore(home / "teams.yaml").load().keys
    assert stored[new_id].revoked and stored[key_id].revoked
    assert main(["keys", "list", "--team", "ide"]) == 0
    states = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()}
    assert states == {key_id: "revoked", new_id: "revoked"}
    assert main(["teams", "delete", "ide"]) == 0
    assert FileKeyStore(home / "teams.yaml").load().keys == {}


def test_errors_exit_1_with_message(home, capsys) -> None:
    assert main(["keys", "create", "--team", "ghost"]) == 1
    assert "no team 'ghost'" in capsys.readouterr().err
    assert main(["teams", "create", "Bad_Name"]) == 1
    assert "name" in capsys.readouterr().err


def test_script_can_capture_the_key(home) -> None:
    """Through a real process: stdout is exactly the key."""
    run = [sys.executable, "-m", "llmplat"]
    subprocess.run([*run, "teams", "create", "ci"], check=True, capture_output=True)
    out = subprocess.run(
        [*run, "keys", "create", "--team", "ci"], check=True, capture_output=True, text=True
    ).stdout
    assert parse_key(out.strip()) is not None and out.count("\n") == 1


def test_keys_list_says_expired_for_a_key_past_its_expiry() -> None:
    from datetime import UTC, datetime, timedelta

    from llmplat.cli.admin import key_state
    from llmplat.config.teams import ApiKeyRecord

    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    base = {"key_id": "k1ab", "team": "ci", "secret_sha256": "0" * 64, "created_at": now}
    just_expired = ApiKeyRecord(**base, expires_at=now - timedelta(seconds=1))
    assert key_state(just_expired, now) == "expired"
    assert key_state(ApiKeyRecord(**base, expires_at=now + timedelta(days=1)), now) == "active"
    assert key_state(ApiKeyRecord(**base), now) == "active"
    assert key_state(ApiKeyRecord(**base, revoked=True), now) == "revoked"


def test_teams_take_input_bound_overrides(home, capsys) -> None:
    args = ["--input-bound", "schema_properties=2048", "--input-bound", "stop-count=8"]
    assert main(["teams", "create", "agents", *args]) == 0
    assert main(["teams", "update", "agents", "--input-bound", "stop_count=0"]) == 0
    bounds = FileKeyStore(home / "teams.yaml").load().teams["agents"].input_bounds
    assert (bounds.schema_properties, bounds.stop_count) == (2048, None)
    capsys.readouterr()
    assert main(["teams", "update", "agents", "--input-bound", "stop_count"]) == 1
    assert "expected NAME=NUMBER" in capsys.readouterr().err
    assert main(["teams", "update", "agents", "--input-bound", "nope=3"]) == 1
    assert "nope" in capsys.readouterr().err
