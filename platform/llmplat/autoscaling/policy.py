"""The replica autoscaling policy on engine signals (runs in Ray Serve's controller).

Why not Serve's default (ongoing requests per replica): for an LLM one long stream and one
short completion count the same, and a replica whose KV cache is full with a queue looks
like one with headroom. This policy reads what the engine itself says, per replica, averaged
over the look-back window:

- **queue**: requests waiting in the engines (plus those Serve holds at handles because every
  replica is full) per replica, against ``target_waiting_requests``;
- **kv_cache**: mean KV-cache use, against ``target_kv_cache_usage``;
- **ttft**: mean time to first token, against ``target_ttft_s`` (when set).

The largest ratio is the *pressure*. Above 1 the policy wants ``ceil(replicas × pressure)``
replicas; for a queue, enough replicas to give every running and waiting request a batch
slot (``max_num_seqs`` each), and at least one more. It wants fewer only when the load
(pressure, or the share of batch slots in use, whichever is larger) would still sit at or
below ``scale_down_below`` with fewer replicas; so a scale-up is never followed by a scale-
down at the same load and vice versa (no flapping). With ``min_replicas: 0`` an idle model
(nothing running, queued or waiting) goes to zero. Ray Serve applies the delays
(``upscale_delay_s``, ``downscale_delay_s``, ``downscale_to_zero_delay_s``), wakes a model
at zero on its first request, and keeps the result within the bounds.

Ray pickles the class into the controller, which imports ``llmplat`` (installed in every
image and in the local environment) for the rest.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from llmplat.autoscaling.report import DecisionEvent, ReportPublisher, ScaleReport
from llmplat.autoscaling.signals import KV_CACHE_USAGE, RUNNING, TTFT_S, WAITING

Reason = str
"""One of: queue, kv_cache, ttft, ongoing, low_load, idle, steady, scaled_to_zero,
request_while_scaled_to_zero (bounded: used as a metric label)."""

REASONS = (
    "queue",
    "kv_cache",
    "ttft",
    "ongoing",
    "low_load",
    "idle",
    "steady",
    "scaled_to_zero",
    "request_while_scaled_to_zero",
)


@dataclass(frozen=True)
class Objective:
    """What a profile asks of each replica (``policy_kwargs``, JSON). The values and their
    defaults are the profile's (``AutoscalingSpec``); an absent ``target_ttft_s`` is off."""

    model_id: str
    min_replicas: int
    max_replicas: int
    max_num_seqs: int
    target_waiting_requests: float
    target_kv_cache_usage: float
    target_ongoing_requests: float
    scale_down_below: float
    target_ttft_s: float | None = None


@dataclass(frozen=True)
class ScaleInputs:
    """One control-loop tick, as the controller sees the deployment."""

    running_replicas: int
    target_replicas: int
    ongoing_requests: float
    """Serve's count: at replicas plus queued at handles."""
    handle_queued: float = 0.0
    """Requests Serve holds at handles because no replica may take them."""
    waiting: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    kv_cache_usage: dict[str, float] = field(default_factory=dict)
    ttft_s: dict[str, float] = field(default_factory=dict)
    """Per replica id, averaged over the look-back window (replicas that reported)."""


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: Reason
    pressure: float
    load: float


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def decide(inputs: ScaleInputs, objective: Objective) -> Decision:
    """The replicas the signals call for (within the bounds), and why."""
    n = inputs.running_replicas
    lo, hi = objective.min_replicas, objective.max_replicas

    def bounded(replicas: int) -> int:
        return max(lo, min(hi, replicas))

    if n == 0:
        # Ray wakes a model at zero when a request arrives; without one it stays there.
        if inputs.ongoing_requests > 0:
            return Decision(
                bounded(max(1, inputs.target_replicas)), "request_while_scaled_to_zero", 1.0, 1.0
            )
        return Decision(bounded(inputs.target_replicas), "scaled_to_zero", 0.0, 0.0)

    reported = bool(inputs.waiting or inputs.kv_cache_usage)
    waiting = sum(inputs.waiting.values()) + inputs.handle_queued
    if not reported:
        # No replica has reported engine signals yet (still starting): Serve's count.
        pressure = inputs.ongoing_requests / (n * objective.target_ongoing_requests)
        ratios = {"ongoing": pressure}
        batch = pressure
    else:
        ratios = {
            "queue": waiting / (n * objective.target_waiting_requests),
            "kv_cache": _mean(inputs.kv_cache_usage) / objective.target_kv_cache_usage,
        }
        ttft = _mean({k: v for k, v in inputs.ttft_s.items() if v > 0})
        if objective.target_ttft_s and ttft > 0:
            ratios["ttft"] = ttft / objective.target_ttft_s
        batch = sum(inputs.running.values()) / (n * objective.max_num_seqs)
    reason, pressure = max(ratios.items(), key=lambda kv: kv[1])
    load = max(pressure, batch)

    if pressure > 1.0:
        wanted = math.ceil(n * pressure)
        if reason == "queue":
            # A queue does not shrink in proportion to replicas: it empties once every
            # request has a batch slot. Enough replicas for all of them, at least one more.
            demand = sum(inputs.running.values()) + waiting
            wanted = max(n + 1, math.ceil(demand / objective.max_num_seqs))
        return Decision(bounded(wanted), reason, pressure, load)
    idle = inputs.ongoing_requests <= 0 and load <= 0 and not sum(inputs.waiting.values())
    if lo == 0 and idle:
        return Decision(0, "idle", pressure, load)
    # The fewest replicas that would still run at or below `scale_down_below`.
    wanted = max(1, math.ceil(n * load / objective.scale_down_below)) if load > 0 else 1
    wanted = bounded(min(wanted, n))
    # Fewer than running, or than the target while replicas are still starting.
    reason = "low_load" if wanted < max(n, inputs.target_replicas) else "steady"
    return Decision(wanted, reason, pressure, load)


