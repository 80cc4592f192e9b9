"""A stream the client cuts is billed exactly what the engine generated, to the token.

The client (support.asgi.Client) disconnects after a given number of body chunks. The
gateway relays one engine chunk per body chunk and reads the next chunk from the engine
only after the last send returned; the disconnect stops the relay (and cancels the engine
call) while it waits for that next chunk, so the engine handed the gateway exactly the
chunks the client got, and that is what is billed: the prompt once and each delivered
token. The reservation (prompt plus ``max_tokens`` per choice) is far larger, so billing
it, a per-choice count read from one choice, or the prompt once per choice, all give
another number.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from llmplat.engine.fake import FakeEngine
from llmplat.gateway.state import RequestRecord
from support import DEV_KEY, MODEL, auth
from support.asgi import Client, call
from support.waiting import eventually

PROMPT = "alpha beta"  # two tokens for the fake engine
PROMPT_TOKENS = 2
MAX_TOKENS = 200


async def _cut(gateway: Any, path: str, body: dict[str, Any], after_chunks: int) -> Client:
    client = Client(disconnect_after_chunks=after_chunks)
    try:
        await call(gateway, path, body, DEV_KEY, client)
    except OSError:
        pass  # the client's end was closed: the server's send raised, as uvicorn's does
    return client


async def _billed_today(http: httpx.AsyncClient) -> int:
    """The dev team's tokens today, once nothing is in flight (settled)."""
    for _ in range(200):
        usage = (await http.get("/v1/usage", headers=auth(DEV_KEY))).json()["usage"][0]
        if usage["in_flight"] == 0:
            return int(usage["tokens_today"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"still in flight: {usage}")


def _token_chunks(client: Client) -> list[dict[str, Any]]:
    events = [e for e in client.text.split("\n\n") if e.startswith("data: {")]
    return [json.loads(e[6:]) for e in events]


async def test_cut_completion_stream_bills_the_generated_tokens_exactly(
    gateway: Any, http: httpx.AsyncClient, records: list[RequestRecord]
) -> None:
    engine: FakeEngine = gateway.state.gateway.backends[MODEL].engine
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    client = await _cut(gateway, "/v1/completions", body, after_chunks=4)
    assert len(_token_chunks(client)) == 4
    await eventually(lambda: len(records) == 1, what="the request is recorded")
    (record,) = records
    assert record.status == 499
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, 4)
    assert await _billed_today(http) == PROMPT_TOKENS + 4  # not the 2 + 200 reserved
    await eventually(lambda: engine.open_calls == 0, what="engine call closed")
    assert engine.cancelled == 1


async def test_cut_chat_stream_bills_tokens_not_role_chunks(
    gateway: Any, http: httpx.AsyncClient, records: list[RequestRecord]
) -> None:
    """A chat stream opens with a role chunk per choice that carries no token."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    client = await _cut(gateway, "/v1/chat/completions", body, after_chunks=4)
    chunks = _token_chunks(client)
    assert [c["choices"][0]["delta"].get("role") for c in chunks] == ["assistant"] + [None] * 3
    await eventually(lambda: len(records) == 1, what="the request is recorded")
    (record,) = records
    assert record.usage.completion_tokens == 3  # the role chunk carries none
    prompt = record.usage.prompt_tokens  # the chat template's rendering, as the engine said
    assert prompt > 0
    assert await _billed_today(http) == prompt + 3


async def test_cut_stream_with_n_choices_sums_each_choice_and_counts_the_prompt_once(
    gateway: Any, http: httpx.AsyncClient, records: list[RequestRecord]
) -> None:
    """Chunks go round the four choices (one token of each per round): 30 delivered are
    8 + 8 + 7 + 7 tokens, each choice's count from its own chunks; the prompt is billed
    once, not once per choice."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True, "n": 4}
    client = await _cut(gateway, "/v1/completions", body, after_chunks=30)
    indexes = [c["choices"][0]["index"] for c in _token_chunks(client)]
    assert indexes == [0, 1, 2, 3] * 7 + [0, 1]
    await eventually(lambda: len(records) == 1, what="the request is recorded")
    (record,) = records
    assert (record.usage.prompt_tokens, record.usage.completion_tokens) == (PROMPT_TOKENS, 30)
    assert await _billed_today(http) == PROMPT_TOKENS + 30
