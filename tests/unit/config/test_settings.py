"""Settings come from LLMPLAT_* variables, nested with __; secrets stay secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmplat.settings import DEV_KEY_PREFIX, GatewaySettings, Settings, export_defaults


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
    # Two deep homes never share a Ray temp dir (one platform's sockets are not another's).
    other = Settings(home=tmp_path / ("e" * 80)).ray_temp_dir
    assert other != temp and len(str(other)) <= len(str(temp))
    assert Settings(home="/srv/llm").ray_temp_dir == Settings(home="/srv/llm").home / "ray"


def test_exported_defaults_never_override_the_user(monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_TEST_SET", "user")
    monkeypatch.delenv("LLMPLAT_TEST_UNSET", raising=False)
    export_defaults({"LLMPLAT_TEST_SET": "default", "LLMPLAT_TEST_UNSET": "default"})
    assert os.environ["LLMPLAT_TEST_SET"] == "user"
    assert os.environ.pop("LLMPLAT_TEST_UNSET") == "default"


def test_secrets_read_from_files(monkeypatch, tmp_path) -> None:
    """``*_FILE`` variants: a mounted file instead of an inherited environment variable."""
    token = tmp_path / "admin-token"
    token.write_text("t" * 40 + "\n")  # the trailing newline of `echo`/Secret files is dropped
    url = tmp_path / "redis-url"
    url.write_text("rediss://quota:pw@redis.example:6380/0")
    monkeypatch.setenv("LLMPLAT_ADMIN_TOKEN_FILE", str(token))
    monkeypatch.setenv("LLMPLAT_QUOTAS__REDIS_URL_FILE", str(url))
    monkeypatch.setenv("LLMPLAT_QUOTAS__BACKEND", "redis")
    s = Settings()
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "t" * 40
    assert s.quotas.redis_url is not None
    assert s.quotas.redis_url.get_secret_value() == "rediss://quota:pw@redis.example:6380/0"
    assert s.quotas.backend == "redis"  # plain variables of the same section still apply


def test_file_variant_errors_are_clear(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LLMPLAT_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="LLMPLAT_ADMIN_TOKEN_FILE: cannot read"):
        Settings()
    (tmp_path / "missing").write_text("x" * 40)
    monkeypatch.setenv("LLMPLAT_ADMIN_TOKEN", "y" * 40)
    with pytest.raises(ValueError, match="not both"):
        Settings()


def test_short_admin_token_refused_without_echoing_it(monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_ADMIN_TOKEN", "hunter2-hunter2")
    with pytest.raises(ValueError, match="at least 32 characters") as caught:
        Settings()
    assert "hunter2" not in str(caught.value)


def test_cli_reports_bad_settings_in_one_line_each(monkeypatch, capsys) -> None:
    from llmplat.cli import main

    monkeypatch.setenv("LLMPLAT_ADMIN_TOKEN", "hunter2-hunter2")
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "LLMPLAT_ADMIN_TOKEN" in err and "at least 32" in err and "hunter2" not in err
    assert "Traceback" not in err


def test_config_by_name_or_path(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a user's directory: no configs/ here
    settings = Settings(home=tmp_path / "home")
    assert settings.resolved_config() == settings.config_dir / "local.yaml"
    named = settings.model_copy(update={"config": Path("autoscale")})
    assert named.resolved_config() == settings.config_dir / "autoscale.yaml"
    assert named.resolved_config().is_file()
    with_suffix = settings.model_copy(update={"config": Path("autoscale.yaml")})
    assert with_suffix.resolved_config() == settings.config_dir / "autoscale.yaml"
    (tmp_path / "autoscale.yaml").write_text("models: [tiny-mixtral-cpu]\n")
    assert with_suffix.resolved_config() == Path("autoscale.yaml")  # a file here wins
    elsewhere = settings.model_copy(update={"config": Path("my/platform.yaml")})
    assert elsewhere.resolved_config() == Path("my/platform.yaml")  # a path stays a path
    unknown = settings.model_copy(update={"config": Path("nope")})
    assert unknown.resolved_config() == Path("nope")  # the loader names it in its error


def test_input_bounds_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_GATEWAY__INPUT_BOUNDS__SCHEMA_PROPERTIES", "300")
    monkeypatch.setenv("LLMPLAT_GATEWAY__INPUT_BOUNDS__STOP_COUNT", "8")
    bounds = Settings().gateway.input_bounds
    assert (bounds.schema_properties, bounds.stop_count, bounds.schema_depth) == (300, 8, 32)
    monkeypatch.setenv("LLMPLAT_GATEWAY__INPUT_BOUNDS__SCHEMA_DEPTH", "0")
    with pytest.raises(ValueError, match="schema_depth"):
        Settings()


def test_the_body_budget_must_hold_the_largest_body() -> None:
    """A budget below one whole body would answer such bodies 503 + Retry-After forever."""
    with pytest.raises(ValidationError, match="below max_request_bytes"):
        GatewaySettings(max_request_bytes=1 << 20, max_buffered_body_bytes=(1 << 20) - 1)
    assert GatewaySettings(max_request_bytes=4096, max_buffered_body_bytes=4096)
