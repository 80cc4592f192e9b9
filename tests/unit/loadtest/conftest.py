"""A gateway with the shared fake engine, paced like a (very fast) model, on loopback HTTP.

Unlike the unit suite's default gateway, its model has a 4096-token context (the corpus'
long prompts fit) and the engine spends a few ms per token, so streams have a real time
to first token and inter-token gaps for the load generator to measure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from llmplat.auth.file_store import FileKeyStore
from llmplat.engine.fake import FAKE_OPTIONS_KEY, FakeEngine
from llmplat.gateway.app import create_app
from llmplat.gateway.assemble import assemble_state
from llmplat.gateway.backends import EngineBackend
from llmplat.gateway.state import GatewayConfig, GatewayModel
from llmplat.settings import Settings
from support import ADMIN_TOKEN, DEV_KEY, MODEL, make_engine
from support.loopback import serve_loopback

TOKEN_DELAY_S = 0.004
CONTEXT = 4096


@pytest.fixture
async def paced_url(
    settings: Settings, model_dirs: dict[str, Path], key_store: FileKeyStore, audit_path: Path
) -> AsyncIterator[str]:
    cfg = make_engine(settings, MODEL, max_model_len=CONTEXT).llm_config
    cfg.experimental_configs[FAKE_OPTIONS_KEY] = {"token_delay_s": TOKEN_DELAY_S}
    engine = FakeEngine(cfg)
    await engine.start()
    config = GatewayConfig(
        models=(
            GatewayModel(model_id=MODEL, max_model_len=CONTEXT, model_dir=str(model_dirs[MODEL])),
        ),
        dev_api_key=SecretStr(DEV_KEY),
        admin_token=SecretStr(ADMIN_TOKEN),
        keystore_path=str(key_store.path),
        audit_sink=str(audit_path),
    )
    app = create_app(assemble_state(config, {MODEL: EngineBackend(engine)}))
    async with app.router.lifespan_context(app), serve_loopback(app) as url:
        yield url