def inputs_from_context(ctx: Any) -> ScaleInputs:
    """:class:`ScaleInputs` from Ray Serve's ``AutoscalingContext``."""
    metrics = ctx.aggregated_metrics or {}

    def per_replica(name: str) -> dict[str, float]:
        return {str(rid): float(v) for rid, v in (metrics.get(name) or {}).items()}

    return ScaleInputs(
        running_replicas=int(ctx.current_num_replicas),
        target_replicas=int(ctx.target_num_replicas),
        ongoing_requests=float(ctx.total_num_requests or 0.0),
        handle_queued=float(ctx.total_queued_requests or 0.0),
        waiting=per_replica(WAITING),
        running=per_replica(RUNNING),
        kv_cache_usage=per_replica(KV_CACHE_USAGE),
        ttft_s=per_replica(TTFT_S),
    )


class EngineSignalsPolicy:
    """Ray Serve custom autoscaling policy (a class: Serve builds it once per deployment
    with the profile's :class:`Objective` as ``policy_kwargs``) that also publishes what it
    sees and decides for the gateways and ``llmplat status``."""

    def __init__(self, publisher: ReportPublisher | None = None, **objective: Any) -> None:
        self.objective = Objective(**objective)
        self._publisher = publisher or ReportPublisher()
        self._last_target: int | None = None
        self._wanted_reason: dict[int, Reason] = {}
        """The latest reason the policy wanted more (+1) or fewer (-1) replicas."""
        self._last_decision: DecisionEvent | None = None

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        inputs = inputs_from_context(ctx)
        decision = decide(inputs, self.objective)
        self._note(inputs, decision)
        return decision.replicas, {"llmplat_reason": decision.reason}

    def _note(self, inputs: ScaleInputs, decision: Decision, now: float | None = None) -> None:
        now = time.time() if now is None else now
        target = inputs.target_replicas
        if decision.replicas != target:
            self._wanted_reason[1 if decision.replicas > target else -1] = decision.reason
        if self._last_target is not None and target != self._last_target:
            if self._last_target == 0:
                why = "request_while_scaled_to_zero"
            else:
                why = self._wanted_reason.get(1 if target > self._last_target else -1, "steady")
            self._last_decision = DecisionEvent(now, self._last_target, target, why)
        self._last_target = target
        waiting = sum(inputs.waiting.values()) + inputs.handle_queued
        self._publisher.publish(
            ScaleReport(
                model_id=self.objective.model_id,
                running=inputs.running_replicas,
                desired=target,
                min_replicas=self.objective.min_replicas,
                max_replicas=self.objective.max_replicas,
                wanted=decision.replicas,
                reason=decision.reason,
                pressure=round(decision.pressure, 3),
                waiting=waiting,
                kv_cache_usage=round(_mean(inputs.kv_cache_usage), 4),
                ttft_s=round(_mean({k: v for k, v in inputs.ttft_s.items() if v > 0}), 4),
                last_decision=self._last_decision,
                at=now,
            )
        )


def policy_kwargs(objective: Objective) -> dict[str, Any]:
    return {k: v for k, v in asdict(objective).items() if v is not None}
