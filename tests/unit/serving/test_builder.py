"""The gateway's config as the app builder makes it: the settings object embedded, not copied
field by field, and picklable (Ray hands it to every gateway replica)."""

from __future__ import annotations

import pickle
from pathlib import Path

from pydantic import SecretStr

from llmplat.config.loader import load_profile
from llmplat.engine.llm_config import build_llm_config
from llmplat.gateway.state import GatewayModel
from llmplat.serving.builder import BuiltModel, gateway_config
from llmplat.settings import GatewaySettings, Settings

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_gateway_config_embeds_the_settings_and_crosses_ray(tmp_path: Path) -> None:
    gateway = GatewaySettings(
        max_request_bytes=4096,
        request_timeout_s=7.5,
        max_messages=3,
        ready_timeout_s=2.0,
        auth_failures_per_minute=4,
        metrics_port=9464,
    )
    settings = Settings(
        home=tmp_path, config_dir=CONFIGS, gateway=gateway, admin_token=SecretStr("a" * 40)
    )
    profile = load_profile("tiny-mixtral-cpu-scale-to-zero", CONFIGS)
    built = BuiltModel(
        profile.model_id, "/unused", build_llm_config(profile, settings, "/unused"), profile
    )
    config = gateway_config([built], settings)
    assert config.gateway == gateway
    (model,) = config.models
    wait_s = profile.serving.autoscaling.scale_from_zero_wait_s
    assert wait_s != GatewayModel.scale_from_zero_wait_s  # the profile's, not the default
    assert (model.autoscaled, model.scale_from_zero_wait_s) == (True, wait_s)
    again = pickle.loads(pickle.dumps(config))
    assert again == config and again.gateway.request_timeout_s == 7.5
    assert again.admin_token is not None and again.admin_token.get_secret_value() == "a" * 40
