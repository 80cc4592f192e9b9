"""The sharded profiles against the unsharded one, same platform, one run.

    .venv/bin/python benchmarks/sharded.py [--max-tokens 128] [--url URL --key KEY]

Starts `llmplat serve --nodes 2 --config sharded` (a head and a worker raylet on this
machine, a core each) unless --url names a running one, and prints for each of
tiny-mixtral-unsharded, tiny-mixtral-pp2 (a stage on each node) and tiny-mixtral-tp2 (two
shards on one node): tokens/s at 1 and 8 streams, the mean time between tokens of one
stream, and the ratios to the unsharded engine. With one stream, pipeline stages run one
after the other, so PP 2's time per token minus the unsharded engine's is what handing the
activations from one node to the other costs per token. Numbers, not a pass/fail test;
writes bench-results/sharded.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
MODELS = ("tiny-mixtral-unsharded", "tiny-mixtral-pp2", "tiny-mixtral-tp2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_platform() -> tuple[subprocess.Popen[bytes], str, str, float]:
    home = Path(tempfile.mkdtemp(prefix="llmplat-bench-sharded-"))
    shared = Path.home() / ".local" / "share" / "llmplat" / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared)
    key = "llmp_dev_" + secrets.token_urlsafe(24)
    port = _free_port()
    env = os.environ | {
        "LLMPLAT_HOME": str(home),
        "LLMPLAT_PORT": str(port),
        "LLMPLAT_ENGINE_METRICS_PORT": str(_free_port()),
        "LLMPLAT_DEV_API_KEY": key,
    }
    log = home / "serve.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmplat", "serve", "--nodes", "2", "--config", "sharded"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )
    while "llmplat is serving" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            sys.exit(f"llmplat serve exited:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    return proc, f"http://127.0.0.1:{port}", key, time.monotonic() - started


async def _stream(client: openai.AsyncOpenAI, model: str, max_tokens: int) -> list[float]:
    stamps = []
    stream = await client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=max_tokens, stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.monotonic())
    return stamps


async def measure(url: str, key: str, model: str, streams: int, max_tokens: int) -> dict:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        await _stream(client, model, 8)  # warm
        t0 = time.monotonic()
        stamps = await asyncio.gather(
            *(_stream(client, model, max_tokens) for _ in range(streams))
        )
        elapsed = time.monotonic() - t0
    tokens = streams * max_tokens
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:], strict=False)]
    return {
        "tokens_per_s": tokens / elapsed,
        "ms_between_chunks": 1000 * sum(gaps) / max(len(gaps), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--url")
    parser.add_argument("--key")
    args = parser.parse_args()
    proc = None
    start_s = None
    if args.url:
        url, key = args.url, args.key
    else:
        proc, url, key, start_s = start_platform()
        print(f"platform with the three profiles ready in {start_s:.0f} s")
    try:
        results: dict[str, dict] = {}
        for model in MODELS:
            for streams in (1, 8):
                r = asyncio.run(measure(url, key, model, streams, args.max_tokens))
                results[f"{model}@{streams}"] = r
                print(f"{model:24} {streams} stream(s): {r['tokens_per_s']:7.1f} tok/s, "
                      f"{r['ms_between_chunks']:6.1f} ms between chunks", flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(180)
    base = MODELS[0]
    for model in MODELS[1:]:
        for streams in (1, 8):
            ratio = (results[f"{model}@{streams}"]["tokens_per_s"]
                     / results[f"{base}@{streams}"]["tokens_per_s"])
            print(f"{model} / unsharded at {streams} stream(s): {ratio:.2f}x")
    # One stream: stages in sequence, so the extra time per token is the hop between nodes.
    # Chunks are tokens here only if the stream sends one token per chunk; tokens/s says.
    hop_ms = 1000 / results[f"{MODELS[1]}@1"]["tokens_per_s"] - 1000 / results[f"{base}@1"][
        "tokens_per_s"]
    print(f"cross-node hop (PP 2, one stream): {hop_ms:+.1f} ms per token")
    out = REPO / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "sharded.json").write_text(
        json.dumps({"start_s": start_s, "results": results, "hop_ms_per_token": hop_ms}, indent=2)
    )


if __name__ == "__main__":
    main()
