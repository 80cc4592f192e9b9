"""What the autoscaler sees and decides, shared through Ray's GCS key-value store.

The policy (in Serve's controller) publishes one :class:`ScaleReport` per model; gateway
replicas read it to hold requests while a model scales up from zero, to answer ``/readyz``
("scaled to zero" is not "failed") and to export the replica and decision metrics. A GCS
read is a local call to the head node: no controller round trip per request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

KV_NAMESPACE = "llmplat-autoscaling"
PUBLISH_EVERY_S = 1.0
"""Signals are written at most this often, and an unchanged report at least this often (its
``at`` says it is current)."""
FRESH_FOR_S = 15.0
"""A report older than this is not trusted (the controller is gone or restarting)."""


@dataclass(frozen=True)
class DecisionEvent:
    at: float
    """Unix time of the change of target."""
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass(frozen=True)
class ScaleReport:
    model_id: str
    running: int
    """Replicas serving now."""
    desired: int
    """Serve's current target (the decision in effect)."""
    min_replicas: int
    max_replicas: int
    wanted: int
    """What the signals call for this tick (before Serve's delays)."""
    reason: str
    pressure: float
    waiting: float
    """Requests waiting in engines and at handles (all replicas)."""
    kv_cache_usage: float
    ttft_s: float
    last_decision: DecisionEvent | None
    at: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ScaleReport:
        data = json.loads(raw)
        last = data.pop("last_decision", None)
        return cls(**data, last_decision=DecisionEvent(**last) if last else None)

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.at <= FRESH_FOR_S

    @property
    def scaled_to_zero(self) -> bool:
        return self.running == 0 and self.desired == 0

    @property
    def starting_from_zero(self) -> bool:
        return self.running == 0 and self.desired > 0


def _decisive(r: ScaleReport) -> tuple[object, ...]:
    return (r.running, r.desired, r.min_replicas, r.max_replicas, r.wanted, r.reason,
            r.last_decision)  # fmt: skip


def _key(model_id: str) -> bytes:
    return model_id.encode()


class KvStore:
    """Ray's internal key-value store (the GCS), as the controller and replicas reach it."""

    def put(self, key: bytes, value: bytes) -> None:
        from llmplat.compat import internal_kv_put

        internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def get(self, key: bytes) -> bytes | None:
        from llmplat.compat import internal_kv_get

        value = internal_kv_get(key, namespace=KV_NAMESPACE)
        return value if isinstance(value, bytes) else None


class ReportPublisher:
    """Writes a model's report when it changes, and at least every second."""

    def __init__(self, kv: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._kv = kv or KvStore()
        self._clock = clock
        self._last: ScaleReport | None = None
        self._last_at = float("-inf")

    def publish(self, report: ScaleReport) -> None:
        """Write now if the replicas or the decision changed; the signals, which move on
        every tick under load, at most once a second (the policy runs ten times a second)."""
        now = self._clock()
        decided = self._last is not None and _decisive(self._last) == _decisive(report)
        if decided and now - self._last_at < PUBLISH_EVERY_S:
            return
        try:
            self._kv.put(_key(report.model_id), report.to_json())
        except Exception as exc:  # the decision stands; only its report is late
            log.warning("publishing the autoscaling report failed: %s", exc)
            return
        self._last, self._last_at = report, now


def read_report(kv: Any, model_id: str) -> ScaleReport | None:
    raw = kv.get(_key(model_id))
    return ScaleReport.from_json(raw) if raw else None
