"""One model sharded over two Ray nodes on this machine: `llmplat serve --nodes 2 --config
sharded` (a head and one worker raylet, a core each), serving the embedded model three ways
(`configs/sharded.yaml`): unsharded, pipeline parallel 2 with one stage on each node, and
tensor parallel 2 with both shards on one node. Real Ray, real vLLM-CPU, the official
``openai`` client.

- Pipeline parallelism moves whole activations between stages: greedy outputs equal the
  unsharded engine's token for token, streamed and not.
- Tensor parallelism all-reduces partial sums, which rounds differently: its
  first tokens' log-probabilities stay within ``TP_LOGPROB_TOL`` of the unsharded engine's,
  and its greedy token is the same wherever the top two differ by more than that.
- Every rank sits where the profile asks (stages on different nodes, shards on one), as
  ``/admin/status``, ``llmplat status`` and the rank metric say.
- Last: the worker node dies under load. Its requests end with an error (no hang), nothing
  stays in flight, ``/readyz`` names the model; the platform starts the node again and the
  replica is placed again and serves, without a restart of the platform.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from support.platform import free_port, launch, platform_home, stop

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sharded.yaml"
BASE, PP, TP = "tiny-mixtral-unsharded", "tiny-mixtral-pp2", "tiny-mixtral-tp2"
PROMPTS = [
    "hello world",
    "def add(a, b):\n    return",
    "The capital of France is",
    "SELECT * FROM users WHERE",
    "Once upon a time",
    "import numpy as np\n",
    "1, 2, 3, 5, 8,",
    "<html><body>",
]
TOKENS = 16
TP_LOGPROB_TOL = 1e-3
"""Largest difference allowed between a TP-2 and an unsharded log-probability (nats): the
all-reduce of two float32 partial sums rounds differently from one full sum (the sharded
profiles run float32: the random weights' near-flat logits have top-two gaps below
bfloat16's rounding)."""

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1200, func_only=True),
    pytest.mark.slow,
]


@dataclass
class Sharded:
    url: str
    key: str
    admin_token: str
    home: Path
    log: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    engine_metrics_url: str

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0)

    def usage(self) -> httpx.Response:
        return httpx.get(
            f"{self.url}/v1/usage", headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sharded]:
    home = platform_home(tmp_path_factory, "llmplat-sharded")
    key = "llmp_dev_" + secrets.token_urlsafe(24)
    admin_token = "llmp_admin_" + secrets.token_urlsafe(24)
    port, metrics_port = free_port(), free_port()
    env = os.environ | {
        "LLMPLAT_HOME": str(home),
        "LLMPLAT_PORT": str(port),
        "LLMPLAT_DEV_API_KEY": key,
        "LLMPLAT_ADMIN_TOKEN": admin_token,
        "LLMPLAT_ENGINE_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    log = home / "serve.log"
    proc = launch(["serve", "--nodes", "2", "--config", str(CONFIG)], env, log)
    platform = Sharded(
        url=f"http://127.0.0.1:{port}",
        key=key,
        admin_token=admin_token,
        home=home,
        log=log,
        proc=proc,
        env=env,
        engine_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
    )
    try:
        yield platform
    finally:
        stop(platform.proc, home, log)


async def _complete(client: openai.AsyncOpenAI, model: str, prompt: str) -> openai.types.Completion:
    return await client.completions.create(
        model=model, prompt=prompt, max_tokens=TOKENS, temperature=0, seed=7, logprobs=2
    )


async def _stream_text(client: openai.AsyncOpenAI, model: str, prompt: str) -> tuple[str, int]:
    text, usage = [], 0
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=TOKENS,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].text)
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return "".join(text), usage


