"""Autoscaling on the real platform, run as the chart runs it:
`llmplat serve --config configs/autoscale.yaml` behind Ray Serve's proxy
(``LLMPLAT_GATEWAY__DIRECT_INGRESS=false``), two gateway replicas sharing quotas in a real
Redis whose URL (a secret) is given as a file.

Its two models (`configs/autoscale.yaml`): ``tiny-mixtral`` scales between 1 and 2 replicas
on its engines' queue and KV cache; ``tiny-mixtral-zero`` sits at zero replicas until a
request arrives and goes back to zero after 20 s idle. Every request goes through the
official ``openai`` client and must be answered in full: the proxy holds the port and
spreads a burst over both gateway replicas, which admit exactly the team's quota; a flood
takes the first model from one replica to two, and streams in flight when the load drops
are finished while it returns to one; a request to the model at zero is held while it
starts, not failed, and the model goes back to zero when idle; after the flood, Ctrl-C and
the same command again start at once on the same port; and Ctrl-C lets a stream in flight
finish before the platform stops. (Direct ingress, the default of `make serve`, is what the
shared platform of the other integration tests runs.)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from llmplat.settings import Settings
from support.platform import (
    files_containing,
    free_port,
    launch,
    platform_home,
    stop,
    time_wait_sockets,
)
from support.redis_server import redis_server

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "autoscale.yaml"
SCALED = "tiny-mixtral"
ZERO = "tiny-mixtral-zero"
FLOOD_STREAMS = 24  # three times the 8 batch slots of a replica: a queue of 16
TRICKLE_STREAMS = 4  # well under one replica's slots: low load
RPM = 12  # the limited team's requests per minute
DRAIN_TOKENS = 400  # a stream that runs ~10 s past Ctrl-C on 2 cores


pytestmark = [  # slow: make test-slow, after make test
    pytest.mark.integration,
    pytest.mark.timeout(1200, func_only=True),
    pytest.mark.slow,
]


@dataclass
class ScalingPlatform:
    url: str
    key: str
    home: Path
    log: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    port: int
    limited_key: str
    """A key of team ``limited`` (``RPM`` requests per minute)."""
    engine_metrics_url: str
    """Ray's metrics export (the engines' and Serve's own series)."""
    zero_last_request: float = 0.0
    """When the model at zero answered its request (wall clock)."""
    stopping: bool = False
    """Ctrl-C already sent (by the drain test)."""
    idle: list[socket.socket] = field(default_factory=list)
    """Keep-alive connections left open across Ctrl-C (the server closes them first, so
    their sockets wait in TIME_WAIT on the platform's port, as after a load test)."""

    def replicas(self, model: str) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "llmplat_model_replicas" and s.labels["model"] == model:
                    out[s.labels["state"]] = s.value
                if s.name == "llmplat_autoscaling_last_decision" and s.labels["model"] == model:
                    out["decision"] = f"{s.labels['direction']} {s.labels['reason']}"
                if (
                    s.name == "llmplat_autoscaling_last_decision_timestamp_seconds"
                    and s.labels["model"] == model
                ):
                    out["decided_at"] = s.value
        return out

    def wait_for(self, model: str, what: str, check, timeout_s: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            seen = self.replicas(model)
            if check(seen):
                return seen
            time.sleep(1)
        pytest.fail(f"{model}: not {what} within {timeout_s:.0f} s; last seen {seen}")


@pytest.fixture(scope="module")
def scaling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScalingPlatform]:
    password = secrets.token_urlsafe(18)
    with redis_server(password=password) as redis:
        home = platform_home(tmp_path_factory, "llmplat-autoscale")
        admin = KeyAdmin(FileKeyStore(home / "teams.yaml"))
        admin.create_team({"name": "limited", "limits": {"requests_per_minute": RPM}})
        limited = admin.create_key("limited").plaintext
        url_file = home / "redis-url"
        url_file.write_text(redis.url + "\n")
        url_file.chmod(0o600)
        key = "llmp_dev_" + secrets.token_urlsafe(24)
        port, metrics_port = free_port(), free_port()
        env = os.environ | {
            "LLMPLAT_HOME": str(home),
            "LLMPLAT_PORT": str(port),
            "LLMPLAT_DEV_API_KEY": key,
            "LLMPLAT_ENGINE_METRICS_PORT": str(metrics_port),
            "LLMPLAT_GATEWAY__DIRECT_INGRESS": "false",
            "LLMPLAT_GATEWAY__REPLICAS": "2",
            "LLMPLAT_QUOTAS__BACKEND": "redis",
            "LLMPLAT_QUOTAS__REDIS_URL_FILE": str(url_file),
            "PYTHONUNBUFFERED": "1",
        }
        log = home / "serve.log"
        proc = launch(["serve", "--config", str(CONFIG)], env, log)
        platform = ScalingPlatform(
            url=f"http://127.0.0.1:{port}",
            key=key,
            home=home,
            log=log,
            proc=proc,
            env=env,
            port=port,
            limited_key=limited,
            engine_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        )
        try:
            yield platform
        finally:
            stop(platform.proc, home, platform.log, signal_first=not platform.stopping)
            for root in (home, Settings(home=home).ray_temp_dir):
                leaked = [f for f in files_containing(root, password) if f != str(url_file)]
                assert not leaked, f"the Redis password leaked into {leaked}"


