"""What one gateway replica knows: its models, limits, key check and model backends."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.base import Authenticator
from llmplat.config.profiles import AutoscalingSpec
from llmplat.gateway.admission import QuotaService
from llmplat.gateway.backends import ModelBackend
from llmplat.gateway.fim import FimEncoder, load_fim_encoder
from llmplat.gateway.grammars import GrammarGate
from llmplat.gateway.scaling import ReportSource, ScaleView
from llmplat.gateway.throttle import FailedAuthThrottle
from llmplat.gateway.tokens import PromptCounter
from llmplat.gateway.uploads import BodyBudget
from llmplat.gateway.usage import Usage
from llmplat.observability.audit import audit_line
from llmplat.observability.metrics import GatewayMetrics
from llmplat.observability.record import AdminAction, AuthFailure, RequestRecord
from llmplat.quotas.memory import MemoryQuotaStore
from llmplat.settings import GatewaySettings, KeyStoreSettings, QuotaSettings

log = logging.getLogger("llmplat.requests")

Hook = Callable[[], Any]
"""A startup or shutdown step: called, and awaited when it returns an awaitable."""


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
    scale_from_zero_wait_s: float = AutoscalingSpec.model_fields["scale_from_zero_wait_s"].default
    """How long a request is held while the model starts from zero replicas (default: the
    profile's, ``AutoscalingSpec.scale_from_zero_wait_s``)."""
    auto_tool_choice: bool = False
    """The engine parses tool calls from free text (a profile with a tool-call parser)."""
    tensor_parallel: int = 1
    """Ranks of one pipeline stage (to name each rank's stage and shard in the status)."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway replica is constructed with (picklable)."""

    models: tuple[GatewayModel, ...]
    dev_api_key: SecretStr | None
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """Limits and tuning of the gateway (body size, timeouts, throttle, metrics port)."""
    admin_token: SecretStr | None = None
    keystore: KeyStoreSettings = field(default_factory=KeyStoreSettings)
    keystore_path: str = ""
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    audit_sink: str | None = None
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


def log_event(event: AdminAction | AuthFailure) -> None:
    """Without an audit log, admin actions and failed logins go to the server log."""
    log.info("audit %s", json.dumps(audit_line(event), separators=(",", ":")))


@dataclass
class GatewayState:
    """One replica's request pipeline, built complete by :func:`build_state`."""

    config: GatewayConfig
    authenticator: Authenticator
    backends: dict[str, ModelBackend]
    fim: dict[str, FimEncoder | None]
    counters: dict[str, PromptCounter]
    quotas: QuotaService
    body_budget: BodyBudget
    """Request-body bytes held for requests not yet admitted, replica-wide."""
    grammars: GrammarGate
    """New grammar compilations by team, and the specs recently compiled."""
    metrics: GatewayMetrics
    scale: ScaleView
    """The autoscaler's reports of the models whose replica count may change."""
    on_finish: Callable[[RequestRecord], None] = log_record
    on_audit: Callable[[AdminAction | AuthFailure], None] = log_event
    """Where admin actions and failed logins go (the audit log, as ``on_finish``'s lines)."""
    clock: Callable[[], float] = time.perf_counter
    status: Callable[[], Any] | None = None
    """Deployment status for ``/admin/status`` (Ray Serve's, when running under Serve)."""
    admin: KeyAdmin | None = None
    """The admin API's key administration; the API is off without it or an admin token."""
    starting: tuple[Hook, ...] = ()
    """Started with the app, after the state's own background work (see ``on_startup``)."""
    stopping: tuple[Hook, ...] = ()
    """At shutdown, before the requests still running are ended: what keeps the state current
    (the key-store follower)."""
    closing: tuple[Hook, ...] = ()
    """At shutdown, after every request, settlement and renewal is done: the stores and
    sinks they used (quota store, audit log)."""

    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="llmplat-prepare")
    )
    """Parses, encodes and counts large request bodies off the event loop."""
    pending: set[asyncio.Future[Any]] = field(default_factory=set)
    """Settlements and lease renewals still running (awaited at shutdown)."""
    auth_throttle: FailedAuthThrottle = field(init=False)
    """Failed authentications per client address (429 past the limit; from the config)."""
    live: set[Any] = field(default_factory=set)
    """Lifecycles of the generation requests not yet finished (ended at shutdown)."""

    def __post_init__(self) -> None:
        self.auth_throttle = FailedAuthThrottle(self.config.gateway.auth_failures_per_minute)

    @property
    def on_startup(self) -> tuple[Hook, ...]:
        """Run by the app's lifespan, in order, before the first request."""
        return (self.scale.start, *self.starting)

    @property
    def on_shutdown(self) -> tuple[Hook, ...]:
        """Run by the app's lifespan, in order, after the last request: stop following the
        autoscaler and what ``stopping`` names, end the requests still running, wait for
        their settlements, then close the executor and what ``closing`` names."""
        return (
            self.scale.stop,
            *self.stopping,
            self.end_live,
            self.drain,
            self.stop_executor,
            *self.closing,
        )

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

    def stop_executor(self) -> None:
        """Shutdown: no more bodies are prepared (work already queued is not waited for)."""
        self.executor.shutdown(wait=False)

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
    *,
    admin: KeyAdmin | None = None,
    status: Callable[[], Any] | None = None,
    on_finish: Callable[[RequestRecord], None] = log_record,
    on_audit: Callable[[AdminAction | AuthFailure], None] = log_event,
    starting: Sequence[Hook] = (),
    stopping: Sequence[Hook] = (),
    closing: Sequence[Hook] = (),
) -> GatewayState:
    """The complete state of a replica (see :class:`GatewayState` for the hooks' order)."""
    missing = {m.model_id for m in config.models} - set(backends)
    if missing:
        raise ValueError(f"no backend for models: {', '.join(sorted(missing))}")
    fim = {m.model_id: load_fim_encoder(Path(m.model_dir)) for m in config.models}
    counters = {m.model_id: PromptCounter(m.model_dir) for m in config.models}
    metrics = metrics or GatewayMetrics(CollectorRegistry(), tuple(fim))
    autoscaled = tuple(m.model_id for m in config.models if m.autoscaled)
    return GatewayState(
        config=config,
        authenticator=authenticator,
        backends=backends,
        fim=fim,
        counters=counters,
        quotas=quotas or QuotaService(MemoryQuotaStore()),
        body_budget=BodyBudget(config.gateway.max_buffered_body_bytes),
        grammars=GrammarGate(),
        metrics=metrics,
        scale=ScaleView(autoscaled, scale_source, metrics),
        on_finish=on_finish,
        on_audit=on_audit,
        status=status,
        admin=admin,
        starting=tuple(starting),
        stopping=tuple(stopping),
        closing=tuple(closing),
    )
