"""Typed load-test scenarios (``loadtests/scenarios/*.yaml``) and the plan handed to Locust.

A scenario names its teams (each with a kind of user, a priority class and the quotas the
runner creates it with), a sequence of phases (how many users of each team run, for how
long) and the objectives the run is judged by. A bad scenario fails to load with the file
and the field named.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from llmplat.config.loader import ConfigError, load_yaml_model
from llmplat.config.teams import Limits, PriorityClass

UserKind = Literal["chat", "ide", "ci"]
"""``chat``: people in a chat UI (streaming chat completions, reading time between turns);
``ide``: code completion in an editor (fill-in-the-middle with ``suffix``, streaming, short
outputs, latency-sensitive); ``ci``: batch jobs (non-streaming, long outputs, batch class)."""

DEFAULT_THINK_S: dict[str, tuple[float, float]] = {
    "chat": (2.0, 6.0),
    "ide": (0.5, 2.0),
    "ci": (0.0, 0.5),
}
DEFAULT_PRIORITY: dict[str, PriorityClass] = {
    "chat": "interactive",
    "ide": "interactive",
    "ci": "batch",
}
TEAM_ID = r"^[a-z][a-z0-9]{0,30}$"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(value: object) -> float:
    """``90``, ``90s``, ``1.5m``, ``2h`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"'{value}' is not a duration like 45s, 2m or 1h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeamSpec(_Strict):
    """One team of the scenario: who its users are and what quotas it gets."""

    user: UserKind = Field(..., description="How this team's users behave (see UserKind).")
    priority: PriorityClass | None = Field(
        None,
        description="Priority class of a created team; default batch for ci, else interactive.",
    )
    limits: Limits = Field(default_factory=Limits, description="Quotas of a created team.")
    think_time_s: tuple[float, float] | None = Field(
        None, description="Seconds a user waits between requests, uniform in [min, max]."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Cap on the output lengths the users draw from the corpus."
    )

    @model_validator(mode="after")
    def _think_ordered(self) -> TeamSpec:
        if self.think_time_s is not None:
            lo, hi = self.think_time_s
            if lo < 0 or hi < lo:
                raise ValueError("think_time_s must be [min, max] with 0 <= min <= max")
        return self

    @property
    def think(self) -> tuple[float, float]:
        return self.think_time_s or DEFAULT_THINK_S[self.user]

    @property
    def priority_class(self) -> PriorityClass:
        return self.priority or DEFAULT_PRIORITY[self.user]


class Phase(_Strict):
    """A stretch of the run with a fixed number of users per team."""

    name: str = Field(..., min_length=1, max_length=40)
    duration_s: Seconds = Field(..., description="How long the phase lasts: 45s, 2m, 1h.")
    users: dict[str, Annotated[int, Field(ge=0)]] = Field(
        ..., description="Users per team id during this phase (missing teams: none)."
    )
    measure: bool = Field(
        True, description="Whether the TTFT and error objectives judge this phase (false: warm-up)."
    )

    @property
    def total_users(self) -> int:
        return sum(self.users.values())


class Fairness(_Strict):
    """Quiet teams' TTFT p95 during a flood stays within a margin of a no-flood baseline."""

    baseline: str = Field(..., description="Phase measured before the flood.")
    during: str = Field(..., description="Phase with the flood.")
    teams: list[str] = Field(..., min_length=1, description="The quiet teams judged.")
    max_ratio: float = Field(1.5, ge=1.0, description="Allowed p95(during) / p95(baseline).")
    slack_ms: float = Field(
        250.0, ge=0, description="Added to the allowance: p95 <= baseline * ratio + slack."
    )


class Objectives(_Strict):
    """What the run is judged by; every check reports its measured number and its limit."""

    ttft_p95_ms: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Time-to-first-token p95 per team, measured phases."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Failed share of each team's requests, 429s not counted."
    )
    rejections: dict[str, Literal["none", "some", "any"]] = Field(
        default_factory=dict,
        description="Per team: 'none' (no 429 allowed), 'some' (429s required), 'any'.",
    )
    fairness: Fairness | None = None


class Scenario(_Strict):
    """A load-test scenario: teams, phases, objectives."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    model: str | None = Field(None, description="Model id; default the first one /v1/models lists.")
    spawn_rate: float = Field(10.0, gt=0, description="Users started per second.")
    ignore_eos: bool = Field(
        True,
        description="Ask for exactly max_tokens (vLLM's ignore_eos), so output lengths follow the "
        "corpus distribution whatever the weights; turn off for servers that reject it.",
    )
    teams: dict[Annotated[str, Field(pattern=TEAM_ID)], TeamSpec] = Field(..., min_length=1)
    phases: list[Phase] = Field(..., min_length=1)
    objectives: Objectives = Field(default_factory=Objectives)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique, got {names}")
        for i, phase in enumerate(self.phases):
            for team in phase.users:
                self._known_team(team, f"phases.{i}.users")
            if phase.total_users == 0:
                raise ValueError(f"phases.{i}.users: phase '{phase.name}' has no users")
        obj = self.objectives
        for field in ("ttft_p95_ms", "rejections"):
            for team in getattr(obj, field):
                self._known_team(team, f"objectives.{field}")
        if obj.fairness is not None:
            for field in ("baseline", "during"):
                if getattr(obj.fairness, field) not in names:
                    raise ValueError(
                        f"objectives.fairness.{field}: no phase named "
                        f"'{getattr(obj.fairness, field)}' (phases: {', '.join(names)})"
                    )
            for team in obj.fairness.teams:
                self._known_team(team, "objectives.fairness.teams")
        return self

    def _known_team(self, team: str, where: str) -> None:
        if team not in self.teams:
            raise ValueError(f"{where}: unknown team '{team}' (teams: {', '.join(self.teams)})")

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    @property
    def peak_users(self) -> int:
        return max(p.total_users for p in self.phases)

    def max_users(self, team: str) -> int:
        """Users of a team alive at once: the most any phase runs."""
        return max(p.users.get(team, 0) for p in self.phases)

    def phase_starts(self) -> list[float]:
        starts, t = [], 0.0
        for p in self.phases:
            starts.append(t)
            t += p.duration_s
        return starts

    def scaled(self, *, users: int | None = None, duration_s: float | None = None) -> Scenario:
        """The same scenario with ``users`` at its peak and ``duration_s`` in all.

        User counts scale proportionally (a team present in a phase keeps at least one user).
        Measured phases share what ``duration_s`` leaves after the warm-up phases
        (``measure: false``), in proportion: a fresh deployment needs its warm-up however
        short the run. Only when ``duration_s`` is not longer than the warm-ups does every
        phase scale.
        """
        phases = list(self.phases)
        if users is not None:
            factor = users / self.peak_users
            phases = [
                p.model_copy(
                    update={
                        "users": {
                            t: (max(1, math.floor(n * factor + 0.5)) if n else 0)
                            for t, n in p.users.items()
                        }
                    }
                )
                for p in phases
            ]
        if duration_s is not None:
            warm = sum(p.duration_s for p in phases if not p.measure)
            measured = self.duration_s - warm
            if duration_s > warm and measured > 0:
                factor = (duration_s - warm) / measured
                scale = [factor if p.measure else 1.0 for p in phases]
            else:
                scale = [duration_s / self.duration_s] * len(phases)
            phases = [
                p.model_copy(update={"duration_s": p.duration_s * f})
                for p, f in zip(phases, scale, strict=True)
            ]
        return self.model_copy(update={"phases": phases})


class RunSpec(_Strict):
    """What the runner hands its Locust process (a JSON file; never a key)."""

    scenario: Scenario
    model: str
    team_names: dict[str, str] = Field(..., description="Scenario team id → platform team.")
    samples_path: Path
    seed: int = 0


def scenarios_dir(loadtests_dir: Path) -> Path:
    return loadtests_dir / "scenarios"


def available_scenarios(loadtests_dir: Path) -> list[str]:
    return sorted(p.stem for p in scenarios_dir(loadtests_dir).glob("*.yaml"))


def load_scenario(ref: str, loadtests_dir: Path) -> Scenario:
    """A scenario by name (``loadtests/scenarios/NAME.yaml``) or by path to a YAML file."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
    else:
        path = scenarios_dir(loadtests_dir) / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(available_scenarios(loadtests_dir)) or "none"
        raise ConfigError(f"scenario {ref!r} not found at {path}; known: {known}")
    return load_yaml_model(path, Scenario)
