"""Build the Serve application: one LLMServer deployment per model, the Gateway in front."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from llmplat.config.loader import LoadedPlatform
from llmplat.config.profiles import ModelProfile, drain_seconds
from llmplat.engine.llm_config import build_llm_config, resolve_model_source
from llmplat.gateway.state import GatewayConfig, GatewayModel
from llmplat.local.cluster import LOCAL_HEAD_RESOURCE
from llmplat.serving.gateway_deployment import Gateway
from llmplat.serving.llm_server import PlatformLLMServer
from llmplat.settings import Settings


@dataclass(frozen=True)
class BuiltModel:
    model_id: str
    model_path: str
    llm_config: LLMConfig
    profile: ModelProfile


def build_models(
    platform: LoadedPlatform,
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> list[BuiltModel]:
    """Resolve every profile's weights (building the builtin model if needed)."""
    out = []
    for profile in platform.profiles:
        path = resolve_model_source(profile, settings, progress)
        config = build_llm_config(profile, settings, path)
        out.append(BuiltModel(profile.model_id, path, config, profile))
    return out


def gateway_config(
    models: list[BuiltModel], settings: Settings, *, secrets_from_environment: bool = False
) -> GatewayConfig:
    quotas = settings.quotas
    if secrets_from_environment:
        quotas = quotas.model_copy(update={"redis_url": None})
    return GatewayConfig(
        models=tuple(
            GatewayModel(
                model_id=m.model_id,
                max_model_len=int(m.llm_config.engine_kwargs["max_model_len"]),
                model_dir=m.model_path,
                autoscaled=not m.profile.serving.autoscaling.fixed,
                min_replicas=m.profile.serving.autoscaling.min_replicas,
                scale_from_zero_wait_s=m.profile.serving.autoscaling.scale_from_zero_wait_s,
                auto_tool_choice=m.profile.tools.tool_call_parser is not None
                and m.profile.tools.auto_tool_choice,
                tensor_parallel=m.profile.engine.tensor_parallel_size,
            )
            for m in models
        ),
        dev_api_key=None if secrets_from_environment else settings.dev_api_key,
        gateway=settings.gateway,
        admin_token=None if secrets_from_environment else settings.admin_token,
        keystore=settings.keystore,
        keystore_path=str(settings.keystore_path),
        quotas=quotas,
        audit_sink=settings.audit_sink,
        secrets_from_environment=secrets_from_environment,
    )


def build_application(
    models: list[BuiltModel],
    settings: Settings,
    *,
    engine_cls: type | None = None,
    secrets_from_environment: bool = False,
) -> Application:
    """The whole app. ``engine_cls`` swaps vLLM for another engine (the fake in tests)."""
    bind_kwargs: dict[str, Any] = {"engine_cls": engine_cls} if engine_cls else {}
    handles = {
        m.model_id: build_llm_deployment(
            m.llm_config, bind_kwargs=bind_kwargs, deployment_cls=PlatformLLMServer
        )
        for m in models
    }
    actor_options: dict[str, Any] = {"num_cpus": 0}
    resource = settings.gateway.ray_resource
    if resource is None and settings.local.nodes > 1 and not settings.ray_address:
        resource = LOCAL_HEAD_RESOURCE  # gateways on the head of a local multi-node cluster
    if resource:
        actor_options["resources"] = {resource: 1}
    gateway = serve.deployment(
        Gateway,
        name="Gateway",
        num_replicas=settings.gateway.replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=10_000,
        graceful_shutdown_timeout_s=drain_seconds(m.profile for m in models),
        graceful_shutdown_wait_loop_s=1.0,
    )
    config = gateway_config(models, settings, secrets_from_environment=secrets_from_environment)
    return gateway.bind(config, handles)
