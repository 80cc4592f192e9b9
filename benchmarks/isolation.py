"""What one team's most expensive allowed requests cost another team, on a running platform.

A "victim" key sends plain chat requests and ``json_object`` requests one at a time, first
with the platform idle, then while an "attacker" key keeps ``--attackers`` requests running
that each carry the costliest JSON schema the input bounds allow (every property bound used,
patterned properties, a fresh salt per request so no compiled grammar is reused) with
``max_tokens: 1``, plus the longest allowed stop list; a refused attacker waits its
``Retry-After``. Prints the victim's median and
worst latency idle and under attack, and their ratio (same run, same machine).

    python benchmarks/isolation.py --url http://127.0.0.1:8000 --victim-key K1 --attacker-key K2
        [--model tiny-mixtral] [--requests 8] [--attackers 2]

Results also go to bench-results/isolation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the attack itself, shared with the e2e test

from llmplat.settings import InputBounds  # noqa: E402
from support.isolation import attack_body  # noqa: E402


def victim_bodies(model: str) -> dict[str, dict[str, Any]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    return {"plain": chat, "json_object": {**chat, "response_format": {"type": "json_object"}}}


async def timed(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> tuple[float, int]:
    start = time.perf_counter()
    r = await http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    if r.status_code == 429:  # a well-behaved client waits as told; a flood is RPM's job
        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
    return time.perf_counter() - start, r.status_code


async def victim_round(
    http: httpx.AsyncClient, key: str, model: str, n: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for kind, body in victim_bodies(model).items():
        times = []
        for _ in range(n):
            t, status = await timed(http, key, body)
            if status != 200:
                raise SystemExit(f"the victim's {kind} request got HTTP {status}")
            times.append(t)
        out[kind] = times
    return out


async def attacker(
    http: httpx.AsyncClient, key: str, model: str, bounds: InputBounds, stop: asyncio.Event,
    statuses: list[int], seconds: list[float],
) -> None:  # fmt: skip
    while not stop.is_set():
        t, status = await timed(http, key, attack_body(model, bounds))
        statuses.append(status)
        seconds.append(t)


def summary(times: list[float]) -> dict[str, float]:
    return {"p50_s": statistics.median(times), "max_s": max(times)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    bounds = InputBounds()
    async with httpx.AsyncClient(base_url=args.url, timeout=900) as http:
        await victim_round(http, args.victim_key, args.model, 1)  # warm-up
        idle = await victim_round(http, args.victim_key, args.model, args.requests)
        stop, statuses, attack_s = asyncio.Event(), [], []
        tasks = [
            asyncio.create_task(
                attacker(http, args.attacker_key, args.model, bounds, stop, statuses, attack_s)
            )
            for _ in range(args.attackers)
        ]
        await asyncio.sleep(1.0)  # the attack is under way
        attacked = await victim_round(http, args.victim_key, args.model, args.requests)
        stop.set()
        await asyncio.gather(*tasks)
    result: dict[str, Any] = {"attackers": args.attackers, "attack_statuses": {}}
    for s in statuses:
        result["attack_statuses"][str(s)] = result["attack_statuses"].get(str(s), 0) + 1
    result["attack_request_s"] = summary(attack_s) if attack_s else None
    for kind in idle:
        i, a = summary(idle[kind]), summary(attacked[kind])
        result[kind] = {"idle": i, "attacked": a, "p50_ratio": a["p50_s"] / i["p50_s"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--victim-key", required=True)
    parser.add_argument("--attacker-key", required=True)
    parser.add_argument("--model", default="tiny-mixtral")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--attackers", type=int, default=2)
    result = asyncio.run(main_async(parser.parse_args()))
    print(f"attacker: {result['attackers']} at once, answers {result['attack_statuses']}, "
          f"each {result['attack_request_s']}")  # fmt: skip
    for kind in ("plain", "json_object"):
        r = result[kind]
        idle, hit = r["idle"], r["attacked"]
        print(
            f"victim {kind:<11} idle p50 {idle['p50_s']:.2f} s (max {idle['max_s']:.2f}), "
            f"attacked p50 {hit['p50_s']:.2f} s (max {hit['max_s']:.2f}), "
            f"ratio {r['p50_ratio']:.1f}x"
        )
    out = ROOT / "bench-results" / "isolation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
