"""Event-loop lag of a gateway replica while 1 MiB prompts are admitted next to live streams.

The gateway's real app (middleware, routes, lifecycle, quotas, audit) runs in this process
with the shared fake engine pacing 16 streams; a monitor on the same event loop measures how
late a 1 ms sleep wakes up. Measured twice in one run: streams alone (the baseline), then
streams while 1 MiB request bodies are parsed, checked and counted one after another.

    python benchmarks/loop_lag.py

Target: no stall over 5 ms while the large bodies are admitted.
Results also go to bench-results/loop_lag.json.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pydantic import SecretStr

from llmplat.gateway.app import create_app
from llmplat.gateway.assemble import assemble_state
from llmplat.gateway.backends import EngineBackend
from llmplat.gateway.state import GatewayConfig, GatewayModel
from llmplat.settings import Settings
from support import DEV_KEY, MODEL, V3_TOKENIZER, make_engine
from support.asgi import Client, call

STREAMS = 16
BIG_BODIES = 8
BIG_BYTES = 1 << 20


async def _monitor(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t0 - 0.001)


async def _phase(app, big: bool) -> dict[str, float]:
    stop, lags = asyncio.Event(), []
    monitor = asyncio.create_task(_monitor(stop, lags))
    body = {"model": MODEL, "prompt": "stream me", "max_tokens": 120, "stream": True}
    streams = [
        asyncio.create_task(call(app, "/v1/completions", body, DEV_KEY, Client()))
        for _ in range(STREAMS)
    ]
    admitted_s = []
    if big:
        words = ("expert router token batch stream cache " * (BIG_BYTES // 40))[: BIG_BYTES - 200]
        for _ in range(BIG_BODIES):
            client = Client()
            t0 = time.perf_counter()
            await call(app, "/v1/completions", {"model": MODEL, "prompt": words}, DEV_KEY, client)
            admitted_s.append(time.perf_counter() - t0)
            assert client.status == 400, client.text  # longer than the context: refused
    await asyncio.gather(*streams)
    stop.set()
    await monitor
    lags.sort()
    return {
        "samples": len(lags),
        "lag_p50_ms": statistics.median(lags) * 1000,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "lag_max_ms": lags[-1] * 1000,
        "big_body_answer_p50_ms": statistics.median(admitted_s) * 1000 if admitted_s else 0.0,
    }


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    model_dir = tmp / "model"
    model_dir.mkdir()
    shutil.copy(V3_TOKENIZER, model_dir / "tokenizer.model.v3")
    settings = Settings(home=tmp / "home", dev_api_key=SecretStr(DEV_KEY))
    engine = make_engine(settings, MODEL, max_model_len=4096)
    engine.token_delay_s = 0.01
    await engine.start()
    config = GatewayConfig(
        models=(GatewayModel(MODEL, 4096, str(model_dir)),),
        dev_api_key=SecretStr(DEV_KEY),
        gateway=settings.gateway.model_copy(update={"max_request_bytes": 2 * BIG_BYTES}),
        keystore_path=str(tmp / "teams.yaml"),
        audit_sink=None,  # no audit log (GatewayConfig takes None, not the setting's "none")
    )
    state = assemble_state(config, {MODEL: EngineBackend(engine)})
    app = create_app(state)
    async with app.router.lifespan_context(app):
        await _phase(app, big=False)  # warm-up
        base = await _phase(app, big=False)
        loaded = await _phase(app, big=True)
    result = {"streams_alone": base, "streams_with_1mib_bodies": loaded}
    print(f"event-loop lag, {STREAMS} live streams (fake engine, 10 ms/token):")
    for name, r in result.items():
        print(
            f"  {name:26} p50 {r['lag_p50_ms']:6.2f} ms  p99 {r['lag_p99_ms']:6.2f} ms  "
            f"max {r['lag_max_ms']:6.2f} ms"
        )
    answered = loaded["big_body_answer_p50_ms"]
    ratio = loaded["lag_max_ms"] / max(base["lag_max_ms"], 1e-6)
    print(f"  1 MiB body answered (400, over the context) in {answered:.1f} ms p50")
    print(f"  max stall with 1 MiB bodies vs alone: {ratio:.2f}x")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "loop_lag.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
