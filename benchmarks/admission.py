"""Cost of authentication + quota admission per request, in process and over Redis.

Measures, on the gateway's real code path (RegistryAuthenticator → QuotaService.admit →
settle), the latency each request pays before it is forwarded, with a no-op await as the
floor measured in the same run. Prompt counting (the model's tokenizer) is reported on its
own: it scales with the prompt, not with the quota machinery.

    python benchmarks/admission.py [--requests N]

Targets: in process p50 <= 1 ms and p99 <= 3 ms; Redis p99 <= 3 ms over loopback.
Results also go to bench-results/admission.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway redis-server helper

from llmplat.auth.keys import mint_key
from llmplat.auth.registry_auth import RegistryAuthenticator
from llmplat.config.teams import ApiKeyRecord, Limits, Registry, Team
from llmplat.engine.protocol import ChatCompletionRequest
from llmplat.gateway.admission import QuotaService
from llmplat.gateway.tokens import PromptCounter
from llmplat.models.tiny import v3_tokenizer_path
from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.quotas.model import QuotaStore
from llmplat.quotas.redis_store import RedisQuotaStore
from support.redis_server import redis_server

TEAMS = 50
KEYS_PER_TEAM = 20
BIG = 10**12  # limits that are checked but never reached


def _registry() -> tuple[Registry, list[str]]:
    teams, keys, plaintexts = {}, {}, []
    limits = Limits(
        requests_per_minute=BIG, tokens_per_minute=BIG, tokens_per_day=BIG, concurrent_requests=BIG
    )
    for t in range(TEAMS):
        name = f"team-{t}"
        teams[name] = Team(name=name, limits=limits)
        for _ in range(KEYS_PER_TEAM):
            k = mint_key()
            keys[k.key_id] = ApiKeyRecord(
                key_id=k.key_id,
                team=name,
                secret_sha256=k.secret_sha256,
                limits=Limits(requests_per_minute=BIG),  # a per-key scope as well
            )
            plaintexts.append(k.plaintext)
    return Registry(teams=teams, keys=keys), plaintexts


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def _measure(store: QuotaStore, n: int) -> dict[str, float]:
    registry, plaintexts = _registry()
    auth = RegistryAuthenticator(registry)
    quotas = QuotaService(store)
    admit_s, settle_s = [], []
    for i in range(n + n // 10):
        header = f"Bearer {plaintexts[i % len(plaintexts)]}"
        t0 = time.perf_counter()
        principal = await auth.authenticate(header)
        admitted = await quotas.admit(principal, 300)
        t1 = time.perf_counter()
        await quotas.settle(admitted, 120)
        t2 = time.perf_counter()
        if i >= n // 10:  # the first tenth warms up
            admit_s.append(t1 - t0)
            settle_s.append(t2 - t1)
    return {
        "auth_admit_p50_ms": _pct(admit_s, 0.50),
        "auth_admit_p99_ms": _pct(admit_s, 0.99),
        "auth_admit_mean_ms": statistics.fmean(admit_s) * 1000,
        "settle_p50_ms": _pct(settle_s, 0.50),
        "settle_p99_ms": _pct(settle_s, 0.99),
    }


async def _floor(n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await asyncio.sleep(0)
        samples.append(time.perf_counter() - t0)
    return {"auth_admit_p50_ms": _pct(samples, 0.5), "auth_admit_p99_ms": _pct(samples, 0.99)}


def _prompt_counting(n: int, tmp: Path) -> dict[str, float]:
    (tmp / "tokenizer.model.v3").write_bytes(v3_tokenizer_path().read_bytes())
    counter = PromptCounter(tmp)
    text = "Refactor this function so that it handles empty lists and None. " * 12
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": text},
            ],
        }  # fmt: skip
    )
    samples, tokens = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        tokens = counter.measure(req).tokens
        samples.append(time.perf_counter() - t0)
    return {"prompt_tokens": tokens, "p50_ms": _pct(samples, 0.5), "p99_ms": _pct(samples, 0.99)}


async def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    n = parser.parse_args().requests
    results: dict[str, dict[str, float]] = {"floor (await sleep(0))": await _floor(n)}
    results["in process"] = await _measure(MemoryQuotaStore(), n)
    with redis_server() as server:
        store = RedisQuotaStore(server.url)
        try:
            results["redis (loopback)"] = await _measure(store, n // 4)
        finally:
            await store.close()
    with tempfile.TemporaryDirectory() as tmp:
        counting = _prompt_counting(2_000, Path(tmp))

    print(f"\nauthentication + admission per request ({n} requests, {TEAMS * KEYS_PER_TEAM} keys)")
    print(f"{'path':24} {'p50 ms':>8} {'p99 ms':>8} {'settle p50':>11} {'settle p99':>11}")
    for name, r in results.items():
        print(
            f"{name:24} {r['auth_admit_p50_ms']:8.3f} {r['auth_admit_p99_ms']:8.3f} "
            f"{r.get('settle_p50_ms', 0):11.3f} {r.get('settle_p99_ms', 0):11.3f}"
        )
    mem, red = results["in process"], results["redis (loopback)"]
    print(
        f"targets: in process p50 {mem['auth_admit_p50_ms']:.3f} <= 1 ms "
        f"{'OK' if mem['auth_admit_p50_ms'] <= 1 else 'MISSED'}, "
        f"p99 {mem['auth_admit_p99_ms']:.3f} <= 3 ms "
        f"{'OK' if mem['auth_admit_p99_ms'] <= 3 else 'MISSED'}; "
        f"redis p99 {red['auth_admit_p99_ms']:.3f} <= 3 ms "
        f"{'OK' if red['auth_admit_p99_ms'] <= 3 else 'MISSED'}"
    )
    print(
        f"prompt counting ({counting['prompt_tokens']:.0f}-token chat, mistral_common): "
        f"p50 {counting['p50_ms']:.3f} ms, p99 {counting['p99_ms']:.3f} ms"
    )
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "admission.json").write_text(
        json.dumps({"requests": n, "results": results, "prompt_counting": counting}, indent=2)
    )


if __name__ == "__main__":
    asyncio.run(main())
