"""Wire one gateway replica: key store → authenticator, quota store, audit log, admin."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.registry_auth import RegistryAuthenticator, StoreFollower
from llmplat.gateway.admission import QuotaService
from llmplat.gateway.backends import ModelBackend
from llmplat.gateway.scaling import ReportSource
from llmplat.gateway.state import GatewayConfig, GatewayState, build_state, log_event, log_record
from llmplat.observability.audit import AuditLog, AuditRecorder
from llmplat.observability.metrics import GatewayMetrics
from llmplat.observability.record import AdminAction, AuthFailure, RequestRecord
from llmplat.stores import open_key_store, open_quota_store


def assemble_state(
    config: GatewayConfig,
    backends: dict[str, ModelBackend],
    scale_source: ReportSource | None = None,
    status: Callable[[], Any] | None = None,
) -> GatewayState:
    """The full request pipeline of a replica. Background work starts with the app.
    ``status`` answers ``/admin/status`` (Ray Serve's deployments, under Serve)."""
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
    follower = StoreFollower(key_store, authenticator.update)
    on_finish: Callable[[RequestRecord], None] = log_record
    on_audit: Callable[[AdminAction | AuthFailure], None] = log_event
    closing: list[Callable[[], Any]] = [quota_store.close]  # after settlements still running
    if config.audit_sink is not None:
        audit = AuditLog(config.audit_sink)
        on_finish = AuditRecorder(audit, log_record)
        on_audit = audit.write
        closing.append(audit.close)
    return build_state(
        config,
        authenticator,
        backends,
        quotas,
        metrics,
        scale_source,
        admin=KeyAdmin(key_store),
        status=status,
        on_finish=on_finish,
        on_audit=on_audit,
        starting=(lambda: follower.start(asyncio.get_running_loop()),),
        stopping=(follower.stop,),
        closing=closing,
    )
