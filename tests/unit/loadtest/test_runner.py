"""Real, short Locust runs against the gateway with the fake engine on loopback HTTP.

Locust runs in a child process (it monkey-patches the standard library for gevent), so
these tests exercise exactly what `llmplat loadtest` does.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

from llmplat.loadtest.results import load_samples
from llmplat.loadtest.runner import RunOptions, run_loadtest
from llmplat.loadtest.scenario import load_scenario
from llmplat.settings import Settings
from support import ADMIN_TOKEN

from .conftest import TOKEN_DELAY_S

LOADTESTS = Settings().loadtest.dir


async def test_noisy_neighbour_run_limits_the_noisy_team_only(paced_url: str, tmp_path: Path):
    scenario = load_scenario("noisy-neighbour", LOADTESTS).scaled(duration_s=9)
    out = tmp_path / "out"
    outcome = await asyncio.to_thread(
        run_loadtest,
        RunOptions(
            scenario=scenario,
            host=paced_url,
            out_dir=out,
            loadtests_dir=LOADTESTS,
            admin_token=ADMIN_TOKEN,
        ),
    )
    print(outcome.summary)
    overall = outcome.results.overall
    assert overall["noisy"].rejected > 0 and overall["noisy"].ok > 0
    assert all(overall[t].rejected == 0 and overall[t].ok > 0 for t in ("chat", "ide", "ci"))
    checks = {(c.team, c.name): c for c in outcome.verdict.checks}
    assert checks[("noisy", "429 rejections")].passed
    assert checks[("chat", "TTFT p95 under flood")].passed
    samples = load_samples(out / "samples.csv")
    ide = [s for s in samples if s.team == "ide" and s.outcome == "ok"]
    # Streams are read as they arrive: tokens come TOKEN_DELAY_S apart after the first one
    # (a buffered read would see them all at once, at the end).
    gap_ms = TOKEN_DELAY_S * 1000 * 0.8
    long = [s for s in ide if s.completion_tokens >= 8]
    assert long and all(s.e2e_ms - s.ttft_ms >= gap_ms * (s.completion_tokens - 1) for s in long)
    assert all(s.itl_ms >= gap_ms for s in long), long
    assert {s.phase for s in samples} == {"warm-up", "baseline", "flood"}
    assert not any(s.team == "noisy" for s in samples if s.phase != "flood")
    # Locust's own statistics carry the per-team metrics.
    with (out / "locust_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]) for r in csv.DictReader(f)}
    assert {
        ("TTFT", "chat"),
        ("ITL", "ide"),
        ("TPS", "ci"),
        ("batch", "ci"),
        ("fim", "ide"),
    } <= rows
    with (out / "locust_failures.csv").open() as f:
        failures = {r["Name"]: r["Error"] for r in csv.DictReader(f)}
    assert set(failures) == {"noisy"} and "429" in failures["noisy"]
    report = (out / "report.html").read_text()
    assert report.count("<svg") == 3 and "<script" not in report and "noisy-neighbour" in report
