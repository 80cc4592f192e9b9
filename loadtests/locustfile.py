"""Locust entry point of `llmplat loadtest`: one user class per team of the scenario.

The runner starts ``python -m locust -f loadtests/locustfile.py --headless ...`` with
``LLMPLAT_LOADTEST__RUN_SPEC`` naming the run's plan (scenario, model, output paths) and
each team's key in ``LLMPLAT_LOADTEST__KEYS__<TEAM>``. Every user of every team is started
at once; the phases of the scenario decide which of them send requests (user *i* of a team
is active while the phase runs more than *i* of its users), so per-team counts are exact
in every phase. The shape stops the run after the last phase.
"""

from __future__ import annotations

import itertools
import logging
import time

from llm_users import USER_KINDS, LLMUser, SampleSink
from locust import LoadTestShape, events

from llmplat.loadtest.scenario import Phase, RunSpec
from llmplat.settings import Settings

log = logging.getLogger("llmplat.loadtest")


class Plan:
    """The run as the users see it: phases on a clock, keys, request options."""

    def __init__(self, spec: RunSpec, keys: dict[str, str]) -> None:
        self.spec = spec
        self.scenario = spec.scenario
        self.model = spec.model
        self.seed = spec.seed
        self.ignore_eos = spec.scenario.ignore_eos
        self.keys = keys
        self.starts = spec.scenario.phase_starts()
        self.started_at: float | None = None
        self.sink: SampleSink | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.sink = SampleSink(str(self.spec.samples_path))

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def phase_now(self) -> Phase | None:
        t = self.elapsed()
        if self.started_at is None or t >= self.scenario.duration_s:
            return None
        index = max(i for i, s in enumerate(self.starts) if s <= t)
        return self.scenario.phases[index]

    def seconds_to_next_phase(self) -> float:
        t = self.elapsed()
        upcoming = [s - t for s in self.starts if s > t]
        return upcoming[0] if upcoming else self.scenario.duration_s - t

    def think(self, team: str) -> tuple[float, float]:
        return self.scenario.teams[team].think

    def max_tokens(self, team: str) -> int | None:
        return self.scenario.teams[team].max_tokens


def _load_plan() -> Plan:
    settings = Settings()
    if settings.loadtest.run_spec is None:
        raise SystemExit(
            "this locustfile is run by `llmplat loadtest` (LLMPLAT_LOADTEST__RUN_SPEC is unset)"
        )
    spec = RunSpec.model_validate_json(settings.loadtest.run_spec.read_text())
    keys = {t: k.get_secret_value() for t, k in settings.loadtest.keys.items()}
    missing = sorted(set(spec.scenario.teams) - set(keys))
    if missing:
        raise SystemExit(f"no API key for teams {missing} (LLMPLAT_LOADTEST__KEYS__<TEAM>)")
    return Plan(spec, keys)


PLAN = _load_plan()


def _user_class(team: str) -> type[LLMUser]:
    base = USER_KINDS[PLAN.scenario.teams[team].user]
    return type(
        f"{team}_{base.kind}",
        (base,),
        {
            "abstract": False,
            "team": team,
            "plan": PLAN,
            "fixed_count": PLAN.scenario.max_users(team),
            "_counter": itertools.count(),
        },
    )


for _team in PLAN.scenario.teams:
    if PLAN.scenario.max_users(_team):
        globals()[f"{_team}_user"] = _user_class(_team)


class PhasedShape(LoadTestShape):
    """All users up front, the run ends after the last phase."""

    def tick(self) -> tuple[int, float] | None:
        if PLAN.started_at is None:
            PLAN.start()
            log.info("phase %s started", PLAN.scenario.phases[0].name)
        if PLAN.phase_now() is None:
            return None
        total = sum(PLAN.scenario.max_users(t) for t in PLAN.scenario.teams)
        return total, PLAN.scenario.spawn_rate


@events.quitting.add_listener
def _close_samples(environment, **_kwargs) -> None:
    if PLAN.sink is not None:
        PLAN.sink.close()
