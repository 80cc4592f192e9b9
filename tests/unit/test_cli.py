"""The CLI fails fast and clearly, before starting anything heavy."""

from __future__ import annotations

import os
import socket

import pytest

from llmplat.cli import main
from llmplat.runtime import PlatformStartError, check_port_free


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


def test_serve_with_bad_config_exits_2_naming_the_file(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "platform.yaml"
    bad.write_text("models: [does-not-exist]\n")
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "does-not-exist" in err and "not found" in err


def test_build_tiny_out_dir(tmp_path, capsys) -> None:
    assert main(["model", "build-tiny", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert capsys.readouterr().out.strip().endswith("m")
