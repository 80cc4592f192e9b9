"""Constants and helpers shared by the test suites."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mistral_common

from llmplat.config.loader import load_profile
from llmplat.engine.fake import FAKE_OPTIONS_KEY, FakeEngine
from llmplat.engine.llm_config import build_llm_config
from llmplat.settings import Settings

if TYPE_CHECKING:
    from llmplat.gateway.state import GatewayConfig

DEV_KEY = "llmp_dev_unit-test-key-0123456789abcdef"
ADMIN_TOKEN = "llmp_admin_unit-test-token-0123456789"
MODEL = "tiny-mixtral"
PLAIN_MODEL = "plain-model"  # a model without a FIM-capable tokenizer
V3_TOKENIZER = (
    Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
)
V1_TOKENIZER = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def make_engine(settings: Settings, model_id: str, max_model_len: int = 256) -> FakeEngine:
    """The shared fake engine, configured from the real tiny profile."""
    profile = load_profile("tiny-mixtral-cpu", settings.config_dir)
    profile = profile.model_copy(
        update={
            "model_id": model_id,
            "engine": profile.engine.model_copy(update={"max_model_len": max_model_len}),
        }
    )
    cfg = build_llm_config(profile, settings, "/unused")
    cfg.experimental_configs[FAKE_OPTIONS_KEY] = {"token_delay_s": 0.0}
    return FakeEngine(cfg)


def auth(key: str = DEV_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def with_gateway(config: GatewayConfig, **changes: Any) -> GatewayConfig:
    """``config`` with these gateway settings changed (``request_timeout_s=0.2``)."""
    return dataclasses.replace(config, gateway=config.gateway.model_copy(update=changes))
