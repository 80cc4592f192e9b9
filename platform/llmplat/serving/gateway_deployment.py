"""The Gateway ingress deployment: no engine, no GPU, cheap to replicate."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from fastapi import FastAPI
from prometheus_client import start_http_server
from ray import serve

from llmplat.autoscaling.report import KvStore
from llmplat.engine.placement_status import deployment_name, live_placements
from llmplat.gateway.app import create_app
from llmplat.gateway.assemble import assemble_state
from llmplat.gateway.backends import ServeBackend
from llmplat.gateway.state import GatewayConfig
from llmplat.serving.ingress_socket import reuse_address_for_direct_ingress
from llmplat.settings import Settings

log = logging.getLogger(__name__)


@serve.ingress()
class Gateway:
    """Builds its FastAPI app per replica from a picklable config and model handles."""

    def __init__(self, config: GatewayConfig, models: dict[str, Any]) -> None:
        logging.getLogger("llmplat").setLevel(logging.INFO)
        reuse_address_for_direct_ingress()  # before Serve starts this replica's listener
        if config.secrets_from_environment:
            config = with_own_secrets(config)
        backends = {model_id: ServeBackend(handle) for model_id, handle in models.items()}
        tensor_parallel = {deployment_name(m.model_id): m.tensor_parallel for m in config.models}
        self._state = assemble_state(
            config,
            backends,
            scale_source=KvStore(),
            status=functools.partial(serve_status, tensor_parallel),
        )
        metrics_port = config.gateway.metrics_port
        if metrics_port is not None:
            # One scrape target per replica (the chart's PodMonitor), beside GET /metrics.
            start_http_server(metrics_port, registry=self._state.metrics.registry)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._state)


def with_own_secrets(config: GatewayConfig) -> GatewayConfig:
    """The admin token and Redis URL from this pod (``LLMPLAT_*_FILE`` mounts); declared
    teams applied with this pod's key-store permissions."""
    settings = Settings()
    settings.check_quota_store()
    apply_teams_file(settings)
    quotas = config.quotas.model_copy(update={"redis_url": settings.quotas.redis_url})
    return dataclasses.replace(config, admin_token=settings.admin_token, quotas=quotas)


def apply_teams_file(settings: Settings) -> None:
    """Create or update the teams the chart declares (``LLMPLAT_TEAMS_FILE``)."""
    if settings.teams_file is None:
        return
    from llmplat.auth.admin import KeyAdmin
    from llmplat.auth.declared import apply_declared_teams, load_declared_teams
    from llmplat.stores import open_key_store

    teams = load_declared_teams(settings.teams_file)
    admin = KeyAdmin(open_key_store(settings.keystore, settings.keystore_path))
    for team, outcome in apply_declared_teams(admin, teams).items():
        log.info("declared team %s: %s", team, outcome)


def serve_status(tensor_parallel: dict[str, int]) -> dict[str, Any]:
    """Each deployment of every Serve application: status, message, replicas by state, and
    for model deployments the node of every rank of every replica (or why it is unplaced)."""
    placements = live_placements(tensor_parallel)
    out: dict[str, Any] = {}
    for app_name, app in serve.status().applications.items():
        for name, dep in app.deployments.items():
            out[name] = {
                "application": app_name,
                "status": str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                "message": dep.message,
                "replicas": {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()},
            }
            if name in tensor_parallel:
                out[name]["placement"] = placements.get(name, [])
    return out
