"""`llmplat loadtest` against the real platform (Ray Serve + vLLM-CPU): smoke and
noisy-neighbour, shortened, judged by their own objectives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _loadtest(live, scenario: str, duration: str, out: Path) -> tuple[dict, str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "llmplat", "loadtest", "--scenario", scenario,
         "--host", live.url, "--duration", duration, "--out", str(out)],
        env={**os.environ, "LLMPLAT_ADMIN_TOKEN": live.admin_token},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    print(f"\n{scenario} ({duration}) took {time.monotonic() - t0:.0f} s:\n{proc.stdout}")
    assert proc.returncode in (0, 1), output  # 2/3: the run itself broke
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == (0 if summary["passed"] else 1)
    assert live.admin_token not in output
    for path in out.iterdir():
        assert live.admin_token.encode() not in path.read_bytes(), path
    return summary, output


def _failed(summary: dict) -> list[dict]:
    """Failed checks other than latency: on a shared 2-core machine TTFT objectives are
    measured and reported (the runner's exit code and report carry them), not asserted here."""
    return [c for c in summary["checks"] if not c["passed"] and not c["name"].startswith("TTFT")]


def _latency_checks(summary: dict) -> list[dict]:
    return [c for c in summary["checks"] if c["name"].startswith("TTFT")]


def test_smoke_passes_against_the_real_platform(live, tmp_path: Path) -> None:
    summary, _ = _loadtest(live, "smoke", "45s", tmp_path / "smoke")
    assert not _failed(summary), _failed(summary)
    assert _latency_checks(summary)
    for team in ("chat", "ide", "ci"):
        stats = summary["overall"][team]
        assert stats["ok"] > 0 and stats["rejected"] == 0 and stats["errors"] == 0, team
    assert summary["teams"]["chat"]["ttft_p95_ms"] > 0
    assert (tmp_path / "smoke" / "report.html").stat().st_size > 20_000


def test_noisy_neighbour_limits_only_the_noisy_team(live, tmp_path: Path) -> None:
    summary, _ = _loadtest(live, "noisy-neighbour", "100s", tmp_path / "noisy")
    overall = summary["overall"]
    assert overall["noisy"]["rejected"] > 0, "the flooding team was not limited"
    assert overall["noisy"]["ok"] > 0, "the flooding team got nothing at all"
    for team in ("chat", "ide", "ci"):
        assert overall[team]["rejected"] == 0, f"quiet team {team} was limited"
        assert overall[team]["ok"] > 0
    assert not _failed(summary), _failed(summary)
    assert {c["name"] for c in _latency_checks(summary)} >= {"TTFT p95 under flood"}
    # the runner's teams and keys are gone afterwards
    admin = {"Authorization": f"Bearer {live.admin_token}"}
    teams = httpx.get(f"{live.url}/admin/teams", headers=admin).json()["data"]
    assert not [t["name"] for t in teams if t["name"].startswith("lt-")]
