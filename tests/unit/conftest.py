"""Unit fixtures: the gateway app in-process, backed by the one shared fake engine."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import SecretStr

from llmplat.auth.dev import DevKeyAuthenticator
from llmplat.gateway.app import create_app
from llmplat.gateway.backends import EngineBackend
from llmplat.gateway.state import GatewayConfig, GatewayModel, RequestRecord, build_state
from llmplat.settings import Settings
from support import DEV_KEY, MODEL, PLAIN_MODEL, V3_TOKENIZER, make_engine


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("home"), dev_api_key=SecretStr(DEV_KEY))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fim_dir = tmp_path_factory.mktemp("fim-model")
    shutil.copy(V3_TOKENIZER, fim_dir / "tokenizer.model.v3")
    return {MODEL: fim_dir, PLAIN_MODEL: tmp_path_factory.mktemp("plain-model")}


@pytest.fixture
def records() -> list[RequestRecord]:
    return []


@pytest.fixture
async def gateway(settings: Settings, model_dirs: dict[str, Path], records: list[RequestRecord]):
    engines = {m: make_engine(settings, m) for m in (MODEL, PLAIN_MODEL)}
    for e in engines.values():
        await e.start()
    config = GatewayConfig(
        models=tuple(
            GatewayModel(model_id=m, max_model_len=256, model_dir=str(model_dirs[m]))
            for m in engines
        ),
        dev_api_key=SecretStr(DEV_KEY),
        max_request_bytes=64 * 1024,
    )
    state = build_state(
        config,
        DevKeyAuthenticator(config.dev_api_key),
        {m: EngineBackend(e) for m, e in engines.items()},
    )
    state.on_finish = records.append
    return create_app(state)


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