async def test_pipeline_parallel_greedy_output_is_the_unsharded_engines(sharded) -> None:
    client = sharded.client()
    for prompt in PROMPTS:  # one at a time: a batch of one on every engine
        base = await _complete(client, BASE, prompt)
        piped = await _complete(client, PP, prompt)
        assert piped.choices[0].logprobs.tokens == base.choices[0].logprobs.tokens, prompt
        assert piped.choices[0].text == base.choices[0].text
        assert piped.usage.completion_tokens == base.usage.completion_tokens == TOKENS
        assert piped.usage.prompt_tokens == base.usage.prompt_tokens
        streamed, streamed_tokens = await _stream_text(client, PP, prompt)
        assert (streamed, streamed_tokens) == (base.choices[0].text, TOKENS), prompt


async def test_tensor_parallel_logprobs_stay_within_the_tolerance(sharded) -> None:
    client = sharded.client()
    compared = decided = 0
    worst = 0.0
    for prompt in PROMPTS:
        base = (await _complete(client, BASE, prompt)).choices[0].logprobs
        split = (await _complete(client, TP, prompt)).choices[0].logprobs
        # Up to the first token the two chose differently, the contexts are the same.
        for b_tok, s_tok, b_lp, s_lp, b_top in zip(
            base.tokens, split.tokens, base.token_logprobs, split.token_logprobs,
            base.top_logprobs, strict=True,
        ):
            gap = sorted(b_top.values(), reverse=True)
            margin = gap[0] - gap[1] if len(gap) > 1 else float("inf")
            if margin > TP_LOGPROB_TOL:
                assert s_tok == b_tok, (prompt, b_tok, s_tok, margin)
                decided += 1
            if s_tok != b_tok:
                break
            worst = max(worst, abs(s_lp - b_lp))
            assert abs(s_lp - b_lp) <= TP_LOGPROB_TOL, (prompt, b_tok, b_lp, s_lp)
            compared += 1
    print(f"\nTP 2 vs unsharded: {compared} log-probabilities, largest difference {worst:.2e}; "
          f"{decided} tokens decided by more than {TP_LOGPROB_TOL}")
    assert compared >= len(PROMPTS) and decided >= len(PROMPTS)


def _placement(sharded: Sharded) -> dict[str, list[dict]]:
    deployments = sharded.admin("/admin/status").json()["deployments"]
    return {
        name.split(":", 1)[1]: dep["placement"]
        for name, dep in deployments.items()
        if "placement" in dep
    }


