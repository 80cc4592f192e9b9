"""The platform's own session: autogroup switch and nice, new-session runs, signal forwarding.

Real child processes, no mocks: a child reports whether it leads its own session, and one
that waits for SIGTERM proves the parent forwards the signals a terminal sends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import pytest

from llmplat.cli.serve import serve_command, session_plan
from llmplat.config.loader import load_platform
from llmplat.local.session import (
    SessionError,
    autogroup_enabled,
    autogroup_nice,
    run_in_new_session,
    set_autogroup_nice,
)
from llmplat.settings import Settings


def test_autogroup_switch(tmp_path) -> None:
    switch = tmp_path / "sched_autogroup_enabled"
    switch.write_text("1\n")
    assert autogroup_enabled(switch)
    switch.write_text("0\n")
    assert not autogroup_enabled(switch)
    assert not autogroup_enabled(tmp_path / "missing")


def test_autogroup_nice_is_written_and_read(tmp_path) -> None:
    group = tmp_path / "autogroup"
    set_autogroup_nice(10, group)
    assert group.read_text() == "10\n"
    group.write_text("/autogroup-7 nice 10\n")
    assert autogroup_nice(group) == 10
    assert autogroup_nice(tmp_path / "missing") is None


def test_unwritable_autogroup_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SessionError, match="autogroup nice to 10.*LLMPLAT_CPU__AUTOGROUP_NICE=0"):
        set_autogroup_nice(10, tmp_path / "no-such-dir" / "autogroup")


def test_child_leads_a_new_session_and_its_status_is_returned() -> None:
    leads = "import os, sys; sys.exit(0 if os.getsid(0) == os.getpid() else 3)"
    assert run_in_new_session([sys.executable, "-c", leads]) == 0
    assert run_in_new_session([sys.executable, "-c", "import sys; sys.exit(5)"]) == 5


def test_termination_signals_are_forwarded_to_the_new_session(tmp_path) -> None:
    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(1)\n"
    )

    def terminate_when_ready() -> None:
        for _ in range(600):
            if ready.exists():
                os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a closing terminal sends
                return
            threading.Event().wait(0.05)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_when_ready, daemon=True).start()
    assert run_in_new_session([sys.executable, "-c", child]) == 7
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_child_killed_by_a_signal_reports_128_plus_the_signal() -> None:
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert run_in_new_session([sys.executable, "-c", kill_self]) == 128 + signal.SIGKILL


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(config=kw.get("config"), port=kw.get("port"), nodes=kw.get("nodes"))


def test_serve_command_repeats_the_options() -> None:
    assert serve_command(_args())[-2:] == ["llmplat", "serve"]
    assert serve_command(_args(config="p.yaml", port=8123))[-4:] == [
        "--config",
        "p.yaml",
        "--port",
        "8123",
    ]
    assert serve_command(_args(nodes=2))[-2:] == ["--nodes", "2"]


@pytest.mark.parametrize(
    ("overrides", "config"),
    [
        ({"cpu": {"autogroup_nice": 0}}, "local.yaml"),  # switched off
        ({"ray_address": "127.0.0.1:6379"}, "local.yaml"),  # someone else's Ray cluster
    ],
)
def test_no_own_session_when_switched_off_or_on_another_cluster(overrides, config) -> None:
    settings = Settings(**overrides)
    platform = load_platform(settings.config_dir / config, settings.config_dir)
    # Decided on a host with autogroup, whatever this one has.
    for leader in (False, True):
        assert session_plan(settings, platform, autogroup=True, leader=leader) == "serve here"


def test_no_own_session_for_gpu_engines(tmp_path) -> None:
    settings = Settings()
    config = tmp_path / "gpu.yaml"
    config.write_text("models: [mixtral-8x22b-h100x8]\n")
    platform = load_platform(config, settings.config_dir)
    assert session_plan(settings, platform, autogroup=True, leader=False) == "serve here"


def test_a_cpu_platform_gets_its_own_session_where_autogroup_exists() -> None:
    settings = Settings()
    platform = load_platform(settings.config_dir / "local.yaml", settings.config_dir)
    assert session_plan(settings, platform, autogroup=True, leader=False) == "new session"
    assert session_plan(settings, platform, autogroup=True, leader=True) == "renice"
    assert session_plan(settings, platform, autogroup=False, leader=False) == "serve here"
