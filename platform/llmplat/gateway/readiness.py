"""``/readyz`` from a cached engine check: probes and anonymous callers never fan out.

Every model's health is asked at most once per ``max_age_s``; callers arriving while a
check runs share it. Anyone who can reach the endpoint can call ``/readyz``, so without the
cache each hit would cost one health call per model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmplat.gateway.scaling import SCALED_TO_ZERO, STARTING_FROM_ZERO, scale_state

if TYPE_CHECKING:
    from llmplat.gateway.state import GatewayState

READY_CACHE_S = 2.0
READY_STATES = frozenset({"ready", SCALED_TO_ZERO, STARTING_FROM_ZERO})
"""A model at zero replicas is ready to serve: the gateway holds its requests while it
starts."""


@dataclass(frozen=True)
class Readiness:
    models: dict[str, str]
    """Model id -> "ready" or why not."""
    checked_at: float

    @property
    def ready(self) -> bool:
        return all(v in READY_STATES for v in self.models.values())


class ReadinessCache:
    def __init__(
        self,
        check: Callable[[], Awaitable[dict[str, str]]],
        max_age_s: float = READY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.max_age_s = max_age_s
        self._clock = clock
        self._last: Readiness | None = None
        self._running: asyncio.Future[Readiness] | None = None
        self.checks = 0
        """Engine checks made (for tests and debugging)."""

    async def get(self) -> Readiness:
        last = self._last
        if last is not None and self._clock() - last.checked_at < self.max_age_s:
            return last
        if self._running is None:
            self._running = asyncio.ensure_future(self._refresh())
        # Shielded: a caller that goes away does not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    async def _refresh(self) -> Readiness:
        try:
            self.checks += 1
            result = Readiness(await self._check(), self._clock())
            self._last = result
            return result
        finally:
            self._running = None


async def check_models(state: GatewayState) -> dict[str, str]:
    """Each served model's state: ``ready``, a scale state, or why it is not answering."""
    ids = [m.model_id for m in state.config.models]
    results = await asyncio.gather(*(_model_ready(state, m) for m in ids))
    return dict(zip(ids, results, strict=True))


async def _model_ready(state: GatewayState, model_id: str) -> str:
    model = state.model(model_id)
    if model is not None and model.autoscaled:
        # Never ask a model at zero replicas: the health call itself would wake it.
        scaled = scale_state(state.scale.report(model_id), model.min_replicas)
        if scaled is not None:
            return scaled
    try:
        await asyncio.wait_for(
            state.backends[model_id].check_health(), state.config.gateway.ready_timeout_s
        )
        return "ready"
    except TimeoutError:
        return "not answering"
    except Exception as exc:  # readiness reports, it does not raise
        return f"unhealthy: {type(exc).__name__}"