def test_ranks_sit_where_the_profiles_ask(sharded) -> None:
    placement = _placement(sharded)
    (pp,) = placement[PP]
    assert [(r["rank"], r["stage"], r["shard"]) for r in pp["ranks"]] == [(0, 0, 0), (1, 1, 0)]
    assert {r["node"] for r in pp["ranks"]} == {"head", "worker-1"}  # a stage on each node
    (tp,) = placement[TP]
    assert [(r["stage"], r["shard"]) for r in tp["ranks"]] == [(0, 0), (0, 1)]
    assert len({r["node"] for r in tp["ranks"]}) == 1  # both shards on one node
    # The same as the engines report it (Ray's metrics export, beside vLLM's, on the node
    # that runs the replica: the head's port or the worker's).
    rank_lines: list[str] = []
    deadline = time.monotonic() + 60  # re-recorded at each health check (every 10 s)
    while len(rank_lines) < 2 and time.monotonic() < deadline:
        time.sleep(2)
        rank_lines = [
            line
            for url in _metrics_urls(sharded)
            for line in httpx.get(url, timeout=30).text.splitlines()
            if line.startswith("ray_llmplat_engine_rank_info{") and f'model="{PP}"' in line
        ]
    assert len(rank_lines) == 2, rank_lines
    for r in pp["ranks"]:
        assert any(f'rank="{r["rank"]}"' in line and f'node="{r["node"]}"' in line
                   for line in rank_lines), rank_lines
    # And as an operator reads it.
    out = subprocess.run(
        [sys.executable, "-m", "llmplat", "status", "--url", sharded.url],
        env=sharded.env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"{PP} replica " in out.stdout and "(stage 1, shard 0) on " in out.stdout


def _metrics_urls(sharded: Sharded) -> list[str]:
    """The head's engine metrics port and each worker node's (its `ray start` line)."""
    urls = [sharded.engine_metrics_url]
    for child in psutil.Process(sharded.proc.pid).children(recursive=True):
        cmd = child.cmdline()
        if "ray.scripts.scripts" in " ".join(cmd) and "--metrics-export-port" in cmd:
            port = cmd[cmd.index("--metrics-export-port") + 1]
            urls.append(f"http://127.0.0.1:{port}/metrics")
    return urls


def _worker_raylet(sharded: Sharded) -> psutil.Process:
    serve = psutil.Process(sharded.proc.pid)
    for child in serve.children(recursive=True):
        cmd = " ".join(child.cmdline())
        if "ray.scripts.scripts" in cmd and "worker-1" in cmd:
            (raylet,) = [c for c in child.children() if "raylet" in c.name()]
            return raylet
    raise AssertionError("no worker-1 raylet under the platform's process")


async def _long_stream(client: openai.AsyncOpenAI, model: str) -> tuple[str, int]:
    got = 0
    try:
        stream = await client.completions.create(
            model=model, prompt="count", max_tokens=3000, stream=True,
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices:
                got += 1
        return "finished", got
    except (openai.APIError, httpx.HTTPError) as exc:
        return type(exc).__name__, got


async def test_a_dead_node_fails_its_requests_and_the_replica_comes_back(sharded) -> None:
    """Last in the module: it kills the worker node (the platform starts it again)."""
    client = sharded.client()
    streams = [asyncio.create_task(_long_stream(client, PP)) for _ in range(3)]
    await asyncio.sleep(8)  # every stream is generating
    assert not any(s.done() for s in streams)
    killed_at = time.monotonic()
    _worker_raylet(sharded).send_signal(signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*streams), timeout=120)
    ended_s = time.monotonic() - killed_at
    print(f"\nnode killed: streams ended {ended_s:.1f} s later: {results}")
    for outcome, chunks in results:
        assert outcome != "finished" and chunks > 0, results  # cut with an error, not a hang
    # Nothing stays in flight, and the cut streams are billed what they delivered, not the
    # 3,000 tokens each reserved.
    usage = (await asyncio.to_thread(sharded.usage)).json()["usage"][0]
    assert usage["in_flight"] == 0, usage
    assert usage["tokens_this_minute"] < 3 * 3000, usage
    # The platform says the model is down (within a health check or two), then brings it
    # back once the node has joined again.
    async def readyz() -> httpx.Response:
        return await asyncio.to_thread(httpx.get, f"{sharded.url}/readyz", timeout=30)

    deadline = time.monotonic() + 60
    ready = await readyz()
    while ready.json()["models"][PP] == "ready" and time.monotonic() < deadline:
        await asyncio.sleep(1)
        ready = await readyz()
    down_s = time.monotonic() - killed_at
    assert ready.status_code == 503 and ready.json()["models"][PP] != "ready", ready.text
    print(f"{PP} reported {ready.json()['models'][PP]!r} {down_s:.0f} s after the kill")
    deadline = time.monotonic() + 600
    while ready.status_code != 200 and time.monotonic() < deadline:
        await asyncio.sleep(2)
        ready = await readyz()
    back_s = time.monotonic() - killed_at
    print(f"{PP} ready again {back_s:.0f} s after the node was killed")
    assert ready.status_code == 200, ready.text
    again = await _complete(client, PP, PROMPTS[0])
    base = await _complete(client, BASE, PROMPTS[0])
    assert again.choices[0].text == base.choices[0].text
    (pp,) = (await asyncio.to_thread(_placement, sharded))[PP]
    assert {r["node"] for r in pp["ranks"]} == {"head", "worker-1"}
