"""What one gateway replica knows: its models, limits, key check and model backends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.base import Authenticator
from llmplat.gateway.backends import ModelBackend
from llmplat.gateway.fim import FimEncoder, load_fim_encoder
from llmplat.gateway.scaling import ReportSource, ScaleView
from llmplat.gateway.throttle import FailedAuthThrottle
from llmplat.gateway.tokens import PromptCounter
from llmplat.gateway.usage import Usage
from llmplat.observability.metrics import GatewayMetrics
from llmplat.observability.record import RequestRecord
from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.quotas.service import QuotaService
from llmplat.settings import KeyStoreSettings, QuotaSettings

log = logging.getLogger("llmplat.requests")


@dataclass(frozen=True)
class GatewayModel:
    """A served model as the gateway presents it (picklable; built by the app builder)."""

    model_id: str
    max_model_len: int
    model_dir: str
    created: int = field(default_factory=lambda: int(time.time()))
    autoscaled: bool = False
    """Its replica count may change (the gateway follows the autoscaler's reports)."""
    min_replicas: int = 1
    scale_from_zero_wait_s: float = 120.0
    """How long a request is held while the model starts from zero replicas."""
    auto_tool_choice: bool = False
    """The engine parses tool calls from free text (a profile with a tool-call parser)."""
    tensor_parallel: int = 1
    """Ranks of one pipeline stage (to name each rank's stage and shard in the status)."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway replica is constructed with (picklable)."""

    models: tuple[GatewayModel, ...]
    dev_api_key: SecretStr | None
    max_request_bytes: int = 1 << 20
    request_timeout_s: float = 600.0
    max_messages: int = 1024
    ready_timeout_s: float = 5.0
    auth_failures_per_minute: int = 20
    admin_token: SecretStr | None = None
    keystore: KeyStoreSettings = field(default_factory=KeyStoreSettings)
    keystore_path: str = ""
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    audit_sink: str | None = None
    metrics_port: int | None = None
    secrets_from_environment: bool = False
    """On a cluster: the replica reads the admin token and the Redis URL from its own pod
    (mounted files) and applies the declared teams; the deployment's arguments, which Ray
    keeps in its control plane, carry no secret."""


def log_record(record: RequestRecord) -> None:
    usage = record.usage or Usage()
    log.info(
        "%s %s %s team=%s model=%s status=%d prompt=%d completion=%d latency_ms=%.1f%s",
        record.request_id,
        record.endpoint,
        "stream" if record.stream else "unary",
        record.team,
        record.model,
        record.status,
        usage.prompt_tokens,
        usage.completion_tokens,
        (record.ended - record.started) * 1000,
        f" error={record.error!r}" if record.error else "",
    )


@dataclass
class GatewayState:
    config: GatewayConfig
    authenticator: Authenticator
    backends: dict[str, ModelBackend]
    fim: dict[str, FimEncoder | None]
    counters: dict[str, PromptCounter]
    quotas: QuotaService
    metrics: GatewayMetrics
    scale: ScaleView
    """The autoscaler's reports of the models whose replica count may change."""
    on_finish: Callable[[RequestRecord], None] = log_record
    clock: Callable[[], float] = time.perf_counter
    status: Callable[[], Any] | None = None
    """Deployment status for ``/admin/status`` (Ray Serve's, when running under Serve)."""
    admin: KeyAdmin | None = None
    admin_token: SecretStr | None = None
    on_startup: list[Callable[[], Any]] = field(default_factory=list)
    on_shutdown: list[Callable[[], Any]] = field(default_factory=list)
    """Called (and awaited when they return awaitables) by the app's lifespan."""

    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="llmplat-prepare")
    )
    """Parses, encodes and counts large request bodies off the event loop."""
    pending: set[asyncio.Future[Any]] = field(default_factory=set)
    """Settlements and lease renewals still running (awaited at shutdown)."""
    auth_throttle: FailedAuthThrottle = field(
        default_factory=lambda: FailedAuthThrottle(GatewayConfig.auth_failures_per_minute)
    )
    """Failed authentications per client address (429 past the limit)."""
    live: set[Any] = field(default_factory=set)
    """Lifecycles of the generation requests not yet finished (ended at shutdown)."""

    def model(self, model_id: str) -> GatewayModel | None:
        return next((m for m in self.config.models if m.model_id == model_id), None)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``work`` as a task of its own: a cancelled request cannot interrupt it."""
        task = asyncio.ensure_future(work)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return task

    def end_live(self) -> None:
        """Shutdown: finish every request still running (engine call cancelled, billed what
        the engine did, slot released, one 503 record), so nothing waits for a lease to
        expire when the replica is stopped while streams are open."""
        for life in list(self.live):
            life.shut_down()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for every admission, settlement and renewal in progress, including work
        that finishing ones start (an abandoned admission's release)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.pending:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(list(self.pending), timeout=left)


def build_state(
    config: GatewayConfig,
    authenticator: Authenticator,
    backends: dict[str, ModelBackend],
    quotas: QuotaService | None = None,
    metrics: GatewayMetrics | None = None,
    scale_source: ReportSource | None = None,
) -> GatewayState:
    missing = {m.model_id for m in config.models} - set(backends)
    if missing:
        raise ValueError(f"no backend for models: {', '.join(sorted(missing))}")
    fim = {m.model_id: load_fim_encoder(Path(m.model_dir)) for m in config.models}
    counters = {m.model_id: PromptCounter(m.model_dir) for m in config.models}
    metrics = metrics or GatewayMetrics(CollectorRegistry(), tuple(fim))
    autoscaled = tuple(m.model_id for m in config.models if m.autoscaled)
    state = GatewayState(
        config=config,
        authenticator=authenticator,
        backends=backends,
        fim=fim,
        counters=counters,
        quotas=quotas or QuotaService(MemoryQuotaStore()),
        metrics=metrics,
        auth_throttle=FailedAuthThrottle(config.auth_failures_per_minute),
        scale=ScaleView(autoscaled, scale_source, metrics),
    )
    state.on_startup.append(state.scale.start)
    state.on_shutdown.append(state.scale.stop)
    return state
