"""Locust users of an OpenAI-compatible endpoint: chat, IDE code completion, CI batch jobs.

Every request is recorded twice: as Locust metrics (request type ``chat``/``fim``/``batch``
with the end-to-end latency, plus ``TTFT``, ``ITL`` and ``TPS`` entries, each named after
the team) and as one row of the run's samples file, which the runner turns into the report.
A 429 is a failure named ``HTTP 429 <code>`` in Locust's statistics and a ``rejected`` row.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import corpus
import gevent
from locust import HttpUser, task

SAMPLE_FIELDS = (
    "time",
    "elapsed_s",
    "phase",
    "team",
    "user",
    "outcome",
    "status",
    "error",
    "e2e_ms",
    "ttft_ms",
    "itl_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
)
"""Columns of samples.csv; ``outcome`` is ``ok``, ``rejected`` (429) or ``error``."""

REQUEST_TIMEOUT_S = 300.0


class StreamError(Exception):
    """The stream ended with an error event, or without any content."""


class Rejected(Exception):
    """Locust failure for a 429: the message carries the status and the error code."""


class HttpError(Exception):
    """Locust failure for any other non-2xx answer or a broken connection."""


@dataclass
class Result:
    status: int
    e2e_ms: float
    ttft_ms: float | None = None
    itl_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""

    @property
    def outcome(self) -> str:
        if 200 <= self.status < 300 and not self.error:
            return "ok"
        return "rejected" if self.status == 429 else "error"

    @property
    def tokens_per_s(self) -> float | None:
        if self.outcome != "ok" or not self.completion_tokens or self.e2e_ms <= 0:
            return None
        return self.completion_tokens / (self.e2e_ms / 1000)


class SampleSink:
    """Appends one CSV row per request (the Locust process is one thread of greenlets)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w", newline="")  # noqa: SIM115 - closed at test stop
        self._writer = csv.writer(self._file)
        self._writer.writerow(SAMPLE_FIELDS)
        self._rows = 0

    def write(self, row: tuple) -> None:
        self._writer.writerow(row)
        self._rows += 1
        if self._rows % 50 == 0:
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def _error_code(body: bytes) -> str:
    try:
        err = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return ""
    return str(err.get("code") or err.get("type") or "")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


