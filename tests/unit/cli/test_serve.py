"""The CLI fails fast and clearly, before starting anything heavy."""

from __future__ import annotations

import os
import socket

import pytest

from llmplat.cli import main
from llmplat.local.runtime import (
    PlatformStartError,
    check_port_free,
    user_ports,
    with_free_metrics_port,
)
from llmplat.settings import Settings


@pytest.fixture(autouse=True)
def _restore_environment():
    """`serve` exports Ray's variables; keep them out of the rest of the test session."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PlatformStartError, match=f"127.0.0.1:{port}.*LLMPLAT_PORT"):
            check_port_free("127.0.0.1", port)


def test_a_restart_is_not_blocked_by_connections_in_time_wait() -> None:
    """A platform stopped after a load test leaves its side of closed connections in
    TIME_WAIT; the pre-check binds as the server will (SO_REUSEADDR), so it starts again."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's listener
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server closes first: its end goes to TIME_WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old check did: refused
    check_port_free("127.0.0.1", port)


def test_the_busy_port_names_its_own_setting(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        chosen = Settings(home=tmp_path, engine_metrics_port=port)
        ((_, name),) = [p for p in user_ports(chosen) if p[0] == port]
        with pytest.raises(PlatformStartError, match=f":{port}.*LLMPLAT_ENGINE_METRICS_PORT"):
            check_port_free("127.0.0.1", port, name)
        # A port the user chose is checked as given, never moved.
        assert with_free_metrics_port(chosen, print).engine_metrics_port == port


def test_a_second_platform_moves_off_the_default_metrics_port(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LLMPLAT_ENGINE_METRICS_PORT", raising=False)
    default = Settings(home=tmp_path)
    said: list[str] = []
    with socket.socket() as sock:  # another platform's exporter holds the default port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", default.engine_metrics_port))
        except OSError:
            pass  # already taken on this machine: the same situation
        sock.listen()
        moved = with_free_metrics_port(default, said.append)
    assert moved.engine_metrics_port != default.engine_metrics_port
    assert said and "LLMPLAT_ENGINE_METRICS_PORT" in said[0]


def test_serve_with_bad_config_exits_2_naming_the_file(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "platform.yaml"
    bad.write_text("models: [does-not-exist]\n")
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "does-not-exist" in err and "not found" in err


@pytest.mark.timeout(60)  # a regression would start Ray: fail, do not hang
def test_serve_refuses_memory_quotas_with_several_gateway_replicas(
    tmp_path, capsys, monkeypatch
) -> None:
    ray_dir = Settings(home=tmp_path).ray_temp_dir
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    monkeypatch.setenv("LLMPLAT_GATEWAY__REPLICAS", "3")
    monkeypatch.delenv("LLMPLAT_QUOTAS__BACKEND", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["serve"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "3 gateway replicas" in err and "LLMPLAT_QUOTAS__BACKEND=redis" in err
    assert not ray_dir.exists()  # refused before Ray starts


@pytest.mark.timeout(60)
def test_serve_refuses_redis_quotas_without_a_url(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    monkeypatch.setenv("LLMPLAT_QUOTAS__BACKEND", "redis")
    for name in ("LLMPLAT_QUOTAS__REDIS_URL", "LLMPLAT_QUOTAS__REDIS_URL_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "LLMPLAT_QUOTAS__REDIS_URL" in err and "BACKEND=redis" in err
    assert not Settings(home=tmp_path).ray_temp_dir.exists()


def test_build_tiny_out_dir(tmp_path, capsys) -> None:
    assert main(["model", "build-tiny", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert capsys.readouterr().out.strip().endswith("m")
