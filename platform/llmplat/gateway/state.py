"""What one gateway replica knows: its models, limits, key check and model backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from llmplat.auth.base import Authenticator
from llmplat.gateway.backends import ModelBackend
from llmplat.gateway.fim import FimEncoder, load_fim_encoder
from llmplat.gateway.streaming import Usage

log = logging.getLogger("llmplat.requests")


@dataclass(frozen=True)
class GatewayModel:
    """A served model as the gateway presents it (picklable; built by the app builder)."""

    model_id: str
    max_model_len: int
    model_dir: str
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway replica is constructed with (picklable)."""

    models: tuple[GatewayModel, ...]
    dev_api_key: SecretStr | None
    max_request_bytes: int = 1 << 20
    request_timeout_s: float = 600.0
    ready_timeout_s: float = 5.0


@dataclass
class RequestRecord:
    """The outcome of one generation request, handed to ``on_finish`` exactly once."""

    team: str
    key_id: str
    model: str
    endpoint: str
    stream: bool
    status: int
    started: float
    ended: float = 0.0
    usage: Usage | None = None
    first_token_s: float | None = None
    error: str | None = None


def log_record(record: RequestRecord) -> None:
    usage = record.usage or Usage()
    log.info(
        "%s %s team=%s model=%s status=%d prompt=%d completion=%d latency_ms=%.1f%s",
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
    on_finish: Callable[[RequestRecord], None] = log_record
    clock: Callable[[], float] = time.perf_counter

    def model(self, model_id: str) -> GatewayModel | None:
        return next((m for m in self.config.models if m.model_id == model_id), None)


def build_state(
    config: GatewayConfig,
    authenticator: Authenticator,
    backends: dict[str, ModelBackend],
) -> GatewayState:
    missing = {m.model_id for m in config.models} - set(backends)
    if missing:
        raise ValueError(f"no backend for models: {', '.join(sorted(missing))}")
    fim = {m.model_id: load_fim_encoder(Path(m.model_dir)) for m in config.models}
    return GatewayState(config=config, authenticator=authenticator, backends=backends, fim=fim)
