"""The Gateway ingress deployment: no engine, no GPU, cheap to replicate."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from prometheus_client import start_http_server
from ray import serve

from llmplat.gateway.app import create_app
from llmplat.gateway.assemble import assemble_state
from llmplat.gateway.backends import ServeBackend
from llmplat.gateway.state import GatewayConfig


@serve.ingress()
class Gateway:
    """Builds its FastAPI app per replica from a picklable config and model handles."""

    def __init__(self, config: GatewayConfig, models: dict[str, Any]) -> None:
        logging.getLogger("llmplat").setLevel(logging.INFO)
        backends = {model_id: ServeBackend(handle) for model_id, handle in models.items()}
        self._state = assemble_state(config, backends)
        self._state.status = serve_status
        if config.metrics_port is not None:
            # One scrape target per replica (the chart's PodMonitor), beside GET /metrics.
            start_http_server(config.metrics_port, registry=self._state.metrics.registry)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._state)


def serve_status() -> dict[str, Any]:
    """Each deployment of every Serve application: status and replicas by state."""
    out: dict[str, Any] = {}
    for app_name, app in serve.status().applications.items():
        for name, dep in app.deployments.items():
            out[name] = {
                "application": app_name,
                "status": str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                "replicas": {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()},
            }
    return out
