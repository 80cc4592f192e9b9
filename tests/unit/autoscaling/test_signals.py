"""What a replica reports: the engine's latest scheduler state and its recent TTFT."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from llmplat.autoscaling.signals import (
    KV_CACHE_USAGE,
    RUNNING,
    SIGNAL_NAMES,
    TTFT_S,
    WAITING,
    EngineSignals,
    SignalRecorder,
)
from llmplat.engine.protocol import CompletionRequest
from llmplat.engine.vllm_engine import SignalingVLLMEngine, SignalStatLogger
from llmplat.serving.llm_server import PlatformLLMServer
from support import make_engine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latest_state_and_mean_recent_ttft() -> None:
    clock = Clock()
    rec = SignalRecorder(stale_after_s=5, ttft_window_s=30, clock=clock)
    assert rec.snapshot() == EngineSignals()  # nothing reported yet: idle
    rec.observe(waiting=3, running=8, kv_cache_usage=0.5)
    rec.first_tokens([0.2, 0.4])
    clock.now += 10
    rec.observe(waiting=1, running=8, kv_cache_usage=0.6)
    rec.first_tokens([0.9])
    assert rec.snapshot() == EngineSignals(1, 8, 0.6, (0.2 + 0.4 + 0.9) / 3)
    clock.now += 25  # the first two latencies are now 35 s old
    rec.observe(waiting=0, running=2, kv_cache_usage=0.1)
    assert rec.snapshot().ttft_s == 0.9


def test_an_engine_silent_for_a_while_is_idle() -> None:
    clock = Clock()
    rec = SignalRecorder(stale_after_s=5, clock=clock)
    rec.observe(waiting=4, running=8, kv_cache_usage=0.9)
    rec.first_tokens([0.3])
    clock.now += 5.5
    assert rec.snapshot() == EngineSignals(ttft_s=0.3)


def test_vllm_stats_feed_the_recorder() -> None:
    rec = SignalRecorder()
    logger = SignalStatLogger(rec)
    iteration = IterationStats()
    iteration.time_to_first_tokens_iter.extend([0.1, 0.3])
    stats = SchedulerStats(num_running_reqs=5, num_waiting_reqs=2, kv_cache_usage=0.25)
    logger.record(stats, iteration)
    logger.record(None, None)  # vLLM may send either alone
    assert rec.snapshot() == EngineSignals(2, 5, 0.25, 0.2)


def test_replica_reports_engine_signals_under_fixed_names() -> None:
    assert set(EngineSignals(1, 2, 0.5, 0.1).as_metrics()) == set(SIGNAL_NAMES)
    assert EngineSignals(1, 2, 0.5, 0.1).as_metrics() == {
        WAITING: 1.0,
        RUNNING: 2.0,
        KV_CACHE_USAGE: 0.5,
        TTFT_S: 0.1,
    }


async def test_model_replica_returns_its_engines_signals(settings) -> None:
    # Only the replica's engine is read: no Ray, no LLMServer start.
    server = SimpleNamespace(engine=make_engine(settings, "m"))
    stats = partial(PlatformLLMServer.record_autoscaling_stats, server)
    await server.engine.start()
    assert await stats() == EngineSignals().as_metrics()
    request = CompletionRequest(model="m", prompt="a b c", max_tokens=4, stream=True)
    gen = server.engine.completions(request, None)
    await gen.__anext__()  # a call in progress
    assert (await stats())[RUNNING] == 1.0
    async for _ in gen:
        pass
    assert (await stats())[RUNNING] == 0.0


def test_model_replicas_run_the_signalling_engine() -> None:
    engine_cls = PlatformLLMServer._default_engine_cls.fget(None)  # type: ignore[attr-defined]
    assert engine_cls is SignalingVLLMEngine
