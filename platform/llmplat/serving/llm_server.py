"""LLMServer with a stream batcher that never delays the first token.

Ray Serve LLM's ``Batcher`` gathers stream chunks for ``stream_batching_interval_ms`` before
each message to the caller, the first one included, so every request's time to first token
grows by up to one interval. Gathering is what keeps per-token messaging cheap, so keep it
for the rest of the stream and send the first chunk the moment it exists.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from ray.serve.llm import LLMServer

from llmplat.compat import Batcher

T = TypeVar("T")


async def eager_first_batches(
    generator: AsyncGenerator[T, None], interval_ms: float | None
) -> AsyncIterator[list[T]]:
    """``[first]`` at once, then Ray's interval batching of what follows."""
    iterator = generator.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return
    yield [first]

    async def rest() -> AsyncGenerator[T, None]:
        async for item in iterator:
            yield item

    async for batch in Batcher(rest(), interval_ms=interval_ms).stream():
        yield list(batch)


class PlatformLLMServer(LLMServer):
    """The model deployment class llmplat deploys (one per model).

    Its engine reports queue, KV-cache and first-token signals, which Serve collects
    through :meth:`record_autoscaling_stats` for the autoscaling policy.
    """

    @property
    def _default_engine_cls(self) -> Any:  # type: ignore[override]
        from llmplat.engine.vllm_engine import SignalingVLLMEngine

        return SignalingVLLMEngine

    async def record_autoscaling_stats(self) -> dict[str, float]:
        load = getattr(self.engine, "load_signals", None)
        signals = load() if load is not None else None
        return signals.as_metrics() if signals is not None else {}

    def _batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncIterator[list[T]]:
        return eager_first_batches(generator, self._get_batch_interval_ms())
