"""Settings come from LLMPLAT_* variables, nested with __; secrets stay secret."""

from __future__ import annotations

import os

import pytest

from llmplat.settings import DEV_KEY_PREFIX, Settings, export_defaults


def test_environment_and_nesting(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    monkeypatch.setenv("LLMPLAT_PORT", "9001")
    monkeypatch.setenv("LLMPLAT_GATEWAY__MAX_REQUEST_BYTES", "4096")
    monkeypatch.setenv("LLMPLAT_DEV_API_KEY", "llmp_dev_secret-value")
    s = Settings()
    assert (s.home, s.port, s.gateway.max_request_bytes) == (tmp_path, 9001, 4096)
    assert "secret-value" not in repr(s) and "secret-value" not in str(s.model_dump())


def test_dev_key_generated_only_in_dev_mode(monkeypatch) -> None:
    monkeypatch.delenv("LLMPLAT_DEV_API_KEY", raising=False)
    key = Settings(mode="dev").with_dev_key().dev_api_key
    assert key is not None and key.get_secret_value().startswith(DEV_KEY_PREFIX)
    assert len(key.get_secret_value()) > 40
    assert Settings(mode="production").with_dev_key().dev_api_key is None


def test_dev_key_refused_in_production(monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_DEV_API_KEY", "llmp_dev_x")
    with pytest.raises(ValueError, match="dev-mode setting"):
        Settings(mode="production")


def test_bad_port_rejected(monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_PORT", "99999")
    with pytest.raises(ValueError):
        Settings()


def test_ray_temp_dir_short_enough_for_unix_sockets(tmp_path) -> None:
    deep = tmp_path / ("d" * 80)
    temp = Settings(home=deep).ray_temp_dir
    assert (
        len(str(temp)) + len("/session_2026-11-22_07-47-55_987300_79971/sockets/plasma_store")
        <= 107
    )
    assert temp == Settings(home=deep).ray_temp_dir  # stable per home
    assert Settings(home=tmp_path / "other").ray_temp_dir != temp or len(str(tmp_path)) < 30
    assert Settings(home="/srv/llm").ray_temp_dir == Settings(home="/srv/llm").home / "ray"


def test_exported_defaults_never_override_the_user(monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_TEST_SET", "user")
    monkeypatch.delenv("LLMPLAT_TEST_UNSET", raising=False)
    export_defaults({"LLMPLAT_TEST_SET": "default", "LLMPLAT_TEST_UNSET": "default"})
    assert os.environ["LLMPLAT_TEST_SET"] == "user"
    assert os.environ.pop("LLMPLAT_TEST_UNSET") == "default"
