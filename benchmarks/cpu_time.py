"""CPU seconds spent per process kind between two snapshots of /proc: where a run's time went.

The whole machine is counted (it is shared and noisy); processes are grouped by what they are
(the engine's worker threads, vLLM's frontend, the gateway, each Ray daemon), so a benchmark
can print what the platform costs beyond the engine. A process that exits between the two
snapshots is not counted.
"""

from __future__ import annotations

import os
from pathlib import Path

# Ray and vLLM name their processes; the first matching key labels one.
KINDS = (
    ("VLLM::Worker", "engine workers (model compute)"),
    ("EngineCore", "vLLM engine core"),
    ("PlatformLLMServer", "LLMServer replica (vLLM frontend)"),
    ("Gateway", "gateway replica"),
    ("ServeController", "Serve controller"),
    ("ProxyActor", "Serve proxy"),
    ("gcs_server", "Ray GCS"),
    ("raylet", "raylet"),
    ("DashboardAgent", "Ray dashboard agent"),
    ("dashboard.py", "Ray dashboard"),
    ("TelemetryAgent", "Ray telemetry agent"),
    ("monitor.py", "Ray monitor"),
    ("RuntimeEnvAgent", "Ray runtime-env agent"),
    ("ray::IDLE", "idle Ray workers"),
    ("vllm", "vLLM API server"),
    ("serving.py", "benchmark client"),
)

_TICK = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[int, tuple[str, float]]:
    """pid → (command line, CPU seconds so far) for every process."""
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        name = cmd or stat[stat.find("(") + 1 : stat.rfind(")")]
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def kind(command: str) -> str:
    return next((label for key, label in KINDS if key in command), "other")


def spent(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per kind since ``before``, largest first."""
    totals: dict[str, float] = {}
    for pid, (cmd, seconds) in snapshot().items():
        label = kind(cmd)
        totals[label] = totals.get(label, 0.0) + seconds - before.get(pid, (cmd, 0.0))[1]
    return dict(sorted(((k, round(v, 1)) for k, v in totals.items()), key=lambda kv: -kv[1]))
