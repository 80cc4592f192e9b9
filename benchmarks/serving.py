"""The workloads users run, on llmplat and on a bare vLLM server, same model, one run.

    .venv/bin/python benchmarks/serving.py [--workloads short streams fim]
                                           [--concurrency 1 16 64] [--max-tokens 128]

Starts a bare vLLM OpenAI server with the tiny profile's engine arguments, measures it,
stops it; then does the same through `llmplat serve` (Gateway → Serve handle → LLMServer →
vLLM). Workloads: short chat requests answered with one token (32 at once: the per-request
cost), fresh streams (one request per stream, 128 tokens, 1/16/64 at once) and
fill-in-the-middle completions (200-800-token prefix and suffix, 16-48 tokens, 16 at once).
Prints req/s, tokens/s, latency and TTFT percentiles, the CPU milliseconds each process
spent per request, and the platform/bare ratios; writes bench-results/serving.json. Numbers,
not a pass/fail test.
"""

from __future__ import annotations

import os

# Servers start from the environment we were given: importing vLLM and torch below
# rewrites this process's (LD_LIBRARY_PATH, RAY_CLIENT_MODE, inductor settings…).
CLEAN_ENV = dict(os.environ)

import argparse
import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cpu_time
import httpx

from llmplat.config.loader import load_profile
from llmplat.engine.llm_config import cpu_engine_env, engine_kwargs, offline_env
from llmplat.gateway.fim import load_fim_encoder
from llmplat.local.session import autogroup_enabled, autogroup_nice, set_autogroup_nice
from llmplat.models.tiny import ensure_tiny_model
from llmplat.settings import Settings

MODEL = "tiny-mixtral"
WORDS = "expert router token batch stream cache layer shard gate prefix tensor pipeline".split()


@dataclass
class Result:
    workload: str
    target: str
    concurrency: int
    requests: int
    seconds: float
    req_per_s: float
    tokens_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    latency_s: float
    ttft_s: float | None
    tokens: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _words(rng: random.Random, low: int, high: int, vocab: list[str] = WORDS) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(low, high)))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> Sample:
    """One streamed completion: time to the first token, tokens, total time."""
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    buf = b""
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        # SSE events end with a blank line; split bytes, not text lines (generated text
        # may hold U+2028 and friends, which str.splitlines treats as line breaks).
        async for data in resp.aiter_bytes():
            buf += data
            *events, buf = buf.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                chunk = json.loads(event[6:])
                if chunk.get("choices") and ttft is None:
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return Sample(time.perf_counter() - t0, ttft, tokens)


