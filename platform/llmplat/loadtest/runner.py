"""Run a scenario: teams and keys, Locust headless in a child process, verdict, report.

Locust runs in its own process (``python -m locust``): it monkey-patches the standard
library for gevent at import, which must not happen in a process that also runs asyncio
(the CLI's callers, the test suite). Keys reach it through its environment only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from llmplat.loadtest.provision import ProvisionError, TeamProvisioner
from llmplat.loadtest.report import RunInfo, summary_text, write_report
from llmplat.loadtest.results import Results, analyse, load_samples
from llmplat.loadtest.scenario import RunSpec, Scenario
from llmplat.loadtest.verdict import Verdict, judge
from llmplat.settings import child_environment

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_BROKEN = 0, 1, 2, 3
STOP_TIMEOUT_S = 10
"""Seconds Locust lets requests in flight finish at the end before stopping its users."""
GRACE_S = 120


class RunError(RuntimeError):
    """The run could not happen or broke (platform unreachable, Locust failed)."""


@dataclass
class RunOptions:
    scenario: Scenario
    host: str
    out_dir: Path
    loadtests_dir: Path
    admin_token: str | None = None
    keys: dict[str, str] = field(default_factory=dict, repr=False)
    model: str | None = None
    team_prefix: str = "lt-"
    keep_teams: bool = False
    seed: int = 0
    progress: Callable[[str], None] = lambda _msg: None


@dataclass
class RunOutcome:
    results: Results
    verdict: Verdict
    out_dir: Path
    report: Path
    summary: str

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.verdict.passed else EXIT_FAIL


def _locust_command(opts: RunOptions) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(opts.loadtests_dir / "locustfile.py"),
        "--headless",
        "--host",
        opts.host,
        "--csv",
        str(opts.out_dir / "locust"),
        "--csv-full-history",
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--loglevel",
        "INFO",
    ]


def _run_locust(opts: RunOptions, spec_path: Path, keys: dict[str, str]) -> None:
    env = child_environment(
        {
            "LLMPLAT_LOADTEST__RUN_SPEC": str(spec_path),
            **{f"LLMPLAT_LOADTEST__KEYS__{t.upper()}": k for t, k in keys.items()},
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = opts.out_dir / "locust.log"
    duration = opts.scenario.duration_s
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _locust_command(opts),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=opts.out_dir,
            start_new_session=True,
        )
        started = time.monotonic()
        starts = opts.scenario.phase_starts()
        announced = 0
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - started
                while announced < len(starts) and elapsed >= starts[announced]:
                    p = opts.scenario.phases[announced]
                    users = ", ".join(f"{t} {n}" for t, n in p.users.items() if n)
                    opts.progress(f"phase {p.name} ({p.duration_s:.0f} s): {users} users")
                    announced += 1
                if elapsed > duration + STOP_TIMEOUT_S + GRACE_S:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(30)
                    raise RunError(f"Locust did not finish within {duration:.0f} s + grace")
                time.sleep(0.5)
        except KeyboardInterrupt:
            opts.progress("interrupted: stopping Locust, the report covers what ran")
            proc.send_signal(signal.SIGINT)
            proc.wait(STOP_TIMEOUT_S + 30)
    if proc.returncode not in (0, -signal.SIGINT):
        tail = log.read_text(errors="replace")[-2000:]
        raise RunError(f"Locust exited with {proc.returncode}; end of {log}:\n{tail}")


def run_loadtest(opts: RunOptions) -> RunOutcome:
    """Provision, run, judge, report; raises RunError/ProvisionError when the run breaks."""
    # Locust runs inside out_dir: every path handed to it must not depend on our cwd.
    opts.out_dir = opts.out_dir.resolve()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with TeamProvisioner(opts.host, opts.admin_token, prefix=opts.team_prefix) as prov:
        try:
            opts.progress(f"preparing teams and keys at {opts.host}")
            provisioned = prov.provision(opts.scenario, opts.keys)
            prov.wait_until_keys_work()
            model = opts.model or opts.scenario.model or prov.first_model()
            spec = RunSpec(
                scenario=opts.scenario,
                model=model,
                team_names=provisioned.team_names,
                samples_path=opts.out_dir / "samples.csv",
                seed=opts.seed,
            )
            spec_path = opts.out_dir / "run.json"
            spec_path.write_text(spec.model_dump_json(indent=2))
            opts.progress(
                f"running {opts.scenario.name} for {opts.scenario.duration_s:.0f} s "
                f"against {model} (Locust log: {opts.out_dir / 'locust.log'})"
            )
            _run_locust(opts, spec_path, provisioned.keys)
        finally:
            for problem in prov.cleanup(delete_teams=not opts.keep_teams):
                opts.progress(f"cleanup: {problem}")
    results = analyse(opts.scenario, load_samples(spec.samples_path))
    verdict = judge(results)
    files = tuple(sorted(p.name for p in opts.out_dir.iterdir()) + ["report.html", "summary.json"])
    info = RunInfo(opts.host, model, started, provisioned.team_names, tuple(sorted(set(files))))
    report = write_report(opts.out_dir / "report.html", results, verdict, info)
    summary = summary_text(results, verdict)
    (opts.out_dir / "summary.json").write_text(
        json.dumps(
            {
                "scenario": opts.scenario.name,
                "host": opts.host,
                "model": model,
                "started": started,
                "passed": verdict.passed,
                "checks": [c.as_dict() for c in verdict.checks],
                "teams": {t: s.as_dict() for t, s in results.measured.items()},
                "overall": {t: s.as_dict() for t, s in results.overall.items()},
                "phases": {
                    p: {t: s.as_dict() for t, s in teams.items()}
                    for p, teams in results.by_phase.items()
                },
                "team_names": provisioned.team_names,
            },
            indent=2,
        )
    )
    return RunOutcome(results, verdict, opts.out_dir, report, summary)


__all__ = ["ProvisionError", "RunError", "RunOptions", "RunOutcome", "run_loadtest"]
