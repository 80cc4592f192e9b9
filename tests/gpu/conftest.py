"""GPU tests: run with `make test-gpu` on a machine with NVIDIA GPUs and `.[gpu]` installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpus = _gpu_count()
    for item in items:
        if "gpu" not in item.keywords:
            continue
        needed = item.get_closest_marker("gpu").kwargs.get("count", 1)
        if gpus < needed:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} NVIDIA GPU(s), found {gpus}"))
