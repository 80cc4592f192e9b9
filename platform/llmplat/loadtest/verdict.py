"""Objectives → checks, each with the number it measured and the limit it was held to."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmplat.loadtest.results import Results, Stats


@dataclass(frozen=True)
class Check:
    name: str
    team: str
    passed: bool
    measured: str
    limit: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _ms(value: float | None) -> str:
    return "no data" if value is None else f"{value:.0f} ms"


def _answered(team: str, stats: Stats) -> Check:
    return Check(
        "answered",
        team,
        stats.ok > 0,
        f"{stats.ok}/{stats.requests} ok",
        "at least one successful request",
    )


def _error_rate(team: str, stats: Stats, limit: float) -> Check:
    return Check(
        "error rate",
        team,
        stats.error_rate <= limit,
        f"{stats.error_rate:.2%} ({stats.errors} of {stats.ok + stats.errors})",
        f"<= {limit:.2%} (429s not counted)",
    )


def _rejections(team: str, stats: Stats, expect: str) -> Check:
    passed = {"none": stats.rejected == 0, "some": stats.rejected > 0, "any": True}[expect]
    limit = {"none": "== 0", "some": "> 0", "any": "any"}[expect]
    return Check("429 rejections", team, passed, f"{stats.rejected} of {stats.requests}", limit)


def _ttft(team: str, stats: Stats, limit_ms: float) -> Check:
    p95 = stats.ttft_p95_ms
    return Check(
        "TTFT p95 (measured phases)",
        team,
        p95 is not None and p95 <= limit_ms,
        _ms(p95),
        f"<= {limit_ms:.0f} ms",
    )


def _fairness(team: str, base: Stats | None, during: Stats | None, ratio: float, slack: float):
    b = base.ttft_p95_ms if base else None
    d = during.ttft_p95_ms if during else None
    if b is None or d is None:
        return Check("TTFT p95 under flood", team, False, f"{_ms(b)} → {_ms(d)}", "needs both")
    allowed = b * ratio + slack
    return Check(
        "TTFT p95 under flood",
        team,
        d <= allowed,
        f"{d:.0f} ms (baseline {b:.0f} ms, x{d / b:.2f})" if b else f"{d:.0f} ms",
        f"<= {allowed:.0f} ms (baseline x{ratio:g} + {slack:.0f} ms)",
    )


def judge(results: Results) -> Verdict:
    obj = results.scenario.objectives
    checks: list[Check] = []
    for team, stats in results.overall.items():
        checks.append(_answered(team, stats))
        checks.append(_error_rate(team, stats, obj.max_error_rate))
    for team, expect in obj.rejections.items():
        if team in results.overall:
            checks.append(_rejections(team, results.overall[team], expect))
    for team, limit in obj.ttft_p95_ms.items():
        checks.append(_ttft(team, results.measured.get(team, Stats()), limit))
    if (fair := obj.fairness) is not None:
        base, during = results.by_phase[fair.baseline], results.by_phase[fair.during]
        for team in fair.teams:
            checks.append(
                _fairness(team, base.get(team), during.get(team), fair.max_ratio, fair.slack_ms)
            )
    return Verdict(tuple(checks))


def phase_within_objectives(results: Results, phase: str) -> dict[str, bool | None]:
    """Per team: did this phase alone meet the TTFT and error objectives (None: no TTFT goal)."""
    obj = results.scenario.objectives
    out: dict[str, bool | None] = {}
    for team, stats in results.by_phase[phase].items():
        if stats.requests == 0:
            out[team] = None
            continue
        ok = stats.error_rate <= obj.max_error_rate and stats.ok > 0
        if team in obj.ttft_p95_ms:
            p95 = stats.ttft_p95_ms
            ok = ok and p95 is not None and p95 <= obj.ttft_p95_ms[team]
        elif obj.rejections.get(team) == "some":
            ok = None  # the flooding team: its limits are the point, not its latency
        out[team] = ok
    return out