@dataclass
class Outcome:
    started: float
    ended: float = 0.0
    ok: bool = False
    error: str | None = None


@dataclass
class Load:
    """Streams sent back to back by ``workers`` clients until stopped; every outcome kept."""

    client: openai.AsyncOpenAI
    workers: int
    max_tokens: int
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _one(self) -> None:
        out = Outcome(time.monotonic())
        self.outcomes.append(out)
        try:
            stream = await self.client.completions.create(
                model=SCALED,
                prompt="scale " * 20,
                max_tokens=self.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},  # every stream runs to max_tokens
            )
            finished, usage = None, None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = chunk.choices[0].finish_reason
                usage = chunk.usage or usage
            out.ok = (
                finished == "length"
                and usage is not None
                and usage.completion_tokens == self.max_tokens
            )
            out.error = None if out.ok else f"cut short: finish={finished} usage={usage}"
        except Exception as exc:  # every failure is counted, never raised past the load
            out.error = f"{type(exc).__name__}: {exc}"
        finally:
            out.ended = time.monotonic()

    async def _work(self) -> None:
        while not self._stop.is_set():
            await self._one()

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(self.workers)]

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failures(self) -> list[str]:
        return [o.error or "unanswered" for o in self.outcomes if not o.ok]


async def _poll(platform: ScalingPlatform, model: str) -> dict[str, float]:
    return await asyncio.to_thread(platform.replicas, model)


