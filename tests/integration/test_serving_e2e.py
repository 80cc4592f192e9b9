"""End to end against a real platform with the official openai client."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest
from mistral_common.protocol.fim.request import FIMRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from llmplat.local.session import autogroup_enabled, autogroup_nice
from support import MODEL, V3_TOKENIZER

# A fresh event loop per test: no client state (sockets, selector keys) is shared by tests.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600, func_only=True),
    pytest.mark.asyncio(loop_scope="function"),
    pytest.mark.filterwarnings(
        "ignore:.*marked with '@pytest.mark.asyncio' but it is not an async"
    ),
]

NO_EOS = {"ignore_eos": True}  # random weights may sample EOS early; fix output lengths


async def test_models_and_readiness(client: openai.AsyncOpenAI, http, live) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await http.get("/healthz")).status_code == 200
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {MODEL: "ready"}


async def test_chat_completion(client) -> None:
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a sparse model architecture."},
        ],
        max_tokens=12,
        extra_body=NO_EOS,
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 10  # chat template + system prompt, real tokenizer


async def test_completion(client) -> None:
    resp = await client.completions.create(
        model=MODEL, prompt="The experts of a mixture", max_tokens=8, extra_body=NO_EOS
    )
    assert resp.choices[0].text
    assert resp.usage.completion_tokens == 8


async def test_fill_in_the_middle_uses_native_fim_tokens(client) -> None:
    prompt, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    expected = MistralTokenizer.from_file(str(V3_TOKENIZER)).encode_fim(
        FIMRequest(prompt=prompt, suffix=suffix)
    )
    resp = await client.completions.create(
        model=MODEL, prompt=prompt, suffix=suffix, max_tokens=6, extra_body=NO_EOS
    )
    assert resp.usage.prompt_tokens == len(expected.tokens)
    assert resp.usage.completion_tokens == 6


async def test_streaming_chat_with_usage(client) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream please"}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content


async def test_streaming_without_usage_option_sends_no_usage(client) -> None:
    stream = await client.completions.create(
        model=MODEL, prompt="hi", max_tokens=5, stream=True, extra_body=NO_EOS
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.usage is None for c in chunks)


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": MODEL}).encode(), 400, "messages"),
        (json.dumps({"model": MODEL, "messages": 5}).encode(), 400, "messages"),
        (
            json.dumps(
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 99999,
                }
            ).encode(),
            400,
            "max_tokens",
        ),
        (
            json.dumps(
                {"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}
            ).encode(),
            404,
            "model",
        ),
        (
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
            ).encode(),
            413,
            None,
        ),
    ],
)
async def test_bad_input_gets_openai_error_and_service_continues(
    http, live, client, content: bytes, status: int, param: str | None
) -> None:
    r = await http.post(
        "/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {live.key}", "content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code", "param"} and err["message"]
    if param:
        assert (err["param"] or "").startswith(param)
    ok = await client.completions.create(model=MODEL, prompt="ok", max_tokens=2, extra_body=NO_EOS)
    assert ok.usage.completion_tokens == 2


async def test_max_tokens_beyond_remaining_context_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model=MODEL, prompt="hello " * 50, max_tokens=4090)
    assert "context length" in exc.value.message


async def test_prompt_longer_than_context_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model=MODEL, prompt="word " * 5000, max_tokens=1)
    assert "context length" in exc.value.message


async def test_missing_and_wrong_key_are_401(live) -> None:
    async with openai.AsyncOpenAI(
        api_key="llmp_wrong", base_url=live.base_url, max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        with pytest.raises(openai.AuthenticationError) as err:
            await wrong.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.body["type"] == "authentication_error"
    # No key at all (no Authorization header), and a header that is not a bearer token.
    async with httpx.AsyncClient(base_url=live.url) as http:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
            r = await http.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                headers=headers,
            )
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


async def _stream_tokens(client: openai.AsyncOpenAI, max_tokens: int) -> int:
    stream = await client.completions.create(
        model=MODEL,
        prompt="Continuous batching test prompt",
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    return usage.completion_tokens


async def test_continuous_batching_16_streams_at_least_twice_one(client) -> None:
    tokens = 96
    await _stream_tokens(client, 4)  # warm-up
    t0 = time.perf_counter()
    single = await _stream_tokens(client, tokens)
    single_tps = single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(_stream_tokens(client, tokens) for _ in range(16)))
    many_tps = sum(counts) / (time.perf_counter() - t0)
    print(
        f"\n1 stream: {single_tps:.1f} tok/s; 16 streams: {many_tps:.1f} tok/s "
        f"({many_tps / single_tps:.2f}x)"
    )
    assert sum(counts) == 16 * tokens
    assert many_tps >= 2 * single_tps


def test_platform_session_yields_the_cpu_to_other_sessions(live) -> None:
    """The engine and Ray run in `llmplat serve`'s own session at autogroup nice 10; the
    test runner's session (the clients) is left as it was."""
    if not autogroup_enabled():
        pytest.skip("the kernel does not schedule by session (sched_autogroup_enabled)")
    engine = [
        pid
        for pid in (p for p in Path("/proc").iterdir() if p.name.isdigit())
        if _cmdline(pid).startswith("VLLM::Worker") and _session(pid) == live.pid
    ]
    assert engine, "no vLLM engine worker found in the platform's session"
    assert autogroup_nice(Path(f"/proc/{live.pid}/autogroup")) == 10
    assert autogroup_nice(engine[0] / "autogroup") == 10
    assert _session(Path(f"/proc/{os.getpid()}")) != live.pid


def _cmdline(proc) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _session(proc) -> int | None:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[3])  # field 6: session id
