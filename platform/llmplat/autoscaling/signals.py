"""What one engine reports to the autoscaler: its queue, KV-cache use and recent TTFT.

A model replica returns :meth:`EngineSignals.as_metrics` from ``record_autoscaling_stats``;
Ray Serve averages each value over the look-back window per replica and hands the averages
to the policy (:mod:`llmplat.autoscaling.policy`) in the controller.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

WAITING = "llmplat_waiting_requests"
RUNNING = "llmplat_running_requests"
KV_CACHE_USAGE = "llmplat_kv_cache_usage"
TTFT_S = "llmplat_ttft_seconds"
SIGNAL_NAMES = (WAITING, RUNNING, KV_CACHE_USAGE, TTFT_S)

STALE_AFTER_S = 5.0
"""An engine with work reports many times a second; one silent this long is idle."""
TTFT_WINDOW_S = 30.0


@dataclass(frozen=True)
class EngineSignals:
    waiting: float = 0.0
    """Requests queued in the engine, not yet scheduled."""
    running: float = 0.0
    """Requests the engine is generating for."""
    kv_cache_usage: float = 0.0
    """Share of the KV cache in use, 0..1."""
    ttft_s: float = 0.0
    """Mean time to first token of the requests that got one in the last 30 s (0: none)."""

    def as_metrics(self) -> dict[str, float]:
        return {
            WAITING: float(self.waiting),
            RUNNING: float(self.running),
            KV_CACHE_USAGE: float(self.kv_cache_usage),
            TTFT_S: float(self.ttft_s),
        }


class SignalRecorder:
    """The latest scheduler state and the recent first-token latencies of one engine."""

    def __init__(
        self,
        *,
        stale_after_s: float = STALE_AFTER_S,
        ttft_window_s: float = TTFT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stale_after_s = stale_after_s
        self._ttft_window_s = ttft_window_s
        self._clock = clock
        self._state = EngineSignals()
        self._updated_at = float("-inf")
        self._ttfts: deque[tuple[float, float]] = deque()

    def observe(self, *, waiting: float, running: float, kv_cache_usage: float) -> None:
        self._state = EngineSignals(waiting, running, kv_cache_usage)
        self._updated_at = self._clock()

    def first_tokens(self, latencies_s: Iterable[float]) -> None:
        now = self._clock()
        self._ttfts.extend((now, t) for t in latencies_s)

    def snapshot(self) -> EngineSignals:
        now = self._clock()
        while self._ttfts and now - self._ttfts[0][0] > self._ttft_window_s:
            self._ttfts.popleft()
        ttft = sum(t for _, t in self._ttfts) / len(self._ttfts) if self._ttfts else 0.0
        if now - self._updated_at > self._stale_after_s:
            return EngineSignals(ttft_s=ttft)  # idle: nothing queued, running or cached
        s = self._state
        return EngineSignals(s.waiting, s.running, s.kv_cache_usage, ttft)
