"""The gateway alone: requests per second per gateway core, and the latency it adds.

    .venv/bin/python benchmarks/gateway.py [--requests 3000] [--rate 100]

Runs one gateway (the whole request pipeline: key check, prompt count, quota reservation,
lifecycle, metrics, audit line) with the shared fake engine behind it, which answers at
once, on uvicorn (httptools, uvloop: what a Serve replica runs) in a process of its own.
Measures (1) capacity: short chat requests (one token out), 32 at a time, and the gateway
process's CPU seconds: req/s per core = requests / CPU seconds; (2) added latency at a fixed
rate (open loop), against the same client and server stack answering a constant JSON body
(the HTTP floor). No Ray and no vLLM: what remains is the gateway's own cost. Writes
bench-results/gateway.json. Numbers, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MODEL = "tiny-mixtral"
KEY = "llmp_dev_gateway-bench-0123456789abcdef"
WORDS = "expert router token batch stream cache layer shard gate prefix tensor".split()
_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int, kind: str) -> None:
    """The server process: the gateway with the fake engine, or the HTTP floor."""
    import uvicorn
    from pydantic import SecretStr

    if kind == "floor":
        body = json.dumps({"usage": {"completion_tokens": 1}}).encode()

        async def app(scope, receive, send):  # noqa: ANN001 - a bare ASGI app
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    else:
        import mistral_common

        from llmplat.config.loader import load_profile
        from llmplat.engine.fake import FAKE_OPTIONS_KEY, FakeEngine
        from llmplat.engine.llm_config import build_llm_config
        from llmplat.gateway.app import create_app
        from llmplat.gateway.assemble import assemble_state
        from llmplat.gateway.backends import EngineBackend
        from llmplat.gateway.state import GatewayConfig, GatewayModel
        from llmplat.settings import Settings

        home = Path(tempfile.mkdtemp(prefix="llmplat-gw-bench-"))
        model_dir = home / "model"
        model_dir.mkdir()
        tokenizer = "mistral_instruct_tokenizer_240323.model.v3"
        shutil.copy(
            Path(mistral_common.__file__).parent / "data" / tokenizer,
            model_dir / "tokenizer.model.v3",
        )
        settings = Settings(home=home)
        profile = load_profile("tiny-mixtral-cpu", settings.config_dir)
        cfg = build_llm_config(profile, settings, str(model_dir))
        cfg.experimental_configs[FAKE_OPTIONS_KEY] = {"token_delay_s": 0.0}
        engine = FakeEngine(cfg)
        asyncio.run(engine.start())
        config = GatewayConfig(
            models=(GatewayModel(MODEL, profile.engine.max_model_len, str(model_dir)),),
            dev_api_key=SecretStr(KEY),
            keystore_path=str(home / "teams.yaml"),
            audit_sink=str(home / "audit.log"),
        )
        app = create_app(assemble_state(config, {MODEL: EngineBackend(engine)}))
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
    )  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _body(rng: random.Random) -> dict:
    content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1}


async def _post(c: httpx.AsyncClient, rng: random.Random) -> float:
    t0 = time.perf_counter()
    r = await c.post("/v1/chat/completions", json=_body(rng))
    r.raise_for_status()
    return time.perf_counter() - t0


async def capacity(url: str, pid: int, requests: int) -> dict[str, float]:
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=36)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as c:
        await asyncio.gather(*(_post(c, rng) for _ in range(64)))
        gate = asyncio.Semaphore(32)

        async def one() -> float:
            async with gate:
                return await _post(c, rng)

        cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds(pid) - cpu0
    return {
        "req_per_s": round(requests / seconds, 1),
        "server_cpu_s": round(cpu, 2),
        "req_per_s_per_core": round(requests / cpu, 1),
        "cpu_ms_per_request": round(cpu * 1000 / requests, 3),
    }


async def fixed_rate(url: str, rate: float, seconds: float) -> dict[str, float]:
    """Open loop: a request every 1/rate s whatever the answers do."""
    rng = random.Random(2)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
        await asyncio.gather(*(_post(c, rng) for _ in range(16)))
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_post(c, rng)))
        latencies = sorted(await asyncio.gather(*tasks))
    return {
        "rate": rate,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
    }


def _start(kind: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), kind])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100.0, help="fixed rate, req/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return 0
    out: dict[str, dict] = {}
    for kind in ("floor", "gateway"):
        proc, url = _start(kind)
        try:
            out[kind] = {
                "capacity": asyncio.run(capacity(url, proc.pid, args.requests)),
                "fixed_rate": asyncio.run(fixed_rate(url, args.rate, args.seconds)),
            }
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        print(f"{kind:8s} {out[kind]}", flush=True)
    gw, floor = out["gateway"], out["floor"]
    added = {
        q: round(gw["fixed_rate"][q] - floor["fixed_rate"][q], 2) for q in ("p50_ms", "p99_ms")
    }
    out["gateway"]["added_latency_ms"] = added
    print(
        f"\ngateway: {gw['capacity']['req_per_s_per_core']} req/s per core "
        f"({gw['capacity']['cpu_ms_per_request']} CPU ms/request; HTTP floor "
        f"{floor['capacity']['cpu_ms_per_request']}); at {args.rate:.0f} req/s it adds "
        f"p50 {added['p50_ms']} ms, p99 {added['p99_ms']} ms over the HTTP floor"
    )
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/gateway.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