class LLMUser(HttpUser):
    """One person or job of a team, sending requests between pauses ("think time").

    Subclasses set the endpoint and the request shape; the locustfile makes one class per
    team of the scenario, which sets ``team``, ``plan`` and ``fixed_count``.
    """

    abstract = True
    kind: ClassVar[str]
    label: ClassVar[str]
    endpoint: ClassVar[str]
    stream: ClassVar[bool]
    team: ClassVar[str]
    plan: ClassVar[Any]  # loadtests.locustfile.Plan
    _counter: ClassVar[itertools.count]

    def on_start(self) -> None:
        self.index = next(type(self)._counter)
        self.rng = random.Random(f"{self.plan.seed}:{self.team}:{self.index}")
        self.idle = False
        key = self.plan.keys[self.team]
        self.headers = {"Authorization": f"Bearer {key}"}

    def wait_time(self) -> float:
        if self.idle:
            return 0.0
        lo, hi = self.plan.think(self.team)
        return self.rng.uniform(lo, hi)

    def build(self) -> dict:
        raise NotImplementedError

    @task
    def generate(self) -> None:
        phase = self.plan.phase_now()
        self.idle = phase is None or self.index >= phase.users.get(self.team, 0)
        if self.idle:
            gevent.sleep(min(1.0, max(0.05, self.plan.seconds_to_next_phase())))
            return
        body = {"model": self.plan.model, **self.build()}
        if self.plan.ignore_eos:
            body["ignore_eos"] = True
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        started = time.time(), self.plan.elapsed()
        result = self.send(body)
        self.record(phase.name, started, result)

    def send(self, body: dict) -> Result:
        t0 = time.perf_counter()
        with self.client.post(
            self.endpoint,
            json=body,
            headers=self.headers,
            stream=self.stream,
            catch_response=True,
            name=self.team,
            timeout=REQUEST_TIMEOUT_S,
        ) as resp:
            status = resp.status_code or 0
            if 200 <= status < 300:
                try:
                    result = self.read_stream(resp, t0) if self.stream else self.read_full(resp, t0)
                except (StreamError, OSError, ValueError) as exc:
                    result = Result(status, (time.perf_counter() - t0) * 1000, error=str(exc)[:200])
            else:
                body_bytes = resp.content if status else b""
                code = _error_code(body_bytes) if status else type(resp.error).__name__
                result = Result(status, (time.perf_counter() - t0) * 1000, error=code or "http")
            meta = resp.request_meta
            meta["request_type"] = self.label
            meta["response_time"] = result.e2e_ms
            meta["response_length"] = result.completion_tokens
            if result.outcome == "ok":
                resp.success()
            elif result.outcome == "rejected":
                resp.failure(Rejected(f"HTTP 429 {result.error}"))
            else:
                resp.failure(HttpError(f"HTTP {status} {result.error}"))
        return result

    def read_full(self, resp: Any, t0: float) -> Result:
        usage = resp.json().get("usage") or {}
        return Result(
            resp.status_code,
            (time.perf_counter() - t0) * 1000,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def read_stream(self, resp: Any, t0: float) -> Result:
        first = last = None
        usage: dict = {}
        chunks = 0
        for line in resp.iter_lines(chunk_size=None):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise StreamError(f"stream error: {_error_code(data) or 'unknown'}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                if piece:
                    last = time.perf_counter()
                    first = first or last
                    chunks += 1
        end = time.perf_counter()
        if first is None:
            raise StreamError("stream ended without content")
        completion = int(usage.get("completion_tokens") or chunks)
        itl = (last - first) * 1000 / (completion - 1) if completion > 1 else None
        return Result(
            resp.status_code,
            (end - t0) * 1000,
            ttft_ms=(first - t0) * 1000,
            itl_ms=itl,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=completion,
        )

    def record(self, phase: str, started: tuple[float, float], r: Result) -> None:
        fire = self.environment.events.request.fire
        if r.outcome == "ok":
            for kind, value in (("TTFT", r.ttft_ms), ("ITL", r.itl_ms), ("TPS", r.tokens_per_s)):
                if value is not None:
                    fire(
                        request_type=kind,
                        name=self.team,
                        response_time=value,
                        response_length=0,
                        exception=None,
                        context={},
                    )
        self.plan.sink.write(
            (
                f"{started[0]:.3f}",
                f"{started[1]:.3f}",
                phase,
                self.team,
                self.kind,
                r.outcome,
                r.status,
                r.error,
                _num(r.e2e_ms),
                _num(r.ttft_ms),
                _num(r.itl_ms),
                r.prompt_tokens,
                r.completion_tokens,
                _num(r.tokens_per_s),
            )
        )


class ChatUser(LLMUser):
    """A person in a chat UI: streaming chat completions, reading between turns."""

    abstract = True
    kind = "chat"
    label = "chat"
    endpoint = "/v1/chat/completions"
    stream = True

    def build(self) -> dict:
        return corpus.chat_request(self.rng, self.plan.max_tokens(self.team))


class IdeUser(LLMUser):
    """An editor asking for code completion: fill-in-the-middle (``suffix``), streaming."""

    abstract = True
    kind = "ide"
    label = "fim"
    endpoint = "/v1/completions"
    stream = True

    def build(self) -> dict:
        return corpus.ide_request(self.rng, self.plan.max_tokens(self.team))


class CiUser(LLMUser):
    """A CI job: non-streaming chat completions with long outputs, batch priority."""

    abstract = True
    kind = "ci"
    label = "batch"
    endpoint = "/v1/chat/completions"
    stream = False

    def build(self) -> dict:
        return corpus.ci_request(self.rng, self.plan.max_tokens(self.team))


USER_KINDS: dict[str, type[LLMUser]] = {"chat": ChatUser, "ide": IdeUser, "ci": CiUser}
