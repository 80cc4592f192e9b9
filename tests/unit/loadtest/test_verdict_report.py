"""Objectives → checks with numbers, and the report built from them (synthetic samples)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from llmplat.loadtest.report import RunInfo, render_html, summary_text
from llmplat.loadtest.results import Sample, analyse, load_samples
from llmplat.loadtest.scenario import Scenario
from llmplat.loadtest.verdict import judge, phase_within_objectives

SCENARIO = Scenario.model_validate(
    {
        "name": "nn",
        "teams": {
            "chat": {"user": "chat"},
            "ci": {"user": "ci"},
            "noisy": {"user": "chat", "limits": {"requests_per_minute": 5}},
        },
        "phases": [
            {"name": "warm", "duration_s": 10, "users": {"chat": 1}, "measure": False},
            {"name": "base", "duration_s": 20, "users": {"chat": 2, "ci": 1}},
            {"name": "flood", "duration_s": 20, "users": {"chat": 2, "ci": 1, "noisy": 4}},
        ],
        "objectives": {
            "ttft_p95_ms": {"chat": 500},
            "max_error_rate": 0.05,
            "rejections": {"chat": "none", "ci": "none", "noisy": "some"},
            "fairness": {
                "baseline": "base",
                "during": "flood",
                "teams": ["chat"],
                "max_ratio": 1.5,
                "slack_ms": 50,
            },
        },
    }
)


def _s(t: float, phase: str, team: str, outcome: str = "ok", ttft: float | None = 100.0) -> Sample:
    status = {"ok": 200, "rejected": 429, "error": 502}[outcome]
    return Sample(
        elapsed_s=t,
        phase=phase,
        team=team,
        user="ci" if team == "ci" else "chat",
        outcome=outcome,
        status=status,
        error="" if outcome == "ok" else "rate_limit_exceeded",
        e2e_ms=900.0,
        ttft_ms=ttft if outcome == "ok" and team != "ci" else None,
        itl_ms=10.0 if outcome == "ok" and team != "ci" else None,
        prompt_tokens=50,
        completion_tokens=64 if outcome == "ok" else 0,
    )


def _run(flood_ttft: float, noisy_outcome: str = "rejected", chat_extra: list | None = None):
    samples = [_s(1 + i, "warm", "chat", ttft=5000) for i in range(3)]  # warm-up: not judged
    samples += [_s(10 + i, "base", "chat", ttft=100 + i) for i in range(20)]
    samples += [_s(10 + i, "base", "ci") for i in range(5)]
    samples += [_s(30 + i / 2, "flood", "chat", ttft=flood_ttft) for i in range(20)]
    samples += [_s(30 + i, "flood", "ci") for i in range(5)]
    samples += [
        _s(30 + i / 4, "flood", "noisy", "ok" if i < 5 else noisy_outcome) for i in range(40)
    ]
    samples += chat_extra or []
    return analyse(SCENARIO, samples)


def _checks(results) -> dict[tuple[str, str], object]:
    return {(c.team, c.name): c for c in judge(results).checks}


def test_fair_run_passes_with_numbers() -> None:
    results = _run(flood_ttft=150)
    verdict = judge(results)
    assert verdict.passed, [c for c in verdict.checks if not c.passed]
    checks = _checks(results)
    fair = checks[("chat", "TTFT p95 under flood")]
    assert "baseline 118 ms" in fair.measured and "<= 227 ms" in fair.limit
    assert checks[("noisy", "429 rejections")].measured == "35 of 40"
    # warm-up's 5 s TTFTs are excluded from the objective but present overall
    assert results.measured["chat"].ttft_p95_ms < 200 < results.overall["chat"].ttft_p95_ms
    assert results.by_phase["flood"]["noisy"].requests_per_s == 2.0


def test_each_objective_can_fail() -> None:
    slow = _checks(_run(flood_ttft=400))
    assert not slow[("chat", "TTFT p95 under flood")].passed
    assert slow[("chat", "TTFT p95 (measured phases)")].passed  # 400 ms is within 500 ms
    unlimited = _checks(_run(flood_ttft=150, noisy_outcome="ok"))
    assert not unlimited[("noisy", "429 rejections")].passed
    chat_limited = [_s(40, "flood", "chat", "rejected")]
    assert not _checks(_run(150, chat_extra=chat_limited))[("chat", "429 rejections")].passed
    errors = [_s(40 + i / 10, "flood", "chat", "error") for i in range(3)]
    check = _checks(_run(150, chat_extra=errors))[("chat", "error rate")]
    assert not check.passed and "3 of 46" in check.measured  # warm-up counts for errors
    too_slow = _checks(_run(flood_ttft=900))[("chat", "TTFT p95 (measured phases)")]
    assert not too_slow.passed


def test_no_data_fails_rather_than_passes() -> None:
    results = analyse(SCENARIO, [_s(12, "base", "ci")])
    checks = _checks(results)
    assert not checks[("chat", "answered")].passed
    assert not checks[("chat", "TTFT p95 (measured phases)")].passed
    assert checks[("chat", "TTFT p95 (measured phases)")].measured == "no data"
    assert not checks[("chat", "TTFT p95 under flood")].passed
    assert not judge(results).passed


def test_phase_within_objectives() -> None:
    results = _run(flood_ttft=900)
    assert phase_within_objectives(results, "base") == {"chat": True, "ci": True}
    assert phase_within_objectives(results, "flood") == {"chat": False, "ci": True, "noisy": None}


def test_summary_and_html_report(tmp_path: Path) -> None:
    results = _run(flood_ttft=400)
    verdict = judge(results)
    text = summary_text(results, verdict)
    assert "verdict: FAIL (1 checks)" in text
    assert re.search(r"FAIL\s+chat\s+TTFT p95 under flood", text)
    assert re.search(r"flood\s+noisy\s+4\s+40\s+2\.00\s+35\s+0", text)
    info = RunInfo("http://h:1", "tiny-mixtral", "2026-01-01T00:00:00+00:00", {"chat": "lt-chat"})
    page = render_html(results, verdict, info)
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    # one file that opens offline: nothing loaded from anywhere
    assert not re.search(r"<script|<link|<img|src=|@import|url\((?!#)", page)
    assert "class='verdict FAIL'" in page and "lt-chat" in page
    # every phase boundary is labelled on the plots
    assert all(page.count(f">{p}<") >= 3 for p in ("base", "flood"))


def test_samples_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    fields = ["time", "elapsed_s", "phase", "team", "user", "outcome", "status", "error",
              "e2e_ms", "ttft_ms", "itl_ms", "prompt_tokens", "completion_tokens", "tokens_per_s"]  # fmt: skip
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerow([1.0, 0.5, "base", "ci", "ci", "ok", 200, "", 1000, "", "", 10, 20, 20])
        w.writerow([1.0, 0.7, "base", "chat", "chat", "rejected", 429, "rate_limit_exceeded",
                    2, "", "", 0, 0, ""])  # fmt: skip
    rows = load_samples(path)
    assert rows[0].ttft_ms is None and rows[0].completion_tokens == 20
    assert rows[1].outcome == "rejected" and rows[1].status == 429
    assert load_samples(tmp_path / "missing.csv") == []
