"""Billing from a stream's chunks (the gateway always asks vLLM for per-chunk usage; an
engine that sends none is still billed at least a token per chunk with output)."""

from __future__ import annotations

from llmplat.gateway.usage import Usage, UsageTracker


def _chat_chunk(index: int, delta: dict) -> dict:
    return {"choices": [{"index": index, "delta": delta}]}


def test_without_per_chunk_usage_each_chunk_with_output_is_a_token() -> None:
    tracker = UsageTracker(n=2)
    for chunk in (
        _chat_chunk(0, {"role": "assistant"}),  # the role alone is not output
        _chat_chunk(0, {"content": "Hel"}),
        _chat_chunk(0, {"content": ""}),
        _chat_chunk(1, {"content": "lo"}),
        _chat_chunk(1, {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
        _chat_chunk(1, {"tool_calls": []}),
        {"choices": [{"index": 0, "text": "x"}]},  # completions
        {"choices": [{"index": 0, "text": ""}]},
        {"choices": [{"index": 1, "delta": "not a dict", "text": ""}]},
    ):
        tracker.observe(chunk)
    assert tracker.delivered(prompt_fallback=7) == Usage(7, 4)


def test_per_choice_usage_is_summed_and_the_final_total_wins() -> None:
    tracker = UsageTracker(n=2)
    for index, done in ((0, 1), (1, 1), (0, 3), (1, 2)):
        tracker.observe(
            {
                "choices": [{"index": index, "text": "t"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": done},
            }
        )
    assert tracker.delivered(prompt_fallback=99) == Usage(5, 5)  # one prompt, n = 2
    tracker.observe({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
    assert tracker.delivered(prompt_fallback=99) == Usage(5, 6)
