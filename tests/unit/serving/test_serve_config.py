"""The Serve config (RayService serveConfigV2) and the entrypoint Ray Serve imports from it."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from llmplat.config.loader import load_profile
from llmplat.serving import entrypoint
from llmplat.serving.serve_config import ENTRYPOINT, ServeAppArgs, serve_config
from llmplat.settings import Settings

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
PROFILES = sorted(p.stem for p in (CONFIGS / "models").glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_serve_config_is_valid_for_ray_and_carries_the_profile_whole(name: str) -> None:
    profile = load_profile(name, CONFIGS)
    config = serve_config([profile])
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == ENTRYPOINT and app["route_prefix"] == "/"
    assert ServeAppArgs.model_validate(app["args"]).profiles == [profile]
    # it survives the trip through YAML (the RayService holds it as a string)
    assert yaml.safe_load(yaml.safe_dump(config)) == config


def test_import_path_names_a_one_argument_application_builder() -> None:
    module, attr = ENTRYPOINT.split(":")
    builder = getattr(importlib.import_module(module), attr)
    assert builder is entrypoint.build_app
    assert len(inspect.signature(builder).parameters) == 1  # what Ray Serve requires


def test_two_profiles_serving_one_model_id_are_refused() -> None:
    a = load_profile("mixtral-8x22b-h100x8", CONFIGS)
    b = load_profile("mixtral-8x22b-h100x8-fp8", CONFIGS)
    with pytest.raises(ValueError, match="model_id served by more than one profile"):
        serve_config([a, b])


def test_build_app_builds_what_llmplat_serve_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "models" / "mixtral"
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    profile = load_profile("mixtral-8x22b-h100x8", CONFIGS).model_copy(
        update={"source": str(weights)}
    )
    teams = tmp_path / "teams.yaml"
    teams.write_text("teams:\n  - {name: ci, priority_class: batch, max_tokens_cap: 64}\n")
    for key, value in {
        "LLMPLAT_HOME": str(tmp_path / "home"),
        "LLMPLAT_MODE": "production",
        "LLMPLAT_TEAMS_FILE": str(teams),
        "LLMPLAT_KEYSTORE__PATH": str(tmp_path / "keys.yaml"),
        "LLMPLAT_GATEWAY__RAY_RESOURCE": "llmplat_gateway",
    }.items():
        monkeypatch.setenv(key, value)
    built: dict[str, Any] = {}

    def capture(models, settings, *, secrets_from_environment):
        built.update(models=models, settings=settings, secrets=secrets_from_environment)
        return "application"

    monkeypatch.setattr(entrypoint, "build_application", capture)
    args = serve_config([profile])["applications"][0]["args"]
    assert entrypoint.build_app(args) == "application"
    (model,) = built["models"]
    settings: Settings = built["settings"]
    assert settings.mode == "production" and settings.gateway.ray_resource == "llmplat_gateway"
    assert model.model_id == "mixtral-8x22b-instruct" and model.model_path == str(weights)
    # What the profile file says, as the cluster's LLMConfig carries it (values, not a second
    # call of the same builder).
    cfg = model.llm_config
    kwargs = cfg.engine_kwargs
    assert kwargs["tensor_parallel_size"] == 8 and kwargs["enable_expert_parallel"] is True
    assert kwargs["max_model_len"] == 65536 and kwargs["max_num_seqs"] == 128
    assert kwargs["tokenizer_mode"] == "mistral" and kwargs["tool_call_parser"] == "mistral"
    assert kwargs["gpu_memory_utilization"] == 0.92
    assert cfg.placement_group_config == {
        "bundle_per_worker": {"CPU": 1, "GPU": 1},
        "strategy": "STRICT_PACK",
    }
    auto = cfg.deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 4)
    assert cfg.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    # The head builds without secrets: each gateway replica reads its own and applies the
    # declared teams (with_own_secrets), so nothing was written to the key store here.
    assert built["secrets"] is True
    assert not (tmp_path / "keys.yaml").exists()


def test_gateway_replica_reads_its_own_secrets_and_applies_teams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmplat.auth.file_store import FileKeyStore
    from llmplat.gateway.state import GatewayConfig
    from llmplat.serving.builder import gateway_config
    from llmplat.serving.gateway_deployment import with_own_secrets

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "admin-token").write_text("a" * 40 + "\n")
    (secrets / "redis-url").write_text("redis://llmplat:pw@redis:6379/0\n")
    teams = tmp_path / "teams.yaml"
    teams.write_text("teams:\n  - {name: ci, priority_class: batch, max_tokens_cap: 64}\n")
    for key, value in {
        "LLMPLAT_HOME": str(tmp_path / "home"),
        "LLMPLAT_MODE": "production",
        "LLMPLAT_QUOTAS__BACKEND": "redis",
        "LLMPLAT_TEAMS_FILE": str(teams),
        "LLMPLAT_KEYSTORE__PATH": str(tmp_path / "keys.yaml"),
    }.items():
        monkeypatch.setenv(key, value)
    head = Settings()  # the head pod: no secret files
    config = gateway_config([], head, secrets_from_environment=True)
    assert isinstance(config, GatewayConfig) and config.admin_token is None
    assert config.quotas.redis_url is None and "pw" not in repr(config)
    monkeypatch.setenv("LLMPLAT_ADMIN_TOKEN_FILE", str(secrets / "admin-token"))
    monkeypatch.setenv("LLMPLAT_QUOTAS__REDIS_URL_FILE", str(secrets / "redis-url"))
    own = with_own_secrets(config)  # in a gateway pod
    assert own.admin_token is not None and own.admin_token.get_secret_value() == "a" * 40
    assert own.quotas.redis_url is not None
    assert own.quotas.redis_url.get_secret_value() == "redis://llmplat:pw@redis:6379/0"
    assert FileKeyStore(tmp_path / "keys.yaml").load().teams["ci"].max_tokens_cap == 64
