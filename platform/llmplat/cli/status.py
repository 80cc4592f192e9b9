"""`llmplat status`: a running platform at a glance, from its HTTP endpoints.

Reads ``/readyz`` (models, readiness), ``/admin/status`` (replicas), ``/metrics`` twice a
second apart (requests in flight, tokens/s, autoscaled models' running/desired replicas and
last decision) and each team's usage against its quota. With a metrics port
(``LLMPLAT_GATEWAY__METRICS_PORT``, the chart's default) the platform serves ``/metrics``
there only, so that is where it is read (or from ``--metrics-url``). An endpoint that
cannot be reached or answers something unexpected ends the command with one line naming
its URL and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmplat.cli.base import Subcommands
from llmplat.cli.output import note
from llmplat.settings import Settings


class EndpointUnreadable(Exception):
    """An endpoint could not be read: the message is the one line the operator sees."""


def metrics_url(url: str, metrics_port: int | None, override: str | None = None) -> str:
    """Where the platform at ``url`` serves ``/metrics``: its own port when it has one."""
    if override:
        return override
    if metrics_port is None:
        return url.rstrip("/") + "/metrics"
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or 'http'}://{host}:{metrics_port}/metrics"


def _get(http: httpx.Client, url: str) -> httpx.Response:
    try:
        return http.get(url)
    except httpx.HTTPError as exc:
        raise EndpointUnreadable(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None


def _json(http: httpx.Client, url: str) -> tuple[int, Any]:
    """(status, body) of a JSON endpoint."""
    r = _get(http, url)
    try:
        return r.status_code, r.json()
    except ValueError:
        raise EndpointUnreadable(f"{url} answered HTTP {r.status_code} without JSON") from None


def _expect(cond: bool, url: str, what: str) -> None:
    if not cond:
        raise EndpointUnreadable(f"{url} answered unexpected JSON ({what})")


def read_metrics(http: httpx.Client, url: str) -> str:
    """The Prometheus text at ``url``, checked to be llmplat's metrics."""
    r = _get(http, url)
    if r.status_code != 200:
        raise EndpointUnreadable(f"{url} answered HTTP {r.status_code}, not Prometheus metrics")
    try:
        names = [f.name for f in text_string_to_metric_families(r.text)]
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on non-metrics
        raise EndpointUnreadable(f"{url} did not answer Prometheus text ({exc})") from None
    if not any(name.startswith("llmplat_") for name in names):
        raise EndpointUnreadable(f"{url} answered Prometheus text without llmplat metrics")
    return r.text


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """A metric's samples: (labels, value)."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _sum_samples(text: str, name: str) -> dict[str, float]:
    """Sum of a metric's samples by model."""
    out: dict[str, float] = {}
    for labels, value in _samples(text, name):
        model = labels.get("model", "")
        out[model] = out.get(model, 0.0) + value
    return out


def replicas_by_model(text: str) -> dict[str, dict[str, float]]:
    """Autoscaled models' replicas by state (running, desired, min, max)."""
    out: dict[str, dict[str, float]] = {}
    for labels, value in _samples(text, "llmplat_model_replicas"):
        out.setdefault(labels["model"], {})[labels["state"]] = value
    return out


def decisions_by_model(text: str) -> dict[str, tuple[str, float | None]]:
    """Each autoscaled model's last decision: ("<direction> <reason>", unix time)."""
    at = dict(
        (labels["model"], value)
        for labels, value in _samples(text, "llmplat_autoscaling_last_decision_timestamp_seconds")
    )
    return {
        labels["model"]: (f"{labels['direction']} {labels['reason']}", at.get(labels["model"]))
        for labels, value in _samples(text, "llmplat_autoscaling_last_decision")
        if value == 1
    }


def _fmt_limit(used: int, limit: int | None) -> str:
    return f"{used}" if limit is None else f"{used}/{limit} ({100 * used / limit:.0f}%)"


def collect(
    url: str, admin_token: str | None, interval_s: float = 1.0, metrics: str | None = None
) -> dict[str, Any]:
    """Everything ``render`` shows; ``metrics``: the /metrics URL (default: on ``url``).
    Raises EndpointUnreadable naming the endpoint that failed."""
    base = url.rstrip("/")
    metrics = metrics or f"{base}/metrics"
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    with httpx.Client(timeout=10, headers=headers) as http:
        _, ready = _json(http, f"{base}/readyz")
        _expect(
            isinstance(ready, dict) and isinstance(ready.get("models"), dict),
            f"{base}/readyz",
            "no models",
        )
        before = read_metrics(http, metrics)
        t0 = time.monotonic()
        status: Any = None
        teams_code: int | None = None
        usage: dict[str, Any] = {}
        if admin_token:
            code, body = _json(http, f"{base}/admin/status")
            status = body.get("deployments") if code == 200 and isinstance(body, dict) else None
            teams_code, teams = _json(http, f"{base}/admin/teams")
            if teams_code == 200:
                _expect(
                    isinstance(teams, dict) and "data" in teams, f"{base}/admin/teams", "no data"
                )
                for t in teams["data"]:
                    where = f"{base}/admin/teams/{t['name']}/usage"
                    code, body = _json(http, where)
                    usage[t["name"]] = body["usage"][0] if code == 200 else None
        time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
        after = read_metrics(http, metrics)
        elapsed = max(time.monotonic() - t0, 1e-9)
    tokens_name = "llmplat_completion_tokens_total"
    t_before, t_after = _sum_samples(before, tokens_name), _sum_samples(after, tokens_name)
    return {
        "ready": ready,
        "replicas": replicas_by_model(after),
        "decisions": decisions_by_model(after),
        "in_flight": _sum_samples(after, "llmplat_requests_in_flight"),
        "tokens_per_s": {m: (v - t_before.get(m, 0.0)) / elapsed for m, v in t_after.items()},
        "deployments": status,
        "usage": usage,
        "admin": teams_code,
    }


