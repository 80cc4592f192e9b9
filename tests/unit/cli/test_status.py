"""`llmplat status`: autoscaled models' running/desired replicas and last decision, the
metrics port, and one line (never a traceback) for an endpoint it cannot read."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llmplat.autoscaling.report import DecisionEvent, ScaleReport
from llmplat.cli import main
from llmplat.cli.status import decisions_by_model, metrics_url, render, replicas_by_model
from llmplat.observability.metrics import GatewayMetrics


def test_render_shows_replicas_and_the_last_decision() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), ("big", "zero"))
    up = DecisionEvent(at=time.time() - 30, from_replicas=1, to_replicas=2, reason="queue")
    metrics.scale_report(
        ScaleReport("big", 1, 2, 1, 4, 2, "queue", 3.0, 9, 0.4, 0.2, up, at=time.time())
    )
    metrics.scale_report(
        ScaleReport("zero", 0, 0, 0, 1, 0, "idle", 0.0, 0, 0.0, 0.0, None, at=time.time())
    )
    text = generate_latest(metrics.registry).decode()
    data = {
        "ready": {"status": "ready", "models": {"big": "ready", "zero": "scaled to zero"}},
        "replicas": replicas_by_model(text),
        "decisions": decisions_by_model(text),
        "in_flight": {},
        "tokens_per_s": {},
        "deployments": None,
        "usage": {},
        "admin": None,
    }
    lines = render(data).splitlines()
    big = next(line for line in lines if line.startswith("big "))
    zero = next(line for line in lines if line.startswith("zero "))
    assert big.split()[1:3] == ["ready", "1/2"]  # running/desired
    assert "[1-4]" in big
    assert "scaled to zero" in zero and "0/0 [0-1]" in zero
    decision = next(line for line in lines if "last scaled" in line)
    assert decision.startswith("  big: last scaled up to 2 (queue, 30 s ago")


# --- reading a running platform over HTTP (real servers on loopback) ----------------------


class _Routes(BaseHTTPRequestHandler):
    """Answers GET from ``server.routes``: path -> (status, content type, body)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        routes = self.server.routes  # type: ignore[attr-defined]
        status, ctype, body = routes.get(
            self.path, (404, "application/json", _NOT_FOUND % self.path.encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


_NOT_FOUND = b'{"error":{"message":"Unknown route: GET %s","type":"invalid_request_error"}}'


@contextmanager
def serving(routes: dict[str, tuple[int, str, bytes]]) -> Iterator[int]:
    """A real HTTP server on a free loopback port; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Routes)
    server.routes = routes  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _metrics_text() -> bytes:
    metrics = GatewayMetrics(CollectorRegistry(), ("big",))
    metrics.scale_report(
        ScaleReport("big", 1, 2, 1, 4, 2, "queue", 3.0, 9, 0.4, 0.2, None, at=time.time())
    )
    return generate_latest(metrics.registry)


READY = (200, "application/json", json.dumps({"status": "ready", "models": {"big": "ready"}}))
METRICS = (200, "text/plain; version=0.0.4", _metrics_text())


def _api(with_metrics: bool) -> dict[str, tuple[int, str, bytes]]:
    routes = {"/readyz": (READY[0], READY[1], READY[2].encode())}
    if with_metrics:
        routes["/metrics"] = METRICS
    return routes


def _status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    metrics_port: int | None = None,
) -> tuple[int, str, str]:
    monkeypatch.delenv("LLMPLAT_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("LLMPLAT_ADMIN_TOKEN_FILE", raising=False)
    if metrics_port is None:
        monkeypatch.delenv("LLMPLAT_GATEWAY__METRICS_PORT", raising=False)
    else:
        monkeypatch.setenv("LLMPLAT_GATEWAY__METRICS_PORT", str(metrics_port))
    rc = main(["status", "--interval", "0", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_status_reads_metrics_from_the_metrics_port(monkeypatch, capsys) -> None:
    """The platform started with LLMPLAT_GATEWAY__METRICS_PORT serves /metrics there only
    (its API port answers 404 JSON): status reads it there and shows the same table."""
    with serving(_api(with_metrics=True)) as port:
        rc, same_port, err = _status(monkeypatch, capsys, ["--url", f"http://127.0.0.1:{port}"])
    assert (rc, err) == (0, "")
    assert "1/2 [1-4]" in same_port  # read from the metrics
    with serving(_api(with_metrics=False)) as api, serving({"/metrics": METRICS}) as mport:
        url = ["--url", f"http://127.0.0.1:{api}"]
        rc, own_port, err = _status(monkeypatch, capsys, url, metrics_port=mport)
        assert (rc, err, own_port) == (0, "", same_port)
        # --metrics-url wins over the setting.
        rc, flagged, err = _status(
            monkeypatch, capsys, [*url, "--metrics-url", f"http://127.0.0.1:{mport}/metrics"]
        )
        assert (rc, err, flagged) == (0, "", same_port)


def test_metrics_url_follows_the_platform_host() -> None:
    assert metrics_url("http://10.0.0.5:8000", None) == "http://10.0.0.5:8000/metrics"
    assert metrics_url("http://10.0.0.5:8000/", 9091) == "http://10.0.0.5:9091/metrics"
    assert metrics_url("https://[::1]:8000", 9091) == "https://[::1]:9091/metrics"
    assert metrics_url("http://h:1", 9091, "http://m:2/metrics") == "http://m:2/metrics"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("metrics port closed", "cannot reach"),
        ("metrics on the API port only", "answered HTTP 404, not Prometheus metrics"),
        ("metrics port answers html", "did not answer Prometheus text"),
        ("metrics port answers other metrics", "without llmplat metrics"),
        ("readyz answers html", "answered HTTP 200 without JSON"),
        ("readyz answers other json", "answered unexpected JSON"),
        ("platform closed", "cannot reach"),
    ],
)
def test_unreachable_or_unexpected_is_one_line_naming_the_url(
    monkeypatch, capsys, case: str, expect: str
) -> None:
    html = (200, "text/html", b"<html><body>hello</body></html>")
    api = _api(with_metrics=True)
    metrics = {"/metrics": METRICS}
    if case == "readyz answers html":
        api["/readyz"] = html
    elif case == "readyz answers other json":
        api["/readyz"] = (200, "application/json", b'{"ok": true}')
    elif case == "metrics port answers html":
        metrics["/metrics"] = html
    elif case == "metrics port answers other metrics":
        metrics["/metrics"] = (200, "text/plain", b"# TYPE up gauge\nup 1\n")
    elif case == "metrics on the API port only":
        metrics = {}
    with serving(api) as api_port, serving(metrics) as mport:
        if case == "metrics port closed":
            mport = _closed_port()
        if case == "platform closed":
            api_port = _closed_port()
        argv = ["--url", f"http://127.0.0.1:{api_port}"]
        rc, out, err = _status(monkeypatch, capsys, argv, metrics_port=mport)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    port = api_port if case.startswith(("readyz", "platform")) else mport
    assert f"127.0.0.1:{port}/" in err and expect in err, err
