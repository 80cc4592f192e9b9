"""The run's report: a self-contained HTML file (plots as inline SVG) and a terminal summary."""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

from llmplat.loadtest.results import Results, Stats, bucket_size, time_series  # noqa: E402
from llmplat.loadtest.verdict import Verdict, phase_within_objectives  # noqa: E402


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run besides its numbers (never a key)."""

    host: str
    model: str
    started: str
    team_names: dict[str, str]
    files: tuple[str, ...] = ()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


_TEAM_COLUMNS = ("requests", "req/s", "ok", "429", "errors", "TTFT p50", "TTFT p95", "TTFT p99",
                 "ITL p50", "ITL p95", "e2e p50", "e2e p95", "tok/s")  # fmt: skip


def _team_row(s: Stats) -> tuple[str, ...]:
    return (
        str(s.requests),
        f"{s.requests_per_s:.2f}",
        str(s.ok),
        str(s.rejected),
        str(s.errors),
        _ms(s.ttft_p50_ms),
        _ms(s.ttft_p95_ms),
        _ms(s.ttft_p99_ms),
        _ms(s.itl_p50_ms),
        _ms(s.itl_p95_ms),
        _ms(s.e2e_p50_ms),
        _ms(s.e2e_p95_ms),
        f"{s.tokens_per_s:.1f}",
    )


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def phase_rows(results: Results) -> list[tuple[str, ...]]:
    """phase, team, users, requests, req/s, 429, errors, TTFT p50, TTFT p95, tok/s, within."""
    rows = []
    for phase in results.scenario.phases:
        within = phase_within_objectives(results, phase.name)
        for team, s in results.by_phase[phase.name].items():
            rows.append(
                (
                    phase.name + ("" if phase.measure else " (warm-up)"),
                    team,
                    str(phase.users[team]),
                    str(s.requests),
                    f"{s.requests_per_s:.2f}",
                    str(s.rejected),
                    str(s.errors),
                    _ms(s.ttft_p50_ms),
                    _ms(s.ttft_p95_ms),
                    f"{s.tokens_per_s:.1f}",
                    _yes_no(within[team]),
                )
            )
    return rows


PHASE_COLUMNS = ("phase", "team", "users", "requests", "req/s", "429", "errors", "TTFT p50",
                 "TTFT p95", "tok/s", "within objectives")  # fmt: skip


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 2) -> str:
    """Plain-text columns; the first ``left`` are left-aligned, the rest right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i < left else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


def summary_text(results: Results, verdict: Verdict) -> str:
    """The table `llmplat loadtest` prints: per phase and team, then every check."""
    lines = [f"scenario {results.scenario.name}: {len(results.samples)} requests", ""]
    lines.append(_text_table(PHASE_COLUMNS, phase_rows(results)))
    lines.append("")
    check_rows = [
        ("PASS" if c.passed else "FAIL", c.team, c.name, c.measured, c.limit)
        for c in verdict.checks
    ]
    lines.append(_text_table(("", "team", "check", "measured", "objective"), check_rows, left=5))
    lines.append("")
    lines.append(
        "verdict: PASS" if verdict.passed else f"verdict: FAIL ({len(verdict.failed)} checks)"
    )
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------