def test_the_serve_proxy_holds_the_port(scaling) -> None:
    """With direct ingress off, Ray Serve's proxy listens on LLMPLAT_PORT (one port for all
    replicas, as the chart's Service targets) and nothing on the next port."""
    owners = {
        c.laddr.port: c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in (scaling.port, scaling.port + 1)
    }
    assert list(owners) == [scaling.port], owners
    title = " ".join(psutil.Process(owners[scaling.port]).cmdline())
    assert title.startswith("ray::ProxyActor"), title
    with openai.OpenAI(api_key=scaling.key, base_url=f"{scaling.url}/v1", max_retries=0) as c:
        answer = c.chat.completions.create(
            model=SCALED, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert answer.usage.completion_tokens >= 1


def test_two_replicas_behind_the_proxy_share_one_exact_quota(scaling) -> None:
    """A burst through the proxy is spread over both gateway replicas (Ray Serve's own
    per-replica request counters show it) and admits exactly the team's requests per minute."""
    # No wait for a fresh clock minute: the limit holds over any 60 s span.

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {scaling.limited_key}"}
        body = {"model": SCALED, "prompt": "x", "max_tokens": 1}
        async with httpx.AsyncClient(base_url=scaling.url, timeout=120) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/completions", json=body, headers=headers) for _ in range(3 * RPM))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses.count(200) == RPM and statuses.count(429) == 2 * RPM, statuses
    deadline = time.monotonic() + 60  # Ray exports its metrics every few seconds
    while sum((served := _gateway_requests_by_replica(scaling)).values()) < 3 * RPM:
        assert time.monotonic() < deadline, f"the burst never showed in Ray's metrics: {served}"
        time.sleep(2)
    assert len(served) == 2, f"one gateway replica served everything: {served}"


def _gateway_requests_by_replica(scaling: ScalingPlatform) -> dict[str, float]:
    text = httpx.get(scaling.engine_metrics_url, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name == "ray_serve_deployment_request_counter_total"
                and s.labels.get("deployment") == "Gateway"
                and s.labels.get("route", "").startswith("/v1/completions")
                and s.value > 0
            ):
                out[s.labels["replica"]] = out.get(s.labels["replica"], 0) + s.value
    return out


def test_a_model_at_zero_is_scaled_to_zero_and_answers_its_next_request(scaling) -> None:
    seen = scaling.wait_for(ZERO, "at zero", lambda r: r.get("running") == 0, 60)
    assert seen["desired"] == 0 and seen["min"] == 0
    ready = httpx.get(f"{scaling.url}/readyz", timeout=10).json()
    assert ready["status"] == "ready" and ready["models"][ZERO] == "scaled to zero"
    status = subprocess.run(
        [sys.executable, "-m", "llmplat", "status", "--url", scaling.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    zero_line = next(line for line in status.stdout.splitlines() if line.startswith(ZERO))
    assert "scaled to zero" in zero_line and "0/0 [0-1]" in zero_line

    with openai.OpenAI(api_key=scaling.key, base_url=f"{scaling.url}/v1", max_retries=0) as c:
        t0 = time.monotonic()
        answer = c.chat.completions.create(
            model=ZERO, messages=[{"role": "user", "content": "wake up"}], max_tokens=4
        )
        cold_s = time.monotonic() - t0
    assert answer.choices[0].finish_reason and answer.usage.completion_tokens > 0
    print(f"\nscale from zero: request answered after {cold_s:.1f} s", flush=True)
    scaling.zero_last_request = time.time()
    seen = scaling.replicas(ZERO)
    assert seen["running"] == 1 and seen["decision"] == "up request_while_scaled_to_zero"
    # Its way back to zero (20 s idle) is checked after the flood, which runs meanwhile.


async def test_a_flood_adds_a_replica_and_the_drop_removes_it_losing_nothing(scaling) -> None:
    seen = await _poll(scaling, SCALED)
    assert (seen["running"], seen["desired"], seen["min"], seen["max"]) == (1, 1, 1, 2)
    async with openai.AsyncOpenAI(
        api_key=scaling.key, base_url=f"{scaling.url}/v1", max_retries=0, timeout=600
    ) as client:
        flood = Load(client, FLOOD_STREAMS, max_tokens=128)
        flood.start()
        t0 = time.monotonic()
        decided_at = None
        while time.monotonic() - t0 < 420:
            await asyncio.sleep(1)
            seen = await _poll(scaling, SCALED)
            if seen.get("desired") == 2 and decided_at is None:
                decided_at = seen["decided_at"]
            if seen.get("running") == 2:
                break
        else:
            await flood.finish()
            pytest.fail(f"no second replica under a flood of {FLOOD_STREAMS} streams: {seen}")
        serving_at = time.time()
        assert seen["decision"] == "up queue"
        await asyncio.sleep(5)  # both replicas take requests
        await flood.finish()

        trickle = Load(client, TRICKLE_STREAMS, max_tokens=256)
        trickle.start()
        t1 = time.monotonic()
        while time.monotonic() - t1 < 240:
            await asyncio.sleep(1)
            seen = await _poll(scaling, SCALED)
            if seen.get("running") == 1:
                break
        else:
            await trickle.finish()
            pytest.fail(f"still two replicas {time.monotonic() - t1:.0f} s after the load dropped")
        down_at = time.monotonic()
        assert seen["decision"] == "down low_load"
        await asyncio.sleep(5)
        await trickle.finish()

    failures = flood.failures() + trickle.failures()
    assert not failures, f"{len(failures)} requests lost across the scale events: {failures[:5]}"
    across = [o for o in trickle.outcomes if o.started < down_at < o.ended]
    assert across, "no stream was in flight when the second replica was removed"
    assert decided_at is not None
    print(
        f"\nflood: {len(flood.outcomes)} streams, second replica serving "
        f"{serving_at - decided_at:.0f} s after the decision; low load: "
        f"{len(trickle.outcomes)} streams, back to one replica {down_at - t1:.0f} s after the "
        f"drop with {len(across)} streams in flight; requests lost: {len(failures)}",
        flush=True,
    )


def test_the_idle_model_went_back_to_zero(scaling) -> None:
    """The model woken above went back to zero by itself while the flood ran (20 s idle)."""
    assert scaling.zero_last_request, "the model at zero was never woken"
    seen = scaling.wait_for(ZERO, "back at zero", lambda r: r.get("running") == 0, 120)
    assert seen["decision"] == "down idle" and seen["desired"] == 0
    after = seen["decided_at"] - scaling.zero_last_request
    print(f"\nidle model back at zero: decided {after:.0f} s after its last request", flush=True)
    assert after >= 19, "scaled down before its 20 s idle time (1 s for clock reads)"


def test_restarts_at_once_on_the_same_ports(scaling) -> None:
    """After the flood: Ctrl-C while clients hold keep-alive connections (the server closes
    them, so its side waits in TIME_WAIT on the port), then the same command on the same
    ports at once. The restarted platform serves the rest of the module."""
    scaling.idle = _keep_alive_connections(scaling.url, 8)
    stop(scaling.proc, scaling.home, scaling.log)
    time.sleep(1)  # each client closes on the server's FIN
    # How many depends on how each connection ended (FIN or, from a killed process, RST);
    # tests/unit/serving/test_ingress_socket.py shows the TIME_WAIT case on real sockets.
    port = scaling.port
    print(f"\n{time_wait_sockets(port)} sockets in TIME_WAIT on port {port}", flush=True)
    scaling.log = scaling.home / "serve-again.log"
    scaling.proc = launch(["serve", "--config", str(CONFIG)], scaling.env, scaling.log)
    deadline = time.monotonic() + 180
    while (ready := httpx.get(f"{scaling.url}/readyz", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, f"not ready again: {ready.text}"
        time.sleep(2)


async def test_ctrl_c_lets_a_stream_in_flight_finish(scaling) -> None:
    """Last in the module: it stops the platform (the fixture then checks the exit)."""
    async with openai.AsyncOpenAI(
        api_key=scaling.key, base_url=f"{scaling.url}/v1", max_retries=0, timeout=300
    ) as client:
        stream = await client.completions.create(
            model=SCALED,
            prompt="drain",
            max_tokens=DRAIN_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # random weights may sample EOS early
        )
        chunks, finished, usage = 0, None, None
        async for chunk in stream:
            chunks += 1
            if chunks == 3:
                os.kill(scaling.proc.pid, signal.SIGINT)
                scaling.stopping = True
                stopped_at = time.monotonic()
            if chunk.choices and chunk.choices[0].finish_reason:
                finished = chunk.choices[0].finish_reason
            usage = chunk.usage or usage
    assert finished == "length" and usage is not None and usage.completion_tokens == DRAIN_TOKENS, (
        f"stream cut short: finish={finished} usage={usage}"
    )
    print(f"\nstream finished {time.monotonic() - stopped_at:.1f} s after Ctrl-C", flush=True)
    log = scaling.log.read_text(errors="replace")
    assert "shutting down (requests in flight get up to" in log


def _keep_alive_connections(url: str, n: int) -> list[socket.socket]:
    """``n`` HTTP/1.1 connections that each got an answer and stay open until the server
    closes them (as it does when it stops); each is closed on the server's FIN, so the
    server's side then waits in TIME_WAIT on the platform's port for a minute."""
    host, port = url.removeprefix("http://").rsplit(":", 1)

    def close_when_the_server_does(conn: socket.socket) -> None:
        conn.settimeout(None)
        try:
            conn.recv(1)
        finally:
            conn.close()

    out = []
    for _ in range(n):
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "no answer from /healthz"
        threading.Thread(target=close_when_the_server_does, args=(conn,), daemon=True).start()
        out.append(conn)
    return out
