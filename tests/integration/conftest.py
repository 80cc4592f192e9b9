"""One real platform per test session: `llmplat serve` (Ray Serve + vLLM-CPU + tiny model).

The platform runs with its own LLMPLAT_HOME (so its Ray processes are identifiable and the
teardown can prove none are left behind) whose models/ links to the run's model cache
(``$LLMPLAT_HOME/models`` of the test run, a temporary directory: tests/conftest.py), so
the tiny model is built once per test run, never into the user's home.

Timeouts (pytest-timeout): each module marks its tests ``timeout(N, func_only=True)``: N
bounds the test's own body; the platform fixtures (session or module scope) are left out,
since whichever test happens to run first would otherwise carry a platform start, and they
bound themselves (``support.platform.launch``: START_TIMEOUT_S with the serve log on
failure; ``stop``: STOP_TIMEOUT_S).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio

from llmplat.settings import Settings
from support import MODEL
from support.platform import (
    BODY_TIMEOUT_S,
    files_containing,
    free_port,
    launch,
    platform_home,
    stop,
)

TEAMS: dict[str, list[str]] = {
    "ide": ["--priority", "interactive", "--rpm", "10000"],
    "ci": ["--priority", "batch", "--max-tokens-cap", "512"],
    "small": ["--rpm", "3", "--tpm", "100000"],
    "pair": ["--priority", "batch", "--concurrency", "2"],
    "solo": ["--concurrency", "1"],
    "tenant-a": ["--concurrency", "4"],
    "tenant-b": [],
    "bounded": ["--input-bound", "schema_properties=8", "--input-bound", "stop_count=2"],
}
"""Teams the session's platform has, created through the CLI before it starts."""


@dataclass(frozen=True)
class LivePlatform:
    url: str
    key: str
    home: Path
    log: Path
    admin_token: str
    team_keys: dict[str, str]
    engine_metrics_url: str
    pid: int  # `llmplat serve`, leader of the platform's session
    minted: list[str] = field(default_factory=list)
    """Keys tests created on the platform: the end-of-session grep looks for them too."""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def remember(self, key: str) -> str:
        self.minted.append(key)
        return key


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePlatform]:
    home = platform_home(tmp_path_factory, "llmplat-home")
    key = "llmp_dev_" + secrets.token_urlsafe(24)
    admin_token = "llmp_admin_" + secrets.token_urlsafe(24)
    port = free_port()
    metrics_port = free_port()
    log = home / "serve.log"
    env = os.environ | {
        "LLMPLAT_HOME": str(home),
        "LLMPLAT_PORT": str(port),
        "LLMPLAT_DEV_API_KEY": key,
        "LLMPLAT_ADMIN_TOKEN": admin_token,
        "LLMPLAT_ENGINE_METRICS_PORT": str(metrics_port),
        "LLMPLAT_GATEWAY__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "PYTHONUNBUFFERED": "1",
    }
    team_keys = {team: _cli_team_key(team, flags, env) for team, flags in TEAMS.items()}
    proc = launch(["serve"], env, log)
    url = f"http://127.0.0.1:{port}"
    warm_s = _warm_up(url, key)
    print(f"engine warmed up in {warm_s:.0f} s", flush=True)
    platform = LivePlatform(
        url=url,
        key=key,
        home=home,
        log=log,
        admin_token=admin_token,
        team_keys=team_keys,
        engine_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        pid=proc.pid,
    )
    try:
        yield platform
    finally:
        stop(proc, home, log)
        leaks = files_containing(Settings(home=home).ray_temp_dir, key)
        assert not leaks, f"the API key leaked into logs: {leaks}"
        printed = log.read_text(errors="replace").count(key)
        assert printed == 1, f"serve output shows the key {printed} times, expected once"
        # Every secret the session used, in every file the platform wrote (Ray logs, audit
        # log, serve output, key store): never the team keys' secrets nor the admin token.
        keys = [*team_keys.values(), *platform.minted]
        secrets_used = [admin_token] + [k.split("_", 2)[2] for k in keys]
        for secret in secrets_used:
            for root in (home, Settings(home=home).ray_temp_dir):
                leaked = files_containing(root, secret)
                assert not leaked, f"a secret leaked into {leaked}"


def _warm_up(url: str, key: str) -> float:
    """Send the prompt sizes and kinds the tests use, alone and together, before any test.

    A fresh vLLM-CPU engine is slow on the first batches of each new shape (tens of seconds
    to a first token); the tests measure a warm platform, as users of a running one see it.
    """
    t0 = time.monotonic()
    words = "expert router token batch stream cache layer shard gate prefix".split()

    def text(n: int) -> str:
        return " ".join(words[i % len(words)] for i in range(n))

    bodies = (
        [("completions", {"prompt": text(n), "max_tokens": 4}) for n in (4, 40, 150, 400, 900)]
        + [
            (
                "chat/completions",
                {"messages": [{"role": "user", "content": text(n)}], "max_tokens": 4},
            )
            for n in (20, 300)
        ]
        + [
            (
                "completions",
                {"prompt": "def f(x):\n    ", "suffix": "\n    return y", "max_tokens": 4},
            )
        ]
    )
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"{url}/v1", headers=headers, timeout=300) as http:

        def send(item: tuple[str, dict]) -> None:
            path, body = item
            http.post(f"/{path}", json={"model": MODEL, **body}).raise_for_status()

        for item in bodies:  # each shape alone, then all of them at once
            send(item)
        with ThreadPoolExecutor(len(bodies)) as pool:
            list(pool.map(send, bodies * 2))
    return time.monotonic() - t0


def _cli_team_key(team: str, flags: list[str], env: dict[str, str]) -> str:
    """Create a team and a key with the real CLI; the key is stdout, alone."""
    cli = [sys.executable, "-m", "llmplat"]
    subprocess.run(
        [*cli, "teams", "create", team, *flags], env=env, check=True, capture_output=True
    )
    out = subprocess.run(
        [*cli, "keys", "create", "--team", team, "--name", "integration"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.startswith("llmp_") and out.count("\n") == 1, out
    return out.strip()


@pytest_asyncio.fixture(loop_scope="function")
async def client(live: LivePlatform) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key=live.key, base_url=live.base_url, max_retries=0, timeout=300
    ) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="function")
async def http(live: LivePlatform):
    async with httpx.AsyncClient(base_url=live.url, timeout=300) as c:
        yield c
