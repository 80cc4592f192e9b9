"""The autoscaler's latest report per model, as one gateway replica follows it.

Refreshed every second from Ray's GCS key-value store (a local read, no controller call) for
the models whose replica count can change; exported as metrics; read by the request path
(hold a request while a model scaled to zero starts) and by ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from llmplat.autoscaling.report import ScaleReport, read_report
from llmplat.observability.metrics import GatewayMetrics

log = logging.getLogger(__name__)

REFRESH_S = 1.0
SCALED_TO_ZERO = "scaled to zero"
STARTING_FROM_ZERO = "starting (scaled from zero)"
AWAITING_AUTOSCALER = "waiting for the autoscaler's first report"


class ReportSource(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


class ScaleView:
    def __init__(
        self,
        models: tuple[str, ...],
        source: ReportSource | None,
        metrics: GatewayMetrics,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models = models
        """Autoscaled models (the others have a fixed size: nothing to follow)."""
        self._source = source
        self._metrics = metrics
        self._refresh_s = refresh_s
        self._clock = clock
        self._reports: dict[str, ScaleReport] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def follows(self) -> tuple[str, ...]:
        return self._models if self._source is not None else ()

    def report(self, model_id: str) -> ScaleReport | None:
        """The latest report of the model, if recent enough to trust."""
        report = self._reports.get(model_id)
        if report is None or not report.fresh(self._clock()):
            return None
        return report

    def refresh(self) -> None:
        """Read every followed model's report (blocking: run it off the event loop)."""
        if self._source is None:
            return
        for model_id in self._models:
            try:
                report = read_report(self._source, model_id)
            except Exception as exc:
                log.warning("reading the autoscaling report of %s failed: %s", model_id, exc)
                continue
            if report is not None:
                self._reports[model_id] = report
                self._metrics.scale_report(report)

    async def _follow(self) -> None:
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(self._refresh_s)

    def start(self) -> None:
        if self.follows and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def scale_state(report: ScaleReport | None, min_replicas: int) -> str | None:
    """The readiness of a model that may sit at zero replicas, or None: ask the engine."""
    if min_replicas > 0:
        return None
    if report is None:
        return AWAITING_AUTOSCALER
    if report.scaled_to_zero:
        return SCALED_TO_ZERO
    if report.starting_from_zero:
        return STARTING_FROM_ZERO
    return None
