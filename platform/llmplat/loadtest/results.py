"""From the run's samples (one CSV row per request) to numbers per team, phase and time."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmplat.loadtest.scenario import Scenario

Outcome = str  # "ok" | "rejected" | "error"


@dataclass(frozen=True)
class Sample:
    """One request as the load generator saw it (times in ms, ``elapsed_s`` from the start)."""

    elapsed_s: float
    phase: str
    team: str
    user: str
    outcome: Outcome
    status: int
    error: str
    e2e_ms: float
    ttft_ms: float | None
    itl_ms: float | None
    prompt_tokens: int
    completion_tokens: int


def _opt(value: str) -> float | None:
    return float(value) if value else None


def load_samples(path: Path) -> list[Sample]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            Sample(
                elapsed_s=float(row["elapsed_s"]),
                phase=row["phase"],
                team=row["team"],
                user=row["user"],
                outcome=row["outcome"],
                status=int(row["status"] or 0),
                error=row["error"],
                e2e_ms=float(row["e2e_ms"] or 0),
                ttft_ms=_opt(row["ttft_ms"]),
                itl_ms=_opt(row["itl_ms"]),
                prompt_tokens=int(row["prompt_tokens"] or 0),
                completion_tokens=int(row["completion_tokens"] or 0),
            )
            for row in csv.DictReader(f)
        ]


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class Stats:
    """A team's requests over some span of the run."""

    requests: int = 0
    ok: int = 0
    rejected: int = 0
    errors: int = 0
    duration_s: float = 0.0
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p95_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p95_ms: float | None = None
    completion_tokens: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        """Failed share of the requests that were not rejected by a quota."""
        answered = self.ok + self.errors
        return self.errors / answered if answered else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "error_rate": self.error_rate,
            "requests_per_s": self.requests_per_s,
            "tokens_per_s": self.tokens_per_s,
        }


def stats_of(samples: list[Sample], duration_s: float) -> Stats:
    ok = [s for s in samples if s.outcome == "ok"]
    ttft = [s.ttft_ms for s in ok if s.ttft_ms is not None]
    itl = [s.itl_ms for s in ok if s.itl_ms is not None]
    e2e = [s.e2e_ms for s in ok]
    codes: dict[str, int] = {}
    for s in samples:
        if s.outcome != "ok":
            label = f"{s.status} {s.error}".strip()
            codes[label] = codes.get(label, 0) + 1
    return Stats(
        requests=len(samples),
        ok=len(ok),
        rejected=sum(s.outcome == "rejected" for s in samples),
        errors=sum(s.outcome == "error" for s in samples),
        duration_s=duration_s,
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p95_ms=percentile(ttft, 95),
        ttft_p99_ms=percentile(ttft, 99),
        itl_p50_ms=percentile(itl, 50),
        itl_p95_ms=percentile(itl, 95),
        e2e_p50_ms=percentile(e2e, 50),
        e2e_p95_ms=percentile(e2e, 95),
        completion_tokens=sum(s.completion_tokens for s in ok),
        error_codes=codes,
    )


@dataclass
class Results:
    """Every number the verdict and the report use."""

    scenario: Scenario
    samples: list[Sample]
    by_phase: dict[str, dict[str, Stats]]
    """Phase → team → stats (teams that ran in that phase)."""
    measured: dict[str, Stats]
    """Team → stats over the measured phases (the TTFT objectives)."""
    overall: dict[str, Stats]
    """Team → stats over the whole run (errors, rejections)."""


def analyse(scenario: Scenario, samples: list[Sample]) -> Results:
    by_phase: dict[str, dict[str, Stats]] = {}
    for phase in scenario.phases:
        teams = [t for t, n in phase.users.items() if n]
        by_phase[phase.name] = {
            t: stats_of(
                [s for s in samples if s.phase == phase.name and s.team == t], phase.duration_s
            )
            for t in teams
        }
    measured_phases = {p.name for p in scenario.phases if p.measure}
    measured_s = sum(p.duration_s for p in scenario.phases if p.measure)
    teams = [t for t in scenario.teams if scenario.max_users(t)]
    measured = {
        t: stats_of([s for s in samples if s.team == t and s.phase in measured_phases], measured_s)
        for t in teams
    }
    overall = {t: stats_of([s for s in samples if s.team == t], scenario.duration_s) for t in teams}
    return Results(scenario, samples, by_phase, measured, overall)


@dataclass(frozen=True)
class Series:
    """Per-team values per time bucket (bucket start times in seconds)."""

    t: list[float]
    values: dict[str, list[float | None]]


def bucket_size(duration_s: float) -> float:
    """About 40 points per plot, never under 2 s."""
    return max(2.0, round(duration_s / 40))


def time_series(results: Results, metric: str, bucket_s: float) -> Series:
    """``ttft_p50``, ``ttft_p95``, ``tokens_per_s``, ``rejected_per_s``, ``requests_per_s``."""
    duration = results.scenario.duration_s
    n = max(1, int(np.ceil(duration / bucket_s)))
    t = [i * bucket_s for i in range(n)]
    buckets: dict[str, list[list[Sample]]] = {}
    for s in results.samples:
        i = min(n - 1, int(s.elapsed_s // bucket_s))
        buckets.setdefault(s.team, [[] for _ in range(n)])[i].append(s)
    values: dict[str, list[float | None]] = {}
    for team, rows in sorted(buckets.items()):
        values[team] = [_bucket_value(b, metric, bucket_s) for b in rows]
    return Series(t, values)


def _bucket_value(rows: list[Sample], metric: str, bucket_s: float) -> float | None:
    if metric.startswith("ttft_p"):
        ttft = [s.ttft_ms for s in rows if s.outcome == "ok" and s.ttft_ms is not None]
        return percentile(ttft, float(metric.removeprefix("ttft_p")))
    if metric == "tokens_per_s":
        return sum(s.completion_tokens for s in rows if s.outcome == "ok") / bucket_s
    if metric == "rejected_per_s":
        return sum(s.outcome == "rejected" for s in rows) / bucket_s
    if metric == "requests_per_s":
        return len(rows) / bucket_s
    raise ValueError(f"unknown metric {metric}")
