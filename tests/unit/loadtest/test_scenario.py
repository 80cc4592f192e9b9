"""Scenario files: every shipped one loads; a bad one names its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmplat.config.loader import ConfigError
from llmplat.loadtest.scenario import (
    available_scenarios,
    load_scenario,
    parse_seconds,
)
from llmplat.settings import Settings

LOADTESTS = Settings().loadtest.dir
MINIMAL = {
    "name": "mini",
    "teams": {"chat": {"user": "chat"}, "noisy": {"user": "chat"}},
    "phases": [
        {"name": "a", "duration_s": "10s", "users": {"chat": 2}},
        {"name": "b", "duration_s": "1m", "users": {"chat": 4, "noisy": 3}},
    ],
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_scenarios_load_with_objectives() -> None:
    names = available_scenarios(LOADTESTS)
    assert {"smoke", "steady", "spike", "soak", "noisy-neighbour"} <= set(names)
    for name in names:
        sc = load_scenario(name, LOADTESTS)
        assert sc.name == name
        assert sc.objectives.ttft_p95_ms and sc.objectives.rejections
    noisy = load_scenario("noisy-neighbour", LOADTESTS)
    assert noisy.objectives.rejections["noisy"] == "some"
    assert noisy.objectives.fairness is not None
    assert noisy.teams["ci"].priority_class == "batch"
    assert noisy.teams["noisy"].limits.requests_per_minute


def test_durations_and_scaling(tmp_path: Path) -> None:
    assert parse_seconds("1.5m") == 90 and parse_seconds(45) == 45 and parse_seconds("2h") == 7200
    sc = load_scenario(str(_write(tmp_path, MINIMAL)), LOADTESTS)
    assert sc.duration_s == 70 and sc.peak_users == 7 and sc.max_users("noisy") == 3
    assert sc.phase_starts() == [0, 10]
    small = sc.scaled(users=3, duration_s=7)
    assert [p.duration_s for p in small.phases] == pytest.approx([1, 6])
    warm = sc.model_copy(
        update={"phases": [sc.phases[0].model_copy(update={"measure": False}), sc.phases[1]]}
    )
    assert [p.duration_s for p in warm.scaled(duration_s=40).phases] == [10, 30]
    assert [p.duration_s for p in warm.scaled(duration_s=7).phases] == pytest.approx([1, 6])
    assert small.phases[1].users == {"chat": 2, "noisy": 1}  # never below one user
    assert small.phases[0].users == {"chat": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phases": [{"name": "a", "duration_s": "10x", "users": {"chat": 1}}]}, "phases.0.duration_s"),
        ({"phases": [{"name": "a", "duration_s": 5, "users": {"ops": 1}}]}, "phases.0.users: unknown team 'ops'"),
        ({"teams": {"chat": {"user": "robot"}}}, "teams.chat.user"),
        ({"teams": {"chat": {"user": "chat", "limits": {"rpm": 3}}}}, "teams.chat.limits.rpm"),
        ({"objectives": {"fairness": {"baseline": "x", "during": "b", "teams": ["chat"]}}}, "objectives.fairness.baseline: no phase named 'x'"),
        ({"objectives": {"rejections": {"chat": "few"}}}, "objectives.rejections.chat"),
        ({"objectives": {"ttft_p95_ms": {"ops": 10}}}, "objectives.ttft_p95_ms: unknown team 'ops'"),
        ({"phases": [{"name": "a", "duration_s": 5, "users": {"chat": 0}}]}, "has no users"),
        ({"spawn_rat": 3}, "spawn_rat"),
    ],
)  # fmt: skip
def test_bad_scenario_names_file_and_field(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path, {**MINIMAL, **change})
    with pytest.raises(ConfigError) as err:
        load_scenario(str(path), LOADTESTS)
    assert str(path) in str(err.value) and message in str(err.value)


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="not found.*known: .*noisy-neighbour.*smoke"):
        load_scenario("nope", LOADTESTS)
