"""Requests that clients cancel, cut short or send in bursts, on the real platform.

Ray Serve cancels the gateway's task when a client leaves; every such request must still
end exactly once: its concurrency slot freed at once, its tokens billed as the engine
produced them, and no answer lost in a burst.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import httpx
import pytest

from support import MODEL
from support.audit import audit_lines
from support.waiting import eventually

# A fresh event loop per test: no client state (sockets, selector keys) is shared by tests.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600, func_only=True),
    pytest.mark.asyncio(loop_scope="function"),
]

NO_EOS = {"ignore_eos": True}
BURST = 256
ROUNDS = int(os.environ.get("LLMPLAT_TEST_BURST_ROUNDS", "2"))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _usage(http: httpx.AsyncClient, key: str) -> dict:
    return (await http.get("/v1/usage", headers=_auth(key))).json()["usage"][0]


async def test_streams_dropped_before_first_token_free_their_slots_at_once(live) -> None:
    """A concurrency-2 batch team opens streams behind a flood of another batch team and
    drops them before any token arrives, 8 times; it is admitted again at once."""
    pair, ci = live.team_keys["pair"], live.team_keys["ci"]
    # The flood has a client (and connection pool) of its own: the dropped streams must
    # really reach the gateway, not wait for a free connection in the client.
    limits = httpx.Limits(max_connections=400)
    flooder = httpx.AsyncClient(base_url=live.url, timeout=300, limits=limits)
    async with flooder, httpx.AsyncClient(base_url=live.url, timeout=300) as http:
        flood_body = {"model": MODEL, "prompt": "flood", "max_tokens": 64, **NO_EOS}
        flood = [
            asyncio.create_task(flooder.post("/v1/completions", json=flood_body, headers=_auth(ci)))
            for _ in range(160)
        ]
        await asyncio.sleep(2)  # the engine's slots are full and a queue waits behind them

        async def open_stream() -> str:
            body = {"model": MODEL, "prompt": "queued", "max_tokens": 32, "stream": True}
            async with http.stream("POST", "/v1/completions", json=body, headers=_auth(pair)) as r:
                return f"{r.status_code} {(await r.aread())[:200]!r}"

        freed_s = []
        for _ in range(4):
            streams = [asyncio.create_task(open_stream()) for _ in range(2)]
            done, _ = await asyncio.wait(streams, timeout=0.5)
            assert not done, f"meant to be queued, got {[t.result() for t in done]}"
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            start = time.monotonic()
            while (await _usage(http, pair))["in_flight"] != 0:
                assert time.monotonic() - start < 2, "dropped streams still hold their slots"
                await asyncio.sleep(0.02)
            freed_s.append(time.monotonic() - start)
        # The flood goes first: behind it, the request below would wait minutes in the
        # engine's queue. Admission is the gateway's (a held slot would be a 429 at once).
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        r = await http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "again", "max_tokens": 1},
            headers=_auth(pair),
        )
        assert r.status_code == 200, r.text
    print(f"\ndropped streams: slots free {max(freed_s):.2f} s (max) after each drop")

    def dropped() -> int:  # audit lines are written by a background thread
        lines = audit_lines(live.home / "audit.log", "request")
        return sum(1 for x in lines if x["team"] == "pair" and x["status"] == 499)

    await eventually(lambda: dropped() >= 8, timeout_s=5, what="8 drops audited as 499")
    assert dropped() == 8


async def test_cut_short_stream_with_n4_is_billed_for_every_choice(live) -> None:
    key = live.team_keys["ide"]
    async with httpx.AsyncClient(base_url=live.url, timeout=300) as http:
        await _wait_idle(http, key)
        before = await _usage(http, key)
        body = {
            "model": MODEL,
            "prompt": "billing every choice",
            "max_tokens": 200,
            "n": 4,
            "stream": True,
            **NO_EOS,
        }
        received = 0
        async with http.stream("POST", "/v1/completions", json=body, headers=_auth(key)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    received += 1
                if received >= 120:
                    break
        await _wait_idle(http, key)
        after = await _usage(http, key)
    billed = after["tokens_today"] - before["tokens_today"]
    print(f"\nn=4 stream cut after {received} chunks: billed {billed} tokens")
    assert billed >= 120 + 4  # every delivered token of every choice, plus the prompt


async def _wait_idle(http: httpx.AsyncClient, key: str) -> None:
    start = time.monotonic()
    while (await _usage(http, key))["in_flight"] != 0:
        assert time.monotonic() - start < 10
        await asyncio.sleep(0.05)


def _complete_stream(text: str) -> bool:
    """Ends with [DONE], and no event is an error event. (Not a substring test: the model
    may generate the token `error`, which vLLM serialises as `"text":"error"`.)"""
    events = [e for e in text.split("\n\n") if e.strip()]
    if not events or events[-1] != "data: [DONE]":
        return False
    return not any("error" in json.loads(e[6:]) for e in events[:-1] if e.startswith("data: {"))


async def test_bursts_of_mixed_requests_are_all_answered(live) -> None:
    """Several rounds of 256 concurrent requests (streaming and not, chat and completions),
    each with its own X-Request-ID: every one gets a complete answer."""
    limits = httpx.Limits(max_connections=BURST * 2, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=live.url, timeout=240, limits=limits) as http:

        async def one(i: int) -> tuple[str, str | None]:
            rid = f"burst-{uuid.uuid4().hex}"
            headers = _auth(live.key) | {"x-request-id": rid}
            stream = i % 2 == 0
            if i % 4 < 2:
                path = "/v1/completions"
                body = {"model": MODEL, "prompt": f"burst {i}", "max_tokens": 4 + i % 9}
            else:
                path = "/v1/chat/completions"
                msgs = [{"role": "user", "content": f"burst {i}"}]
                body = {"model": MODEL, "messages": msgs, "max_tokens": 4 + i % 9}
            body |= {"stream": stream, **NO_EOS}
            try:
                if stream:
                    async with http.stream("POST", path, json=body, headers=headers) as r:
                        text = b"".join([c async for c in r.aiter_bytes()]).decode()
                    ok = r.status_code == 200 and _complete_stream(text)
                else:
                    r = await http.post(path, json=body, headers=headers)
                    text = r.text
                    ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
                kind = "stream" if stream else "unary"
                why = f"{kind} status {r.status_code}, {len(text)} chars, ends {text[-300:]!r}"
                return rid, None if ok else why
            except Exception as exc:
                return rid, f"{type(exc).__name__}: {exc}"

        for round_no in range(ROUNDS):
            t0 = time.monotonic()
            results = await asyncio.gather(*(one(i) for i in range(BURST)))
            failed = [(rid, why) for rid, why in results if why is not None]
            took = time.monotonic() - t0
            print(f"\nburst round {round_no + 1}: {BURST} requests in {took:.1f} s")
            if failed:
                audited = {  # the server's view: status, tokens, body bytes it sent
                    line["request_id"]: {
                        k: line[k] for k in ("status", "completion_tokens", "bytes", "ttft_ms")
                    }
                    for line in audit_lines(live.home / "audit.log", "request")
                }
                detail = [(rid, why, audited.get(rid)) for rid, why in failed[:10]]
                raise AssertionError(f"{len(failed)} of {BURST} unanswered: {detail}")
