"""The engine-signal policy on synthetic load, run through Ray Serve's own wrapper.

A small simulated deployment turns a demand (concurrent requests) into what each replica's
engine would report: up to ``max_num_seqs`` running, the rest waiting, KV-cache use growing
with the running ones. Every tick calls the policy exactly as the controller does: wrapped
by ``ray.serve.autoscaling_policy._apply_autoscaling_config`` (cold start, delays) with the
``AutoscalingConfig`` the profile renders, on a clock the test drives.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import ray.serve.autoscaling_policy as ray_policy
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from llmplat.autoscaling.policy import (
    REASONS,
    EngineSignalsPolicy,
    Objective,
    ScaleInputs,
    decide,
)
from llmplat.autoscaling.report import ReportPublisher, ScaleReport, read_report
from llmplat.autoscaling.signals import KV_CACHE_USAGE, RUNNING, TTFT_S, WAITING
from llmplat.config.profiles import ModelProfile
from llmplat.engine.llm_config import autoscaling_config
from support.kv import MemoryKv

SEQS = 8
DEP = DeploymentID(name="PlatformLLMServer:m", app_name="llmplat")


def profile(**autoscaling: Any) -> ModelProfile:
    return ModelProfile(
        name="m",
        model_id="m",
        source="builtin:tiny-mixtral",
        accelerator={"kind": "cpu"},
        engine={"max_model_len": 4096, "max_num_seqs": SEQS},
        serving={"autoscaling": {"min_replicas": 1, "max_replicas": 4, **autoscaling}},
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@dataclass
class Cluster:
    """A deployment under a demand: replicas start ``start_s`` after the target rises."""

    config: AutoscalingConfig
    policy: Callable[[AutoscalingContext], tuple[int, dict[str, Any]]]
    clock: Clock
    running: int = 1
    target: int = 1
    start_s: float = 30.0
    state: dict[str, Any] = field(default_factory=dict)
    starting: list[float] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    reasons: set[str] = field(default_factory=set)

    def signals(self, demand: float) -> dict[str, dict[ReplicaID, float]]:
        replicas = [ReplicaID(f"r{i}", DEP) for i in range(self.running)]
        per = demand / self.running if self.running else 0.0
        running, waiting = min(per, SEQS), max(per - SEQS, 0.0)
        return {
            WAITING: {r: waiting for r in replicas},
            RUNNING: {r: running for r in replicas},
            KV_CACHE_USAGE: {r: 0.05 * running for r in replicas},  # short sequences
            TTFT_S: {r: 0.1 + 0.05 * waiting for r in replicas},
        }

    def tick(self, demand: float, dt: float = 1.0) -> None:
        self.clock.now += dt
        # Replicas asked for come up after start_s; removed ones go at once.
        self.starting = [t for t in self.starting if t > self.clock.now]
        self.running = self.target - len(self.starting)
        ctx = AutoscalingContext(
            deployment_id=DEP,
            deployment_name=DEP.name,
            app_name=DEP.app_name,
            current_num_replicas=self.running,
            target_num_replicas=self.target,
            running_replicas=[],
            total_num_requests=demand,
            total_queued_requests=0.0,
            aggregated_metrics=self.signals(demand) if self.running else {},
            raw_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=self.state,
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=self.clock.now,
            config=self.config,
        )
        decision, self.state = self.policy(ctx)
        self.reasons.add(self.state.get("llmplat_reason", "cold start"))
        decision = max(self.config.min_replicas, min(self.config.max_replicas, decision))
        if decision > self.target:
            self.starting += [self.clock.now + self.start_s] * (decision - self.target)
        else:  # stopping: starting ones first
            self.starting = sorted(self.starting)[: max(0, decision - self.running)]
        self.target = decision
        self.history.append(self.target)


@pytest.fixture
def make_cluster(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Cluster]:
    clock = Clock()
    monkeypatch.setattr(ray_policy, "time", clock)  # Ray's delay logic reads time.time()

    def make(kv: MemoryKv | None = None, **autoscaling: Any) -> Cluster:
        p = profile(**autoscaling)
        config = AutoscalingConfig(**autoscaling_config(p))
        kwargs = config.policy.policy_kwargs
        policy = EngineSignalsPolicy(publisher=ReportPublisher(kv or MemoryKv()), **kwargs)
        start = p.serving.autoscaling.initial_replicas or max(p.serving.autoscaling.min_replicas, 0)
        return Cluster(
            config,
            ray_policy._apply_autoscaling_config(policy),
            clock,
            running=start,
            target=start,
        )

    return make


def changes_of_direction(history: list[int]) -> int:
    steps = [b - a for a, b in zip(history, history[1:], strict=False) if b != a]
    return sum(1 for a, b in zip(steps, steps[1:], strict=False) if (a > 0) != (b > 0))


# --------------------------------------------------------------------------- decide()

OBJ = Objective(
    model_id="m",
    min_replicas=1,
    max_replicas=8,
    max_num_seqs=SEQS,
    target_waiting_requests=2.0,
    target_kv_cache_usage=0.85,
    target_ongoing_requests=32,
    scale_down_below=0.6,
)


def test_queue_pressure_asks_for_replicas_in_proportion() -> None:
    d = decide(ScaleInputs(2, 2, 30, waiting={"a": 6, "b": 6}, running={"a": 8, "b": 8}), OBJ)
    # 12 waiting over 2 replicas against 2 each: pressure 3; 28 requests need 4 replicas
    # of 8 batch slots.
    assert (d.replicas, d.reason, d.pressure) == (4, "queue", 3.0)


def test_kv_cache_pressure_alone_scales_up() -> None:
    inputs = ScaleInputs(2, 2, 6, waiting={"a": 0, "b": 0}, kv_cache_usage={"a": 1.0, "b": 0.95})
    d = decide(inputs, OBJ)
    assert d.reason == "kv_cache" and d.replicas == 3  # ceil(2 * 0.975 / 0.85)


def test_ttft_counts_only_when_targeted() -> None:
    inputs = ScaleInputs(1, 1, 2, waiting={"a": 0}, kv_cache_usage={"a": 0.1}, ttft_s={"a": 3.0})
    assert decide(inputs, OBJ).reason == "steady"
    with_target = Objective(**{**OBJ.__dict__, "target_ttft_s": 1.0})
    d = decide(inputs, with_target)
    assert (d.replicas, d.reason) == (3, "ttft")


def test_requests_queued_at_handles_count_as_waiting() -> None:
    inputs = ScaleInputs(1, 1, 40, handle_queued=20, waiting={"a": 0}, running={"a": 8})
    d = decide(inputs, OBJ)
    assert (d.replicas, d.reason) == (4, "queue")  # (8 + 20) / 8


def test_bounds_are_respected() -> None:
    flood = ScaleInputs(2, 2, 999, waiting={"a": 500, "b": 500}, running={"a": 8, "b": 8})
    assert decide(flood, OBJ).replicas == OBJ.max_replicas
    idle = ScaleInputs(3, 3, 0, waiting={"a": 0, "b": 0, "c": 0})
    assert decide(idle, OBJ).replicas == OBJ.min_replicas == 1
    zero = Objective(**{**OBJ.__dict__, "min_replicas": 0})
    assert decide(ScaleInputs(1, 1, 0, waiting={"a": 0}), zero) == decide(
        ScaleInputs(1, 1, 0, waiting={"a": 0}), zero
    )
    assert decide(ScaleInputs(1, 1, 0, waiting={"a": 0}), zero).replicas == 0
    # Not idle while anything runs or waits, even below every target.
    assert decide(ScaleInputs(1, 1, 1, waiting={"a": 0}, running={"a": 1}), zero).replicas == 1


def test_scale_down_keeps_headroom() -> None:
    # 4 replicas with 2 running each: load 0.25 -> 2 replicas would run at 0.5 (<= 0.6).
    four = {k: 2.0 for k in "abcd"}
    d = decide(ScaleInputs(4, 4, 8, waiting=dict.fromkeys(four, 0.0), running=four), OBJ)
    assert (d.replicas, d.reason) == (2, "low_load")
    # 3 replicas at load 0.5: one less would be 0.75 > 0.6, so it stays.
    three = {k: 4.0 for k in "abc"}
    d = decide(ScaleInputs(3, 3, 12, waiting=dict.fromkeys(three, 0.0), running=three), OBJ)
    assert (d.replicas, d.reason) == (3, "steady")


def test_before_any_signal_serves_default_count_is_used() -> None:
    d = decide(ScaleInputs(1, 1, 70), OBJ)  # a replica that has not reported yet
    assert (d.replicas, d.reason) == (3, "ongoing")  # 70 / 32


def test_at_zero_only_a_request_wakes_the_model() -> None:
    zero = Objective(**{**OBJ.__dict__, "min_replicas": 0})
    assert decide(ScaleInputs(0, 0, 0), zero).replicas == 0
    assert decide(ScaleInputs(0, 0, 1), zero).replicas == 1


def test_no_flapping_for_any_steady_load() -> None:
    """For every steady demand, decisions move the size in one direction only and stop at
    a size that wants neither more nor fewer replicas."""
    for demand in range(0, 200):
        sizes = [1]
        for _ in range(10):
            n = sizes[-1]
            per = demand / n
            run, wait = min(per, SEQS), max(per - SEQS, 0.0)
            ids = [str(i) for i in range(n)]
            inputs = ScaleInputs(
                n,
                n,
                demand,
                waiting=dict.fromkeys(ids, wait),
                running=dict.fromkeys(ids, run),
                kv_cache_usage=dict.fromkeys(ids, 0.05 * run),
            )
            wanted = decide(inputs, OBJ).replicas
            if wanted == n:
                break
            sizes.append(wanted)
        else:
            pytest.fail(f"demand {demand}: no fixed point within 10 decisions: {sizes}")
        assert changes_of_direction(sizes) == 0, f"demand {demand}: {sizes}"


# --------------------------------------------------------------------------- on a clock


def test_step_load_scales_up_after_the_delay_once(make_cluster) -> None:
    c = make_cluster(upscale_delay_s=15, downscale_delay_s=300)
    for _ in range(60):
        c.tick(demand=6)
    assert set(c.history) == {1}
    for t in range(600):
        c.tick(demand=30)
        if t < 14:
            assert c.target == 1, f"scaled up {t + 1} s into the step, before the 15 s delay"
    # 30 requests over 8-sequence replicas: 4 replicas (queue) and no change after that.
    assert c.target == 4 and c.running == 4
    assert changes_of_direction(c.history) == 0


def test_noise_does_not_move_a_steady_size(make_cluster) -> None:
    c = make_cluster(upscale_delay_s=15, downscale_delay_s=120)
    rng = random.Random(7)
    for _ in range(60):
        c.tick(demand=20)
    steady = c.target
    assert steady == 3 and c.running == 3  # 20 requests, 8 batch slots each
    c.reasons.clear()
    for _ in range(1800):  # 30 min of +-60 % noise: spikes shorter than the delays
        c.tick(demand=20 * rng.uniform(0.4, 1.6))
    assert set(c.history[60:]) == {steady}
    assert {"queue", "low_load"} <= c.reasons  # the noise did ask, both ways


def test_scales_down_only_after_the_delay(make_cluster) -> None:
    c = make_cluster(upscale_delay_s=5, downscale_delay_s=60)
    for _ in range(120):
        c.tick(demand=30)
    assert c.target == 4
    for t in range(200):
        c.tick(demand=2)
        if t < 59:
            assert c.target == 4, f"scaled down {t + 1} s after the load dropped"
    assert c.target == 1
    assert changes_of_direction(c.history) == 1


def test_scale_to_zero_and_back(make_cluster) -> None:
    c = make_cluster(min_replicas=0, max_replicas=2, scale_to_zero_delay_s=30, downscale_delay_s=60)
    assert c.target == 0
    c.tick(demand=0)
    assert c.target == 0
    c.tick(demand=1)  # a request arrives: Ray's cold-start path, no delay
    assert c.target == 1
    for _ in range(40):
        c.tick(demand=1)
    assert c.running == 1
    for t in range(40):
        c.tick(demand=0)
        if t < 29:
            assert c.target == 1
    assert c.target == 0


def test_reports_what_it_sees_and_why_it_changed(make_cluster) -> None:
    kv = MemoryKv()
    c = make_cluster(kv=kv, upscale_delay_s=5, downscale_delay_s=20)
    for _ in range(10):
        c.tick(demand=30)
    c.tick(demand=30)
    report = read_report(kv, "m")
    assert isinstance(report, ScaleReport)
    assert (report.desired, report.min_replicas, report.max_replicas) == (4, 1, 4)
    assert report.last_decision is not None
    assert (report.last_decision.from_replicas, report.last_decision.to_replicas) == (1, 4)
    assert report.last_decision.reason == "queue"
    assert report.reason in REASONS and report.waiting > 0
    for _ in range(80):
        c.tick(demand=2)
    c.tick(demand=2)
    report = read_report(kv, "m")
    assert report is not None and report.last_decision is not None
    assert report.last_decision.reason == "low_load" and report.last_decision.to_replicas == 1


def test_publisher_writes_decisions_at_once_and_signals_once_a_second() -> None:
    now = [0.0]
    kv = MemoryKv()
    publisher = ReportPublisher(kv, clock=lambda: now[0])
    r = ScaleReport("m", 1, 1, 1, 2, 1, "steady", 0.2, 0, 0.1, 0.0, None, at=1.0)
    publisher.publish(r)
    publisher.publish(replace(r, at=2.0))
    publisher.publish(replace(r, waiting=3.0, pressure=0.9, at=2.5))
    assert kv.puts == 1  # only signals moved, within a second
    now[0] = 1.5
    publisher.publish(replace(r, waiting=3.0, at=3.0))
    assert kv.puts == 2  # a heartbeat: readers see a fresh `at` and the latest signals
    publisher.publish(replace(r, running=2, at=3.1))
    assert kv.puts == 3  # a replica more: at once
    publisher.publish(replace(r, running=2, wanted=2, reason="queue", at=3.2))
    assert kv.puts == 4  # what the policy wants: at once
    assert read_report(kv, "m") == replace(r, running=2, wanted=2, reason="queue", at=3.2)
