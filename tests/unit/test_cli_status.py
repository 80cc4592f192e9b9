"""`llmplat status` shows autoscaled models' running/desired replicas and last decision."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest

from llmplat.autoscaling.report import DecisionEvent, ScaleReport
from llmplat.cli_status import decisions_by_model, render, replicas_by_model
from llmplat.observability.metrics import GatewayMetrics


def test_render_shows_replicas_and_the_last_decision() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), ("big", "zero"))
    up = DecisionEvent(at=time.time() - 30, from_replicas=1, to_replicas=2, reason="queue")
    metrics.scale_report(
        ScaleReport("big", 1, 2, 1, 4, 2, "queue", 3.0, 9, 0.4, 0.2, up, at=time.time())
    )
    metrics.scale_report(
        ScaleReport("zero", 0, 0, 0, 1, 0, "idle", 0.0, 0, 0.0, 0.0, None, at=time.time())
    )
    text = generate_latest(metrics.registry).decode()
    data = {
        "ready": {"status": "ready", "models": {"big": "ready", "zero": "scaled to zero"}},
        "replicas": replicas_by_model(text),
        "decisions": decisions_by_model(text),
        "in_flight": {},
        "tokens_per_s": {},
        "deployments": None,
        "usage": {},
        "admin": None,
    }
    lines = render(data).splitlines()
    big = next(line for line in lines if line.startswith("big "))
    zero = next(line for line in lines if line.startswith("zero "))
    assert big.split()[1:3] == ["ready", "1/2"]  # running/desired
    assert "[1-4]" in big
    assert "scaled to zero" in zero and "0/0 [0-1]" in zero
    decision = next(line for line in lines if "last scaled" in line)
    assert decision.startswith("  big: last scaled up to 2 (queue, 30 s ago")
