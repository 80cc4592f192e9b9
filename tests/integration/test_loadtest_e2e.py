"""`llmplat loadtest` against the real platform (Ray Serve + vLLM-CPU): smoke and
noisy-neighbour, shortened, judged by their own objectives."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from support.readme import DOCS, REPO, VENV_BIN, code_blocks, shell_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600, func_only=True)]


def _readme_command(readme: Path, scenario: str, live) -> str:
    """The load test command for ``scenario`` a page shows, with the platform's address."""
    lines = {
        line
        for block in code_blocks(readme, "sh")
        for line in shell_lines(block)
        if f"--scenario {scenario} --host http://127.0.0.1:8000" in line
    }
    assert len(lines) == 1, f"{readme.name} shows the local {scenario} run as {sorted(lines)}"
    return lines.pop().replace("http://127.0.0.1:8000", live.url)


def _loadtest(live, command: str, cwd: Path, out: Path | None) -> tuple[dict, Path]:
    """Run ``command`` as a user would (venv on PATH, admin token exported, from ``cwd``);
    its results are in ``out``, else in the one folder under ./loadtest-results/."""
    t0 = time.monotonic()
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPLAT_")}
    env |= {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env |= {"LLMPLAT_ADMIN_TOKEN": live.admin_token}
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    output = proc.stdout + proc.stderr
    print(f"\n{command} took {time.monotonic() - t0:.0f} s:\n{proc.stdout}")
    assert proc.returncode in (0, 1), output  # 2/3: the run itself broke
    if out is None:
        (out,) = (cwd / "loadtest-results").iterdir()
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == (0 if summary["passed"] else 1)
    assert live.admin_token not in output
    for path in out.iterdir():
        assert live.admin_token.encode() not in path.read_bytes(), path
    return summary, out


def _failed(summary: dict) -> list[dict]:
    """Failed checks other than latency: on a shared 2-core machine TTFT objectives are
    measured and reported (the runner's exit code and report carry them), not asserted here."""
    return [c for c in summary["checks"] if not c["passed"] and not c["name"].startswith("TTFT")]


def _latency_checks(summary: dict) -> list[dict]:
    return [c for c in summary["checks"] if c["name"].startswith("TTFT")]


def test_smoke_as_the_readme_shows_it(live, tmp_path: Path) -> None:
    """loadtests/README.md's command as written (but for the platform's address), from a
    directory outside the checkout: the results land in ./loadtest-results/ there."""
    command = _readme_command(REPO / "loadtests" / "README.md", "smoke", live)
    summary, out = _loadtest(live, command, tmp_path / "work", None)
    assert not _failed(summary), _failed(summary)
    assert _latency_checks(summary)
    for team in ("chat", "ide", "ci"):
        stats = summary["overall"][team]
        assert stats["ok"] > 0 and stats["rejected"] == 0 and stats["errors"] == 0, team
    assert summary["teams"]["chat"]["ttft_p95_ms"] > 0
    assert (out / "report.html").stat().st_size > 20_000


def test_noisy_neighbour_limits_only_the_noisy_team(live, tmp_path: Path) -> None:
    # docs/load-testing.md's command, its optional arguments filled in: 70 s (20 s warm-up, 23 s
    # baseline, 27 s flood), results kept here.
    command = _readme_command(DOCS / "load-testing.md", "noisy-neighbour", live)
    assert "[--users N] [--duration T]" in command, command
    out = tmp_path / "noisy"
    command = command.replace(" [--users N] [--duration T]", f" --duration 70s --out {out}")
    summary, _ = _loadtest(live, command, tmp_path, out)
    overall = summary["overall"]
    assert overall["noisy"]["rejected"] > 0, "the flooding team was not limited"
    assert overall["noisy"]["ok"] > 0, "the flooding team got nothing at all"
    for team in ("chat", "ide", "ci"):
        assert overall[team]["rejected"] == 0, f"quiet team {team} was limited"
        assert overall[team]["ok"] > 0
    assert not _failed(summary), _failed(summary)
    assert {c["name"] for c in _latency_checks(summary)} >= {"TTFT p95 under flood"}
    # Fairness on the real platform, with slack for a shared 2-core machine: the quiet
    # teams' median TTFT under the flood stays within 3x their baseline + 1 s.
    phases = summary["phases"]
    for team in ("chat", "ide"):
        base, flood = phases["baseline"][team]["ttft_p50_ms"], phases["flood"][team]["ttft_p50_ms"]
        assert flood <= 3 * base + 1000, f"{team}: TTFT p50 {base:.0f} -> {flood:.0f} ms"
    # the runner's teams and keys are gone afterwards
    admin = {"Authorization": f"Bearer {live.admin_token}"}
    teams = httpx.get(f"{live.url}/admin/teams", headers=admin).json()["data"]
    assert not [t["name"] for t in teams if t["name"].startswith("lt-")]
