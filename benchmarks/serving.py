"""Throughput and time-to-first-token: llmplat vs a bare vLLM server, same model, one run.

    .venv/bin/python benchmarks/serving.py [--concurrency 1 16] [--max-tokens 128]

Starts a bare vLLM OpenAI server with the tiny profile's engine arguments, measures it,
stops it; then does the same through `llmplat serve` (Gateway → Serve handle → LLMServer →
vLLM). Prints tokens/s and TTFT p50/p95 per concurrency and the platform/bare ratios, and
writes them to bench-results/serving.json. Numbers, not a pass/fail test.
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
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cpu_time
import httpx

from llmplat.config.loader import load_profile
from llmplat.engine.llm_config import cpu_engine_env, engine_kwargs, offline_env
from llmplat.models.tiny import ensure_tiny_model
from llmplat.session import autogroup_enabled, autogroup_nice, set_autogroup_nice
from llmplat.settings import Settings

MODEL = "tiny-mixtral"
WORDS = "expert router token batch stream cache layer shard gate prefix tensor pipeline".split()


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    cpu_s: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))


async def _one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
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
    return (ttft or 0.0), tokens


async def measure(
    target: str, url: str, key: str, concurrency: int, per_worker: int, max_tokens: int
) -> Result:
    rng = random.Random(concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as c:
        # Warm-up: one unmeasured full-length round at the same concurrency, for both
        # targets alike (engine shapes, caches, Ray's post-start work settle).
        await asyncio.gather(*(_one(c, _prompt(rng), max_tokens) for _ in range(concurrency)))

        async def worker() -> list[tuple[float, int]]:
            return [await _one(c, _prompt(rng), max_tokens) for _ in range(per_worker)]

        t0 = time.perf_counter()
        runs = await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    flat = [r for w in runs for r in w]
    ttfts = sorted(t for t, _ in flat)
    tokens = sum(n for _, n in flat)
    return Result(
        target=target,
        concurrency=concurrency,
        requests=len(flat),
        tokens=tokens,
        seconds=round(seconds, 2),
        tokens_per_s=round(tokens / seconds, 1),
        ttft_p50_ms=round(statistics.median(ttfts) * 1000, 1),
        ttft_p95_ms=round(ttfts[int(0.95 * (len(ttfts) - 1))] * 1000, 1),
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
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                args.append(flag)
            elif k == "enable_prefix_caching":
                args.append("--no-enable-prefix-caching")
        else:
            args += [flag, str(v)]
    env = CLEAN_ENV | offline_env(settings) | cpu_engine_env(profile, settings)
    return args, env


def run_target(
    name: str, cmd: list[str], env: dict, url: str, key: str, args, ready_path: str
) -> list[Result]:
    """Start a server in a session of its own, wait until it answers ``ready_path``, measure.

    Both servers' sessions run at the autogroup nice `llmplat serve` gives its own session
    (llmplat.session), so neither is measured with an advantage in CPU scheduling.
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
        for conc in args.concurrency:
            per_worker = args.requests_per_stream
            before = cpu_time.snapshot()
            r = asyncio.run(measure(name, url, key, conc, per_worker, args.max_tokens))
            r.cpu_s = {k: v for k, v in cpu_time.spent(before).items() if v >= 0.1}
            print(
                f"  {name:8s} c={conc:<3d} {r.tokens_per_s:8.1f} tok/s  "
                f"TTFT p50 {r.ttft_p50_ms:7.1f} ms  p95 {r.ttft_p95_ms:7.1f} ms\n"
                f"           CPU s: " + ", ".join(f"{k} {v}" for k, v in r.cpu_s.items()),
                flush=True,
            )
            results.append(r)
        return results
    finally:
        _stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--requests-per-stream", type=int, default=3, help="sequential requests per stream"
    )
    parser.add_argument("--only", choices=["bare", "platform"])
    args = parser.parse_args()
    settings = Settings()
    Path("bench-results").mkdir(exist_ok=True)
    model_dir = str(ensure_tiny_model(settings.models_dir, progress=print))
    results: list[Result] = []
    if args.only in (None, "bare"):
        port = _free_port()
        cmd, env = bare_vllm_cmd(model_dir, port, settings)
        results += run_target(
            "bare", cmd, env, f"http://127.0.0.1:{port}", "", args, ready_path="/v1/models"
        )
    if args.only in (None, "platform"):
        port, key = _free_port(), "llmp_dev_bench-" + os.urandom(8).hex()
        env = CLEAN_ENV | {"LLMPLAT_PORT": str(port), "LLMPLAT_DEV_API_KEY": key}
        cmd = [sys.executable, "-m", "llmplat", "serve"]
        results += run_target(
            "platform", cmd, env, f"http://127.0.0.1:{port}", key, args, ready_path="/readyz"
        )
    by = {(r.target, r.concurrency): r for r in results}
    print("\nconcurrency  tok/s bare  tok/s platform  ratio   TTFT p50 bare  platform  delta")
    for conc in args.concurrency:
        b, p = by.get(("bare", conc)), by.get(("platform", conc))
        if b and p:
            print(
                f"{conc:11d}  {b.tokens_per_s:10.1f}  {p.tokens_per_s:14.1f}  "
                f"{p.tokens_per_s / b.tokens_per_s:5.2f}   {b.ttft_p50_ms:10.1f} ms  "
                f"{p.ttft_p50_ms:6.1f} ms  {p.ttft_p50_ms - b.ttft_p50_ms:+6.1f} ms"
            )
    Path("bench-results/serving.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
