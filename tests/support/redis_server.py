"""A throwaway ``redis-server`` for tests: loopback only, no persistence, stopped by PID.

Use :func:`redis_server` as a context manager (e.g. in a session-scoped fixture)::

    with redis_server() as server:
        store = RedisQuotaStore(server.url)

or :func:`start_redis_server` and :meth:`RedisServer.stop`. When ``redis-server`` is not
installed, both fail the test (never skip) and say how to install it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "redis-server is not on PATH; the Redis quota store tests need a real server: "
    "install it with `sudo apt-get install redis-server` (Debian/Ubuntu; `make test` does this)"
)
START_TIMEOUT_S = 15.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; fails the calling test when it is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int, password: str | None, username: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.5)
            if password is not None:
                user = (username,) if username else ()
                s.sendall(_command("AUTH", *user, password))
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(_command("PING"))
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


@dataclass
class RedisServer:
    """A running ``redis-server``; ``url`` is ``redis://[:password@]127.0.0.1:<port>/0``."""

    port: int
    pid: int
    password: str | None
    workdir: Path
    _process: subprocess.Popen[bytes] = field(repr=False)
    _tmp: tempfile.TemporaryDirectory[str] = field(repr=False)
    username: str | None = None

    @property
    def url(self) -> str:
        auth = f"{self.username or ''}:{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server by its PID (SIGKILL after 5 s) and remove its directory."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
        atexit.unregister(self.stop)
        self._tmp.cleanup()


def start_redis_server(
    *,
    password: str | None = None,
    attempts: int = 3,
    username: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> RedisServer:
    """Start ``redis-server`` on a free loopback port and wait until it answers PING
    (as ``username`` when given: e.g. an ACL user set up by ``extra_args``)."""
    binary = redis_server_binary()
    last_log = ""
    for _ in range(attempts):
        tmp = tempfile.TemporaryDirectory(prefix="llmplat-redis-")
        workdir = Path(tmp.name)
        port = free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
            "--daemonize", "no",
            "--databases", "1",
        ]  # fmt: skip
        if password is not None and username is None:
            args += ["--requirepass", password]
        args += list(extra_args)
        process = subprocess.Popen(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(port, process.pid, password, workdir, process, tmp, username)
        atexit.register(server.stop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers_ping(port, password, username):
                return server
            time.sleep(0.05)
        last_log = server.log
        server.stop()  # exited (e.g. the port was taken meanwhile) or never answered
    pytest.fail(
        f"redis-server did not answer PING after {attempts} attempts; last log:\n{last_log}",
        pytrace=False,
    )


@contextlib.contextmanager
def redis_server(*, password: str | None = None) -> Iterator[RedisServer]:
    """A running ``redis-server`` for the duration of the ``with`` block."""
    server = start_redis_server(password=password)
    try:
        yield server
    finally:
        server.stop()
