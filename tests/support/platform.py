"""Run `llmplat serve` as a user does, in a session of its own, and stop it with Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmplat.settings import Settings

START_TIMEOUT_S = 900
STOP_TIMEOUT_S = 90


BODY_TIMEOUT_S = 5
"""The integration session platform's body deadline (LLMPLAT_GATEWAY__BODY_TIMEOUT_S)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            out.append(f"{pid}: {cmd[:120]}")
    return out


def ray_processes(home: Path) -> list[str]:
    return processes_mentioning(str(Settings(home=home).ray_temp_dir))


def platform_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh LLMPLAT_HOME (so the platform's Ray processes are identifiable) whose models/
    links to the test run's model cache (``Settings().models_dir`` under the run's temporary
    LLMPLAT_HOME, tests/conftest.py): the tiny model is built once per run."""
    shared_models = Settings().models_dir
    shared_models.mkdir(parents=True, exist_ok=True)
    home = tmp_path_factory.mktemp(name)
    (home / "models").symlink_to(shared_models)
    return home


def launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`llmplat serve …` until it says it is serving (fails the test with its log if not)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmplat", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llmplat serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if "llmplat is serving" in log.read_text(errors="replace"):
            break
        if time.monotonic() - started > START_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"platform not ready in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    print(f"\nllmplat serve ready in {time.monotonic() - started:.0f} s", flush=True)
    return proc


def stop(
    proc: subprocess.Popen[bytes], home: Path, log: Path, *, signal_first: bool = True
) -> None:
    """Ctrl-C (unless already sent), then: exit 0 and no Ray process left behind."""
    if signal_first and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"llmplat serve did not stop within {STOP_TIMEOUT_S} s of SIGINT")
    leftovers = ray_processes(home)
    deadline = time.monotonic() + 20
    while leftovers and time.monotonic() < deadline:
        time.sleep(1)
        leftovers = ray_processes(home)
    for line in leftovers:  # clean up, then fail: the platform must do this itself
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert proc.returncode == 0, f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
    assert not leftovers, f"Ray processes left behind after shutdown: {leftovers}"


def time_wait_sockets(port: int) -> int:
    """TCP sockets in TIME_WAIT on local ``port`` (they blocked restarts for a minute)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
                count += 1
    return count


def files_containing(root: Path, secret: str) -> list[str]:
    """Files under ``root`` (logs, stores, Ray's session) whose bytes contain ``secret``."""
    needle = secret.encode()
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits
