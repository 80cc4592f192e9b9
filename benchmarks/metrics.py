"""Cost of recording one request's metrics in the gateway (target: <= 50 µs per request).

Times the calls the gateway makes per request — admission wait, in-flight up and down, and
the final record (counter, duration, TTFT, inter-token, prompt/completion tokens) — over
50 teams × 2 models, against an empty call of the same shape measured in the same run.

    python benchmarks/metrics.py [--requests N]
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from llmplat.gateway.state import RequestRecord
from llmplat.observability.metrics import GatewayMetrics
from llmplat.observability.record import Usage

TEAMS = [f"team-{i}" for i in range(50)]
MODELS = ("mixtral-8x22b", "tiny-mixtral")


def _records(n: int) -> list[RequestRecord]:
    out = []
    for i in range(n):
        rec = RequestRecord(endpoint="chat", started=0.0, team=TEAMS[i % 50])
        rec.model, rec.stream, rec.status, rec.ended = MODELS[i % 2], True, 200, 1.7
        rec.usage, rec.first_token_s, rec.inter_token_s = Usage(400, 120), 0.21, 0.012
        out.append(rec)
    return out


def _per_request(metrics: GatewayMetrics | None, records: list[RequestRecord]) -> float:
    def noop(*_args: object) -> None:
        return None

    admitted = metrics.admitted if metrics else noop
    started = metrics.started if metrics else noop
    ended = metrics.ended if metrics else noop
    record = metrics.record if metrics else noop
    t0 = time.perf_counter()
    for rec in records:
        admitted(rec.team, 0.0004)
        started(rec.team, rec.model)
        ended(rec.team, rec.model)
        record(rec)
    return (time.perf_counter() - t0) / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    records = _records(parser.parse_args().requests)
    metrics = GatewayMetrics(CollectorRegistry(), MODELS)
    _per_request(metrics, records[:5000])  # create every labelled child first
    best = min(_per_request(metrics, records) for _ in range(3))
    floor = min(_per_request(None, records) for _ in range(3))
    print(
        f"metrics per request: {best:.1f} µs (empty calls: {floor:.1f} µs; net "
        f"{best - floor:.1f} µs) over {len(records)} requests, 50 teams x 2 models; "
        f"target <= 50 µs: {'OK' if best <= 50 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