def _svg(fig: plt.Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _plot(results: Results, metrics: list[tuple[str, str]], ylabel: str, title: str) -> str:
    """Lines per team (and per metric, dashed for the second), phases shaded."""
    bucket = bucket_size(results.scenario.duration_s)
    fig, ax = plt.subplots(figsize=(9.5, 3.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    teams = [t for t in results.scenario.teams if results.scenario.max_users(t)]
    for j, (metric, label) in enumerate(metrics):
        series = time_series(results, metric, bucket)
        for i, team in enumerate(teams):
            ys = series.values.get(team)
            if ys is None or all(y is None for y in ys):
                continue
            ax.plot(
                [t + bucket / 2 for t in series.t],
                [float("nan") if y is None else y for y in ys],
                color=colors[i % len(colors)],
                linestyle="-" if j == 0 else "--",
                marker="." if j == 0 else None,
                label=f"{team} {label}".strip(),
            )
    for k, (start, phase) in enumerate(
        zip(results.scenario.phase_starts(), results.scenario.phases, strict=True)
    ):
        if k % 2:
            ax.axvspan(start, start + phase.duration_s, color="0.93", zorder=0)
        ax.text(start + 0.5, 1.0, phase.name, transform=ax.get_xaxis_transform(), va="bottom",
                fontsize=8, color="0.35")  # fmt: skip
    ax.set_xlim(0, results.scenario.duration_s)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"seconds since start ({bucket:g} s buckets)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left", pad=14)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def plots(results: Results) -> list[str]:
    return [
        _plot(
            results,
            [("ttft_p95", "p95"), ("ttft_p50", "p50")],
            "time to first token (ms)",
            "Time to first token per team (streaming requests): p95 solid, p50 dashed",
        ),
        _plot(results, [("tokens_per_s", "")], "tokens/s", "Completion tokens per second per team"),
        _plot(
            results,
            [("rejected_per_s", "429/s"), ("requests_per_s", "req/s")],
            "per second",
            "Quota rejections (429, solid) and requests sent (dashed) per team",
        ),
    ]


def _table(
    header: tuple[str, ...], rows: list[tuple[str, ...]], classes: list[str] | None = None
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
td:first-child,th:first-child,td:nth-child(2){text-align:left}
th{background:#f4f4f4}.fail td{background:#fde2e2}.pass td:first-child{color:#176b2c}
.verdict{display:inline-block;padding:.2em .7em;border-radius:4px;color:#fff;font-weight:600}
.PASS{background:#1f8a3b}.FAIL{background:#c62828}.meta{color:#555;font-size:.9em}
svg{max-width:100%;height:auto}
"""

_HOW_TO_READ = """
<ul>
<li><b>Checks</b> are the scenario's objectives; each shows what was measured and the limit.
The command's exit status is 0 only when every check passes.</li>
<li><b>TTFT</b> (time to first token) is measured by the load generator from sending the
request to the first generated text of a streamed answer; <b>ITL</b> (inter-token latency)
is the mean time between tokens of a stream; <b>e2e</b> is the whole request. All in ms.</li>
<li><b>429</b> counts quota rejections (rate limits); they are not errors, but a team the
scenario expects to stay within its quota must receive none. Errors are every other failure.</li>
<li><b>Measured phases</b> exclude warm-up. A phase is <i>within objectives</i> when its own
TTFT p95 and error rate meet the limits: in a stepped scenario, the last such phase is the
load this deployment serves within its objectives.</li>
<li>Under a flood, the quiet teams' TTFT p95 is compared to the baseline phase of the same run
(the margin is a ratio plus a fixed slack), so the check does not depend on the machine.</li>
</ul>
"""


def render_html(results: Results, verdict: Verdict, info: RunInfo) -> str:
    sc = results.scenario
    word = "PASS" if verdict.passed else "FAIL"
    team_rows = [
        (
            t,
            info.team_names.get(t, "?"),
            spec.user,
            spec.priority_class,
            ", ".join(f"{k}={v}" for k, v in spec.limits.model_dump(exclude_none=True).items())
            or "unlimited",
            f"{spec.think[0]:g}-{spec.think[1]:g} s",
        )
        for t, spec in sc.teams.items()
    ]
    phase_plan = [
        (
            p.name,
            f"{p.duration_s:.0f} s",
            ", ".join(f"{t}: {n}" for t, n in p.users.items() if n),
            "yes" if p.measure else "no (warm-up)",
        )  # fmt: skip
        for p in sc.phases
    ]
    checks = [
        ("PASS" if c.passed else "FAIL", c.team, c.name, c.measured, c.limit)
        for c in verdict.checks
    ]
    check_classes = ["pass" if c.passed else "fail" for c in verdict.checks]
    measured = [(t, *_team_row(s)) for t, s in results.measured.items()]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Load test {html.escape(sc.name)}: {word}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Load test <code>{html.escape(sc.name)}</code> "
        f"<span class='verdict {word}'>{word}</span></h1>",
        f"<p>{html.escape(sc.description)}</p>",
        f"<p class='meta'>host {html.escape(info.host)} &middot; model {html.escape(info.model)}"
        f" &middot; started {html.escape(info.started)} &middot; {sc.duration_s:.0f} s &middot; "
        f"{len(results.samples)} requests</p>",
        "<h2>Checks</h2>",
        _table(("", "team", "check", "measured", "objective"), checks, check_classes),
        "<h2>Teams (measured phases)</h2>",
        _table(("team", *_TEAM_COLUMNS), measured),
        "<h2>Phases</h2>",
        _table(PHASE_COLUMNS, phase_rows(results)),
        "<h2>Over time</h2>",
        *(f"<figure>{svg}</figure>" for svg in plots(results)),
        "<h2>Scenario</h2>",
        _table(("team", "platform team", "user", "priority", "quotas", "think time"), team_rows),
        _table(("phase", "duration", "users", "measured"), phase_plan),
        "<h2>How to read this report</h2>",
        _HOW_TO_READ,
    ]
    if info.files:
        parts.append("<h2>Files</h2><ul>")
        parts.extend(f"<li><code>{html.escape(f)}</code></li>" for f in info.files)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, results: Results, verdict: Verdict, info: RunInfo) -> Path:
    path.write_text(render_html(results, verdict, info))
    return path
