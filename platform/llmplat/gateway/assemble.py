"""Wire one gateway replica: key store → authenticator, quota store, audit log, admin."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.registry_auth import RegistryAuthenticator, StoreFollower
from llmplat.gateway.backends import ModelBackend
from llmplat.gateway.scaling import ReportSource
from llmplat.gateway.state import GatewayConfig, GatewayState, build_state, log_record
from llmplat.observability.audit import AuditLog, AuditRecorder
from llmplat.observability.metrics import GatewayMetrics
from llmplat.quotas.service import QuotaService
from llmplat.stores import open_key_store, open_quota_store


def assemble_state(
    config: GatewayConfig,
    backends: dict[str, ModelBackend],
    scale_source: ReportSource | None = None,
) -> GatewayState:
    """The full request pipeline of a replica. Background work starts with the app."""
    key_store = open_key_store(config.keystore, Path(config.keystore_path))
    authenticator = RegistryAuthenticator(
        key_store.load(),
        dev_key=config.dev_api_key,
        store=key_store,
        max_staleness_s=config.keystore.max_staleness_s,
    )
    quota_store = open_quota_store(config.quotas)
    metrics = GatewayMetrics(CollectorRegistry(), tuple(m.model_id for m in config.models))
    quotas = QuotaService(
        quota_store,
        fail_open=config.quotas.on_store_error == "open",
        lease_s=config.quotas.lease_s,
        on_store_error=metrics.store_error,
    )
    state = build_state(config, authenticator, backends, quotas, metrics, scale_source)
    state.admin = KeyAdmin(key_store)
    state.admin_token = config.admin_token
    follower = StoreFollower(key_store, authenticator.update)
    state.on_startup.append(lambda: follower.start(asyncio.get_running_loop()))
    state.on_shutdown.append(follower.stop)
    state.on_shutdown.append(state.end_live)  # requests still running are finished
    state.on_shutdown.append(state.drain)  # settlements still running, then the store
    state.on_shutdown.append(quota_store.close)
    state.on_shutdown.append(lambda: state.executor.shutdown(wait=False))
    if config.audit_sink is not None:
        audit = AuditLog(config.audit_sink)
        state.on_finish = AuditRecorder(audit, log_record)
        state.on_shutdown.append(audit.close)
    return state
