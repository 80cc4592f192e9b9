"""A local platform's Ray cluster runs in token mode with an owner-only token of its own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from llmplat.local.runtime import ensure_ray_token, prepare_environment, ray_environment
from llmplat.settings import Settings


def test_token_is_created_once_owner_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    path = ensure_ray_token(settings)
    token = path.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # loosened by hand
    assert ensure_ray_token(settings).read_text().strip() == token  # kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # and tightened again


def test_local_cluster_runs_in_token_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare_environment exports Ray's variables: keep them out of this process's tests
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        os.environ.pop(name, None)
    settings = Settings(home=tmp_path / "a")
    env = ray_environment(settings)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "a" / "ray-auth-token")
    # Another platform's token path in the environment (same shell): ours wins.
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "other" / "ray-auth-token")
    prepare_environment(settings)
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "a" / "ray-auth-token")
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_existing_cluster_keeps_its_own_auth(tmp_path: Path) -> None:
    env = ray_environment(Settings(home=tmp_path, ray_address="ray://head:10001"))
    assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN_PATH" not in env
