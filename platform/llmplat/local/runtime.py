"""Start and stop a platform on a local (or given) Ray cluster."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmplat.engine.multinode import free_port
from llmplat.engine.placement_status import REPLICA_PG_PREFIX
from llmplat.local.cluster import (
    LOCAL_HEAD_RESOURCE,
    LocalClusterError,
    WorkerRaylets,
    plan_local_nodes,
)
from llmplat.settings import Settings, export_defaults, export_values

# Serve/Ray tuning for a gateway → engine path (docs: Benchmarks).
RAY_ENV_DEFAULTS = {
    "RAY_SERVE_ENABLE_TASK_EVENTS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    # Ray starts workers at nice 15 (below its own agents); the engine is the workload.
    "RAY_worker_niceness": "0",
    # Serve's controller loop runs 10 times a second by default, and with the GCS it polls
    # it takes a visible share of a small machine's CPU; twice a second is enough here.
    # Replicas export Serve metrics once a second instead of ten times (Prometheus scrapes
    # every few seconds). Autoscaling decisions are unaffected at this scale.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}


APP_NAME = "llmplat"
log = logging.getLogger(__name__)


class PlatformStartError(RuntimeError):
    """The platform did not become ready; the message says why."""


@dataclass
class RunningPlatform:
    url: str
    settings: Settings
    drain_s: float = 0.0
    """How long stopping waits for the requests in flight (the replicas' drain)."""
    workers: WorkerRaylets | None = None
    """The worker nodes of a local multi-node cluster."""

    def shutdown(self) -> None:
        """Drain, then stop: the application is deleted first, so every replica takes no
        new request and finishes its own within its grace period; then Serve and Ray stop."""
        import ray
        from ray import serve

        try:
            if self.drain_s > 0:
                self._drain(serve)
            serve.shutdown()
        finally:
            try:
                if self.workers is not None:
                    self.workers.stop()
            finally:
                ray.shutdown()

    def _drain(self, serve: Any) -> None:
        try:
            serve.delete(APP_NAME, _blocking=False)
            deadline = time.monotonic() + self.drain_s
            while time.monotonic() < deadline:
                if APP_NAME not in serve.status().applications:
                    return
                time.sleep(0.5)
        except Exception as exc:  # stopping goes on regardless
            log.warning("draining failed (%s: %s); stopping now", type(exc).__name__, exc)


RAY_TOKEN_FILE = "ray-auth-token"
RAY_TOKEN_MODE = 0o600


def ray_token_path(settings: Settings) -> Path:
    """The local Ray cluster's authentication token (owner-only file under the home)."""
    return settings.home / RAY_TOKEN_FILE


def ensure_ray_token(settings: Settings) -> Path:
    """Create the token file on first use (64 hex characters, mode 0600); keep it after."""
    path = ray_token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, RAY_TOKEN_MODE)
    except FileExistsError:
        os.chmod(path, RAY_TOKEN_MODE)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def ray_environment(settings: Settings) -> dict[str, str]:
    """Variables Ray's processes must see; they are read when those processes start."""
    env = dict(RAY_ENV_DEFAULTS)
    if settings.ray_address is None:
        # A local cluster: every Ray endpoint (GCS, dashboard agent and its job API, Ray
        # client) asks for the token in this owner-only file; other local users get 401.
        # Serve's HTTP ports are not Ray's: they answer with the gateway's own key checks.
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_token_path(settings))}
    if settings.gateway.direct_ingress:
        end = settings.port + settings.gateway.replicas  # Serve's range excludes its end
        env |= {
            # Direct ingress (gateway replicas serve HTTP), Serve's handle and loop tuning.
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(end),
            # Locally there is no load balancer to drain from.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        }
    return env


def prepare_environment(settings: Settings) -> None:
    """Export Ray's variables; call before importing ray.serve (it reads them at import)."""
    env = ray_environment(settings)
    if settings.ray_address is None:
        ensure_ray_token(settings)
        # This home's token, even when the environment names another platform's (a second
        # platform started from the same shell or process).
        export_values({"RAY_AUTH_TOKEN_PATH": env.pop("RAY_AUTH_TOKEN_PATH")})
    export_defaults(env)


def user_ports(settings: Settings) -> list[tuple[int, str]]:
    """The ports a local platform listens on, each with the setting that moves it."""
    count = settings.gateway.replicas if settings.gateway.direct_ingress else 1
    ports = [(settings.port + i, "LLMPLAT_PORT") for i in range(count)]
    if settings.ray_address:
        return ports
    return [*ports, (settings.engine_metrics_port, "LLMPLAT_ENGINE_METRICS_PORT")]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on the port now. SO_REUSEADDR as the servers set it
    (asyncio/uvicorn, Ray's exporter): connections of a stopped platform still in
    TIME_WAIT do not block a restart."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_port_free(host: str, port: int, setting: str = "LLMPLAT_PORT") -> None:
    """Fail fast (instead of a proxy that never binds) when the port is taken."""
    if not port_free(host, port):
        raise PlatformStartError(
            f"cannot listen on {host}:{port} (address already in use); "
            f"stop what uses it or set {setting}"
        )


def with_free_metrics_port(settings: Settings, say: Callable[[str], None]) -> Settings:
    """The default engine metrics port, when another platform holds it, moves to a free
    one (so two platforms run side by side); a port the user chose is checked as given."""
    port = settings.engine_metrics_port
    explicit = "engine_metrics_port" in settings.model_fields_set
    if settings.ray_address or explicit or port_free(settings.host, port):
        return settings
    free = free_port(settings.host)
    say(f"port {port} is taken: engine metrics on {free} (LLMPLAT_ENGINE_METRICS_PORT)")
    return settings.model_copy(update={"engine_metrics_port": free})


def start_platform(
    settings: Settings,
    build_application: Callable[[], object],
    *,
    ready_timeout_s: float = 900.0,
    progress: Callable[[str], None] | None = None,
    drain_s: float = 0.0,
) -> RunningPlatform:
    """Start Ray and Serve, deploy the application, and wait until /readyz answers 200.

    The application is built only after Ray is up: Ray Serve LLM reads the runtime context
    while building deployments, which would otherwise start a second, default Ray.
    """
    import ray
    from ray import serve

    say = progress or (lambda _msg: None)
    settings = with_free_metrics_port(settings, say)
    for port, setting in user_ports(settings):
        check_port_free(settings.host, port, setting)
    proxy_port = free_port(settings.host) if settings.gateway.direct_ingress else settings.port
    prepare_environment(settings)
    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    say("starting Ray")
    try:
        local_nodes = (
            []
            if settings.ray_address
            else plan_local_nodes(settings.local.nodes, settings.num_cpus or os.cpu_count() or 1)
        )
    except LocalClusterError as exc:
        raise PlatformStartError(str(exc)) from None
    if settings.ray_address:
        ray.init(address=settings.ray_address, logging_level="WARNING")
    else:
        head = local_nodes[0]
        ray.init(
            num_cpus=head.num_cpus if len(local_nodes) > 1 else settings.num_cpus or os.cpu_count(),
            # Only a multi-node local cluster names its nodes' cores: a single node keeps
            # the binding of the engine's environment (settings.cpu).
            labels=head.labels() if len(local_nodes) > 1 else None,
            resources={LOCAL_HEAD_RESOURCE: settings.gateway.replicas}
            if len(local_nodes) > 1
            else None,
            include_dashboard=False,
            _temp_dir=str(settings.ray_temp_dir),
            # Engine metrics (vLLM's, through Ray) and Serve's own, in Prometheus format.
            _metrics_export_port=settings.engine_metrics_port,
            logging_level="WARNING",
            log_to_driver=settings.log_level == "DEBUG",
        )
    url = f"http://{settings.host}:{settings.port}"
    running = RunningPlatform(url=url, settings=settings)
    try:
        if len(local_nodes) > 1:
            running.workers = WorkerRaylets(
                local_nodes[1:], ray.get_runtime_context().gcs_address, settings.ray_temp_dir
            )
            say(f"starting {len(local_nodes) - 1} worker node(s) on this machine")
            try:
                running.workers.start(settings.local.node_start_timeout_s, say)
            except LocalClusterError as exc:
                raise PlatformStartError(str(exc)) from None
        serve.start(
            # With direct ingress the gateway replicas take the user's port(s) and the
            # proxy moves to a free one; replicas bind the same host.
            http_options={"host": settings.host, "port": proxy_port},
            # Access logs cost CPU on every request; the gateway records each one itself.
            logging_config={"enable_access_log": False, "log_level": settings.log_level},
        )
        say("deploying gateway and models")
        # Return at once and poll /readyz ourselves: progress and failures get reported.
        serve.run_many(
            [serve.RunTarget(target=build_application(), name=APP_NAME, route_prefix="/")],
            wait_for_applications_running=False,
        )
        _wait_ready(url, ready_timeout_s, say, local=not settings.ray_address)
    except BaseException:
        running.shutdown()
        raise
    running.drain_s = drain_s  # from now on, stopping lets requests in flight finish
    return running


def _deploy_failure() -> str | None:
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    if status is None:
        return None
    for name, dep in status.deployments.items():
        if str(dep.status).endswith("DEPLOY_FAILED") or str(dep.status).endswith("UNHEALTHY"):
            return f"deployment {name} failed: {dep.message}"
    return None


def _deploy_summary() -> str:
    from ray import serve

    status = serve.status().applications.get(APP_NAME)
    if status is None:
        return "application not created yet"
    return ", ".join(
        f"{name}: {str(dep.status).rsplit('.', 1)[-1]}" for name, dep in status.deployments.items()
    )


def unplaceable_replicas(table: dict[str, dict[str, Any]], alive_nodes: int) -> list[str]:
    """Why each model replica's placement group can never be placed, from Ray's
    ``placement_group_table``: Ray found its bundles and strategy infeasible on the nodes
    there are. Only for a local cluster: there no node will be added (an autoscaling
    cluster would start one)."""
    out = []
    for pg in table.values():
        name = pg.get("name") or ""
        stats = pg.get("stats") or {}
        if not name.startswith(REPLICA_PG_PREFIX) or pg.get("state") != "PENDING":
            continue
        if stats.get("scheduling_state") != "INFEASIBLE":
            continue
        deployment = name.removeprefix(REPLICA_PG_PREFIX).split("#")[1:2] or ["?"]
        bundles = list((pg.get("bundles") or {}).values())
        out.append(
            f"{deployment[0]}: {len(bundles)} bundle(s) {bundles[:1]} with strategy "
            f"{pg.get('strategy')} cannot be placed on {alive_nodes} node(s); a layout over "
            "more nodes needs `llmplat serve --nodes N` (LLMPLAT_LOCAL__NODES)"
        )
    return out


def _local_placement_failure() -> str | None:
    import ray
    from ray.util.placement_group import placement_group_table

    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    reasons = unplaceable_replicas(placement_group_table(), alive)
    return "; ".join(reasons) or None


def _wait_ready(
    url: str, timeout_s: float, say: Callable[[str], None], *, local: bool = False
) -> None:
    deadline = time.monotonic() + timeout_s
    last_note = 0.0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
        failure = _deploy_failure() or (_local_placement_failure() if local else None)
        if failure:
            raise PlatformStartError(failure)
        if time.monotonic() - last_note > 15:
            say(f"waiting for the engines to load ({_deploy_summary()})")
            last_note = time.monotonic()
        time.sleep(1.0)
    raise PlatformStartError(f"not ready after {timeout_s:.0f} s ({url}/readyz)")
