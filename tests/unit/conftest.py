"""Unit fixtures: the gateway app in-process, backed by the one shared fake engine."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from llmplat.auth.file_store import FileKeyStore
from llmplat.gateway.app import create_app
from llmplat.gateway.assemble import assemble_state
from llmplat.gateway.backends import EngineBackend
from llmplat.gateway.state import GatewayConfig, GatewayModel, GatewayState, RequestRecord
from llmplat.settings import GatewaySettings, Settings
from support import (
    ADMIN_TOKEN,
    DEV_KEY,
    MODEL,
    PLAIN_MODEL,
    V1_TOKENIZER,
    V3_TOKENIZER,
    make_engine,
)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("home"), dev_api_key=SecretStr(DEV_KEY))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fim_dir = tmp_path_factory.mktemp("fim-model")
    shutil.copy(V3_TOKENIZER, fim_dir / "tokenizer.model.v3")
    plain_dir = tmp_path_factory.mktemp("plain-model")
    shutil.copy(V1_TOKENIZER, plain_dir / "tokenizer.model.v1")  # no FIM control tokens
    return {MODEL: fim_dir, PLAIN_MODEL: plain_dir}


@pytest.fixture
def records() -> list[RequestRecord]:
    return []


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def key_store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "teams.yaml", poll_interval_s=0.1)


@pytest.fixture
async def gateway(
    settings: Settings,
    model_dirs: dict[str, Path],
    records: list[RequestRecord],
    key_store: FileKeyStore,
    audit_path: Path,
) -> AsyncIterator[FastAPI]:
    """The whole request pipeline of a replica (file key store, in-process quotas, audit),
    the shared fake engine behind it, its lifespan running."""
    engines = {m: make_engine(settings, m) for m in (MODEL, PLAIN_MODEL)}
    for e in engines.values():
        await e.start()
    config = GatewayConfig(
        models=tuple(
            GatewayModel(
                model_id=m,
                max_model_len=256,
                model_dir=str(model_dirs[m]),
                auto_tool_choice=m == MODEL,  # PLAIN_MODEL: a profile without a parser
            )
            for m in engines
        ),
        dev_api_key=SecretStr(DEV_KEY),
        gateway=GatewaySettings(max_request_bytes=64 * 1024),
        admin_token=SecretStr(ADMIN_TOKEN),
        keystore_path=str(key_store.path),
        audit_sink=str(audit_path),
    )
    state = assemble_state(config, {m: EngineBackend(e) for m, e in engines.items()})
    audit = state.on_finish
    state.on_finish = lambda rec: (records.append(rec), audit(rec))
    app = create_app(state)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


@pytest.fixture
async def client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=DEV_KEY, base_url="http://gw/v1", http_client=http, max_retries=0
    )


@pytest.fixture
async def live_url(gateway: FastAPI) -> AsyncIterator[str]:
    """The gateway on real loopback HTTP (uvicorn), for streaming and disconnects."""
    from support.loopback import serve_loopback

    async with serve_loopback(gateway) as url:
        yield url


Replica = Callable[..., AbstractAsyncContextManager[tuple[GatewayState, httpx.AsyncClient]]]


@pytest.fixture
def replica(gateway: FastAPI) -> Replica:
    """``async with replica(**config_changes) as (state, http)``: another replica of the
    running gateway (same engines, key store and audit sink unless changed), assembled
    from its config with ``config_changes``, its lifespan running."""

    @asynccontextmanager
    async def make(**changes: object) -> AsyncIterator[tuple[GatewayState, httpx.AsyncClient]]:
        running: GatewayState = gateway.state.gateway
        state = assemble_state(dataclasses.replace(running.config, **changes), running.backends)
        app = create_app(state)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as h,
        ):
            yield state, h

    return make
