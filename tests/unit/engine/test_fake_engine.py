"""The shared fake engine answers in vLLM's shapes, deterministically."""

from __future__ import annotations

import json

from llmplat.engine.fake import fake_tokens
from llmplat.engine.protocol import CompletionRequest, CompletionResponse, ErrorResponse
from support import make_engine


async def _collect(engine, **body):
    req = CompletionRequest.model_validate({"model": engine.model_id, **body})
    return [item async for item in engine.completions(req)]


async def test_non_streaming_is_one_response_with_usage(settings) -> None:
    engine = make_engine(settings, "m")
    [resp] = await _collect(engine, prompt="a b", max_tokens=3)
    assert isinstance(resp, CompletionResponse)
    assert resp.choices[0].text == " ".join(fake_tokens("a b", 3))
    assert resp.usage.total_tokens == 5


async def test_stream_ends_with_usage_then_done(settings) -> None:
    engine = make_engine(settings, "m")
    items = await _collect(
        engine, prompt="a", max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    assert items[-1] == "data: [DONE]\n\n"
    usage = json.loads(items[-2].removeprefix("data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2


async def test_context_overflow_is_a_400_error_response(settings) -> None:
    engine = make_engine(settings, "m", max_model_len=8)
    [err] = await _collect(engine, prompt="a b c", max_tokens=6)
    assert isinstance(err, ErrorResponse) and err.error.code == 400
    assert "maximum context length is 8" in err.error.message
