"""Ray Serve LLM's vLLM engine, reporting its scheduler signals to the autoscaler.

vLLM calls every stat logger of its ``StatLoggerManager`` with the scheduler's stats after
each step; one more logger keeps the latest queue length, running count and KV-cache use,
and the first-token latencies, in a :class:`SignalRecorder` the replica reads when Serve
asks for autoscaling stats.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine

from llmplat.autoscaling.signals import EngineSignals, SignalRecorder
from llmplat.engine import parser_cache

log = logging.getLogger(__name__)


class SignalStatLogger:
    """A vLLM stat logger (the ``record``/``log`` interface) feeding a recorder."""

    def __init__(self, recorder: SignalRecorder) -> None:
        self._recorder = recorder

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._recorder.observe(
                waiting=scheduler_stats.num_waiting_reqs,
                running=scheduler_stats.num_running_reqs,
                kv_cache_usage=scheduler_stats.kv_cache_usage,
            )
        if iteration_stats is not None and iteration_stats.time_to_first_tokens_iter:
            self._recorder.first_tokens(iteration_stats.time_to_first_tokens_iter)

    def log(self) -> None:
        return None

    def log_engine_initialized(self) -> None:
        return None

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        return None


class SignalingVLLMEngine(VLLMEngine):
    """``VLLMEngine`` with :meth:`load_signals` for the autoscaler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parser_cache.install()
        self.signals = SignalRecorder()
        self.reporting = False

    def _start_async_llm_engine(self, *args: Any, **kwargs: Any) -> Any:
        client = super()._start_async_llm_engine(*args, **kwargs)
        manager = getattr(client, "logger_manager", None)
        if manager is None:
            log.warning(
                "vLLM stats are off (disable_log_stats): the autoscaler sees no engine "
                "signals for this replica and counts ongoing requests instead"
            )
            return client
        manager.stat_loggers.append(SignalStatLogger(self.signals))
        self.reporting = True
        return client

    def load_signals(self) -> EngineSignals | None:
        return self.signals.snapshot() if self.reporting else None
