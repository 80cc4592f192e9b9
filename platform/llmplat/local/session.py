"""Run a local CPU platform in a session of its own, below interactive sessions on the CPU.

Linux's autogroup scheduler (``kernel.sched_autogroup_enabled``, see sched(7)) shares CPU
time between sessions, not processes. A vLLM-CPU engine keeps every core busy; with the
platform in a session of equal weight, processes of other sessions (the client, an IDE, the
test runner) waited seconds for a core after waking on a small machine under many streams,
which read as requests stuck in front of the gateway; with the platform's session at
autogroup nice 10 the stalls are gone (docs: Benchmarks has the numbers). The clients need
little CPU, so the engine loses nothing to them.

An autogroup belongs to a whole session, so ``llmplat serve`` started from a user's terminal
does not renice the user's shell: it re-runs itself in a new session (forwarding signals to
it) and that session lowers its own autogroup.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")
OWN_AUTOGROUP = Path("/proc/self/autogroup")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SessionError(RuntimeError):
    """The platform's session could not be set up as asked; the message says why."""


def autogroup_enabled(switch: Path = AUTOGROUP_SWITCH) -> bool:
    """Whether the kernel schedules by session (autogroups); False where it cannot tell."""
    try:
        return switch.read_text().strip() == "1"
    except OSError:
        return False


def leads_own_session() -> bool:
    return os.getsid(0) == os.getpid()


def set_autogroup_nice(nice: int, autogroup: Path = OWN_AUTOGROUP) -> None:
    """Lower this session's autogroup to ``nice`` (raising it back needs CAP_SYS_NICE)."""
    try:
        autogroup.write_text(f"{nice}\n")
    except OSError as exc:
        raise SessionError(
            f"cannot set the platform's autogroup nice to {nice} ({autogroup}: "
            f"{exc.strerror}); set LLMPLAT_CPU__AUTOGROUP_NICE=0 to leave it alone"
        ) from exc


def autogroup_nice(autogroup: Path = OWN_AUTOGROUP) -> int | None:
    """The nice value of this session's autogroup ("/autogroup-7 nice 10" → 10)."""
    try:
        return int(autogroup.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def run_in_new_session(argv: Sequence[str]) -> int:
    """Run ``argv`` as the leader of a new session; forward termination signals; its status.

    A process in another session gets no signals from this terminal, so Ctrl-C, ``kill`` and
    a closed terminal reach it through here.
    """
    child = subprocess.Popen(list(argv), start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