def render(data: dict[str, Any]) -> str:
    lines = [f"platform: {data['ready'].get('status')}"]
    lines.append(f"{'model':24} {'ready':28} {'replicas':>16} {'in flight':>9} {'tokens/s':>9}")
    deployments = data["deployments"] or {}
    scaling = data.get("replicas", {})
    for model, state in data["ready"].get("models", {}).items():
        dep = next((d for n, d in deployments.items() if n.endswith(f":{model}")), None)
        replicas = str(dep["replicas"].get("RUNNING", 0)) if dep else "?"
        if model in scaling:  # autoscaled: running/desired and the bounds
            r = {k: int(v) for k, v in scaling[model].items()}
            replicas = f"{r['running']}/{r['desired']} [{r['min']}-{r['max']}]"
        lines.append(
            f"{model:24} {state:28} {replicas:>16} {data['in_flight'].get(model, 0):>9.0f} "
            f"{data['tokens_per_s'].get(model, 0.0):>9.1f}"
        )
    for model, (what, at) in sorted(data.get("decisions", {}).items()):
        direction, reason = what.split(" ", 1)
        ago = f", {time.time() - at:.0f} s ago" if at else ""
        to = int(scaling.get(model, {}).get("desired", 0))
        lines.append(f"  {model}: last scaled {direction} to {to} ({reason}{ago})")
    lines.extend(placement_lines(deployments))
    gw = deployments.get("Gateway")
    if gw:
        lines.append(f"gateway replicas running: {gw['replicas'].get('RUNNING', 0)}")
    if data["admin"] is None:
        lines.append("teams: set LLMPLAT_ADMIN_TOKEN (or ..._FILE) to see team usage")
    elif data["admin"] != 200:
        lines.append(f"teams: the admin API answered {data['admin']} (wrong admin token?)")
    else:
        lines.append(
            f"{'team':20} {'tokens today':>22} {'req last 60 s':>16} {'tok last 60 s':>20} "
            f"{'in flight':>12}"
        )
        for team, u in sorted(data["usage"].items()):
            if u is None:
                continue
            lim = u["limits"]
            lines.append(
                f"{team:20} {_fmt_limit(u['tokens_today'], lim['tokens_per_day']):>22} "
                f"{_fmt_limit(u['requests_this_minute'], lim['requests_per_minute']):>16} "
                f"{_fmt_limit(u['tokens_this_minute'], lim['tokens_per_minute']):>20} "
                f"{_fmt_limit(u['in_flight'], lim['concurrent_requests']):>12}"
            )
    return "\n".join(lines)


def placement_lines(deployments: dict[str, Any]) -> list[str]:
    """One line per replica of a sharded model: the node of each rank, or why it waits."""
    lines = []
    for name, dep in sorted(deployments.items()):
        for replica in dep.get("placement") or []:
            ranks = replica.get("ranks")
            head = f"  {name.split(':', 1)[-1]} replica {replica['replica']}"
            if ranks is None:
                lines.append(f"{head}: not placed: {replica['reason']}")
            elif len(ranks) > 1:
                where = ", ".join(
                    f"rank {r['rank']} (stage {r['stage']}, shard {r['shard']}) on {r['node']}"
                    + ("" if r["node_alive"] else " [node down]")
                    for r in ranks
                )
                lines.append(f"{head}: {where}")
    return lines


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    url = args.url or f"http://{settings.host}:{settings.port}"
    metrics = metrics_url(url, settings.gateway.metrics_port, args.metrics_url)
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        data = collect(url, token, interval_s=args.interval, metrics=metrics)
        text = render(data)
    except EndpointUnreadable as exc:
        note(str(exc), command="status")
        return 1
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # An answer of the right kind but not the expected shape (another service?).
        note(
            f"unexpected answer from the platform at {url} ({type(exc).__name__}: {exc})",
            command="status",
        )
        return 1
    print(text)
    return 0 if data["ready"].get("status") == "ready" else 3


def add_status_command(sub: Subcommands) -> None:
    p = sub.add_parser("status", help="models, replicas, load and team usage of a running platform")
    p.add_argument("--url", help="platform URL (default http://LLMPLAT_HOST:LLMPLAT_PORT)")
    p.add_argument(
        "--metrics-url",
        help="where to read /metrics (default: the platform URL's host on "
        "LLMPLAT_GATEWAY__METRICS_PORT when set, else the platform URL)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.set_defaults(func=cmd_status)