async def _unary(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Sample:
    t0 = time.perf_counter()
    resp = await client.post(path, json=body)
    resp.raise_for_status()
    return Sample(time.perf_counter() - t0, None, resp.json()["usage"]["completion_tokens"])


@dataclass(frozen=True)
class Workload:
    """What users send: ``requests`` made ``concurrency`` at a time, after a warm-up."""

    name: str
    concurrency: int
    requests: int
    make: Callable[[httpx.AsyncClient, random.Random], Awaitable[Sample]]


def short_requests(concurrency: int = 32, requests: int = 600) -> Workload:
    """IDE-style chat turns answered with one token: the per-request cost, nearly alone."""

    def make(c: httpx.AsyncClient, rng: random.Random) -> Awaitable[Sample]:
        content = _words(rng, 8, 24)
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
        return _unary(c, "/v1/chat/completions", body | {"max_tokens": 1})

    return Workload("short", concurrency, requests, make)


def fresh_streams(concurrency: int, max_tokens: int = 128) -> Workload:
    """One request per stream (a new completion each time), 128 tokens."""

    def make(c: httpx.AsyncClient, rng: random.Random) -> Awaitable[Sample]:
        body = {"model": MODEL, "prompt": _words(rng, 40, 80), "max_tokens": max_tokens}
        return _stream(c, body | {"ignore_eos": True})

    return Workload(f"streams c={concurrency}", concurrency, max(8, 3 * concurrency), make)


CODE = "def return self if else for in range import class None value items key list".split()


def fim(encode: Callable[[str, str], list[int]] | None, concurrency: int = 16) -> Workload:
    """Fill-in-the-middle code completion: 200-800-token prefix and suffix, 16-48 out.

    The platform gets ``prompt`` + ``suffix``; bare vLLM refuses ``suffix``, so it gets the
    same FIM token sequence (``encode``) the gateway would send it."""

    def make(c: httpx.AsyncClient, rng: random.Random) -> Awaitable[Sample]:
        prefix, suffix = _words(rng, 200, 800, CODE), _words(rng, 200, 800, CODE)
        body: dict[str, Any] = {"model": MODEL, "max_tokens": rng.randint(16, 48)}
        if encode is None:
            body |= {"prompt": prefix, "suffix": suffix}
        else:
            body |= {"prompt": encode(prefix, suffix)}
        return _unary(c, "/v1/completions", body | {"ignore_eos": True})

    return Workload("fim", concurrency, 96, make)


async def measure(target: str, url: str, key: str, work: Workload) -> Result:
    rng = random.Random(work.concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=work.concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as c:
        # Warm-up at the same concurrency, for both targets alike (engine shapes, caches,
        # Ray's post-start work settle).
        await asyncio.gather(*(work.make(c, rng) for _ in range(work.concurrency)))
        gate = asyncio.Semaphore(work.concurrency)

        async def one() -> Sample:
            async with gate:
                return await work.make(c, rng)

        before = cpu_time.snapshot()
        t0 = time.perf_counter()
        samples = await asyncio.gather(*(one() for _ in range(work.requests)))
        seconds = time.perf_counter() - t0
        cpu = cpu_time.spent(before)
    ttfts = [s.ttft_s for s in samples if s.ttft_s is not None]
    latencies = [s.latency_s for s in samples]
    return Result(
        workload=work.name,
        target=target,
        concurrency=work.concurrency,
        requests=len(samples),
        seconds=round(seconds, 2),
        req_per_s=round(len(samples) / seconds, 1),
        tokens_per_s=round(sum(s.tokens for s in samples) / seconds, 1),
        latency_p50_ms=round(_pct(latencies, 0.5) * 1000, 1),
        latency_p99_ms=round(_pct(latencies, 0.99) * 1000, 1),
        ttft_p50_ms=round(_pct(ttfts, 0.5) * 1000, 1) if ttfts else None,
        ttft_p99_ms=round(_pct(ttfts, 0.99) * 1000, 1) if ttfts else None,
        cpu_ms_per_request={
            k: round(v * 1000 / len(samples), 2) for k, v in cpu.items() if v >= 0.05
        },
    )


def _wait_http(
    url: str, proc: subprocess.Popen, timeout_s: float, headers: dict, ready_path: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{ready_path}", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up after {timeout_s} s")


def _group_alive(pgid: int) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getpgid(int(pid)) == pgid:
                    return True
            except OSError:
                continue
    return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server and every process it started (vLLM's engine core, workers)."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(1)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)


def _cpu_busy(interval_s: float = 2.0) -> float:
    def read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = read()
    time.sleep(interval_s)
    total1, idle1 = read()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def _wait_quiet(limit: float = 0.25, timeout_s: float = 120) -> None:
    """Measure on a settled machine: wait until the CPUs are mostly idle."""
    deadline = time.monotonic() + timeout_s
    while (busy := _cpu_busy()) > limit and time.monotonic() < deadline:
        print(f"  waiting for the machine to settle ({busy:.0%} busy)", flush=True)


BARE_WITHOUT = ("tool_call_parser", "enable_auto_tool_choice")
"""Bare vLLM runs without automatic tool choice: vLLM 0.29 then builds the Mistral parser's
lexer for every chat request (~50 ms of CPU; llmplat.engine.parser_cache builds it once), and
the baseline is vLLM at its fastest."""


def bare_vllm_cmd(model_dir: str, port: int, settings: Settings) -> tuple[list[str], dict]:
    profile = load_profile("tiny-mixtral-cpu", settings.config_dir)
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-enable-log-requests",
    ]
    for k, v in engine_kwargs(profile).items():
        if k in BARE_WITHOUT:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                args.append(flag)
            elif k == "enable_prefix_caching":
                args.append("--no-enable-prefix-caching")
        elif isinstance(v, dict):
            args += [flag, json.dumps(v)]
        else:
            args += [flag, str(v)]
    env = CLEAN_ENV | offline_env(settings) | cpu_engine_env(profile, settings)
    return args, env


def run_target(
    name: str,
    cmd: list[str],
    env: dict,
    url: str,
    key: str,
    workloads: list[Workload],
    ready_path: str,
) -> list[Result]:
    """Start a server in a session of its own, wait until it answers ``ready_path``, measure.

    Both servers' sessions run at the autogroup nice `llmplat serve` gives its own session
    (llmplat.local.session), so neither is measured with an advantage in CPU scheduling.
    """
    log = Path("bench-results") / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        nice = Settings().cpu.autogroup_nice
        if nice and autogroup_enabled():
            set_autogroup_nice(nice, Path(f"/proc/{proc.pid}/autogroup"))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # The platform's gateway answers before its engines are loaded; /readyz waits for them.
        _wait_http(url, proc, 900, headers, ready_path)
        print(
            f"  {name}: ready; its session's CPU autogroup nice: "
            f"{autogroup_nice(Path(f'/proc/{proc.pid}/autogroup'))}",
            flush=True,
        )
        _wait_quiet()
        results = []
        for work in workloads:
            r = asyncio.run(measure(name, url, key, work))
            ttft = (
                f"  TTFT p50 {r.ttft_p50_ms:7.1f} ms  p99 {r.ttft_p99_ms:7.1f} ms"
                if r.ttft_p50_ms is not None
                else ""
            )
            print(
                f"  {name:8s} {work.name:14s} {r.req_per_s:7.1f} req/s {r.tokens_per_s:8.1f} "
                f"tok/s  latency p50 {r.latency_p50_ms:7.1f} ms  p99 {r.latency_p99_ms:7.1f} ms"
                f"{ttft}\n           CPU ms/request: "
                + ", ".join(f"{k} {v}" for k, v in r.cpu_ms_per_request.items()),
                flush=True,
            )
            results.append(r)
        return results
    finally:
        _stop(proc)


def _workloads(args: argparse.Namespace, fim_encode: Callable | None) -> list[Workload]:
    out: list[Workload] = []
    for name in args.workloads:
        if name == "short":
            out.append(short_requests())
        elif name == "streams":
            out += [fresh_streams(c, args.max_tokens) for c in args.concurrency]
        elif name == "fim":
            out.append(fim(fim_encode))
    return out


def _ratio(p: float | None, b: float | None) -> str:
    return f"{p / b:5.2f}" if p and b else "    -"


def report(results: list[Result]) -> None:
    """Platform next to bare vLLM, workload by workload, with the ratios."""
    by = {(r.workload, r.target): r for r in results}
    print(
        f"\n{'workload':14s} {'req/s bare':>10s} {'platform':>9s} {'ratio':>6s}  "
        f"{'tok/s ratio':>11s}  {'p50 ms bare':>11s} {'platform':>9s} {'ratio':>6s}  "
        f"{'TTFT p50 bare':>13s} {'platform':>9s} {'delta':>7s}"
    )
    for workload in dict.fromkeys(r.workload for r in results):
        b, p = by.get((workload, "bare")), by.get((workload, "platform"))
        if not (b and p):
            continue
        ttft = ""
        if b.ttft_p50_ms is not None and p.ttft_p50_ms is not None:
            ttft = (
                f"  {b.ttft_p50_ms:13.1f} {p.ttft_p50_ms:9.1f} "
                f"{p.ttft_p50_ms - b.ttft_p50_ms:+7.1f}"
            )
        print(
            f"{workload:14s} {b.req_per_s:10.1f} {p.req_per_s:9.1f} "
            f"{_ratio(p.req_per_s, b.req_per_s):>6s}  "
            f"{_ratio(p.tokens_per_s, b.tokens_per_s):>11s}  {b.latency_p50_ms:11.1f} "
            f"{p.latency_p50_ms:9.1f} {_ratio(p.latency_p50_ms, b.latency_p50_ms):>6s}{ttft}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="+", choices=["short", "streams", "fim"],
        default=["short", "streams", "fim"],
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16, 64], help="streams at once"
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--only", choices=["bare", "platform"])
    args = parser.parse_args()
    settings = Settings()
    Path("bench-results").mkdir(exist_ok=True)
    model_dir = str(ensure_tiny_model(settings.models_dir, progress=print))
    encoder = load_fim_encoder(model_dir)
    if encoder is None:
        raise SystemExit(f"no FIM tokenizer in {model_dir}")
    results: list[Result] = []
    if args.only in (None, "bare"):
        port = _free_port()
        cmd, env = bare_vllm_cmd(model_dir, port, settings)
        results += run_target(
            "bare", cmd, env, f"http://127.0.0.1:{port}", "",
            _workloads(args, encoder.encode), ready_path="/v1/models",
        )  # fmt: skip
    if args.only in (None, "platform"):
        port, key = _free_port(), "llmp_dev_bench-" + os.urandom(8).hex()
        env = CLEAN_ENV | {"LLMPLAT_PORT": str(port), "LLMPLAT_DEV_API_KEY": key}
        cmd = [sys.executable, "-m", "llmplat", "serve"]
        results += run_target(
            "platform", cmd, env, f"http://127.0.0.1:{port}", key,
            _workloads(args, None), ready_path="/readyz",
        )  # fmt: skip
    report(results)
    Path("bench-results/serving.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
