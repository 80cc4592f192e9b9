"""Model profile → ``ray.serve.llm.LLMConfig``: the one translation into Ray Serve and vLLM."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.serve.llm import LLMConfig

from llmplat.config.profiles import BUILTIN_PREFIX, ModelProfile
from llmplat.engine.placement import NODES_KEY, placement_plan, rank_core_lists
from llmplat.settings import CpuEngineSettings, Settings

BUILTIN_MODELS = ("tiny-mixtral",)


class ModelSourceError(ValueError):
    """The weights a profile names cannot be found."""


def resolve_model_source(
    profile: ModelProfile,
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Local path of the profile's weights, building a builtin model on first use."""
    if profile.is_builtin:
        name = profile.source.removeprefix(BUILTIN_PREFIX)
        if name != "tiny-mixtral":
            raise ModelSourceError(
                f"profile {profile.name!r}: unknown builtin model {name!r}; "
                f"known: {', '.join(BUILTIN_MODELS)}"
            )
        from llmplat.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model(settings.models_dir, progress=progress))
    path = Path(profile.source).expanduser()
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"profile {profile.name!r}: no Hugging Face checkpoint at {path} "
            "(config.json missing); mount the weights there or change `source`"
        )
    return str(path)


def engine_kwargs(profile: ModelProfile) -> dict[str, Any]:
    """The vLLM engine arguments a profile stands for."""
    eng = profile.engine
    kwargs: dict[str, Any] = {
        "dtype": eng.dtype,
        "tensor_parallel_size": eng.tensor_parallel_size,
        "pipeline_parallel_size": eng.pipeline_parallel_size,
        "enable_expert_parallel": eng.enable_expert_parallel,
        "max_model_len": eng.max_model_len,
        "max_num_seqs": eng.max_num_seqs,
        "enable_prefix_caching": eng.enable_prefix_caching,
        "scheduling_policy": eng.scheduling_policy,
        "enforce_eager": eng.enforce_eager,
        "kv_cache_dtype": eng.kv_cache_dtype,
        "tokenizer_mode": eng.tokenizer_mode,
    }
    if eng.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = eng.max_num_batched_tokens
    if eng.quantization is not None:
        kwargs["quantization"] = eng.quantization
    if profile.accelerator.kind == "gpu":
        kwargs["gpu_memory_utilization"] = eng.gpu_memory_utilization
    if profile.tokenizer:
        kwargs["tokenizer"] = profile.tokenizer
    kwargs |= tool_kwargs(profile)
    kwargs.update(eng.extra)
    return kwargs


def tool_kwargs(profile: ModelProfile) -> dict[str, Any]:
    """vLLM's tool-calling (frontend) and structured-output (engine) arguments; Ray Serve LLM
    hands the frontend ones to vLLM's OpenAI serving layer."""
    tools = profile.tools
    kwargs: dict[str, Any] = {
        "structured_outputs_config": tools.structured_outputs.model_dump(),
    }
    if tools.tool_call_parser is not None:
        kwargs["tool_call_parser"] = tools.tool_call_parser
        kwargs["enable_auto_tool_choice"] = tools.auto_tool_choice
    return kwargs


def omp_threads_bind(cpu: CpuEngineSettings, cores: int) -> str:
    """The cores an engine's OpenMP threads are pinned to: 'auto' is every core but the
    ``reserved_cpus`` last ones. vLLM's scheduler process runs beside those threads and
    needs a core of its own (vLLM warns below one); without it, and whenever anything else
    on the host takes a bound core, each step waits for the slowest thread (docs:
    Benchmarks has the measured effect)."""
    if cpu.omp_threads_bind != "auto":
        return cpu.omp_threads_bind
    last = max(cores - cpu.reserved_cpus, 1) - 1
    return "0" if last == 0 else f"0-{last}"


def ranks_threads_bind(cpu: CpuEngineSettings, cores: int, local_ranks: int) -> str:
    """The binding of ``local_ranks`` engine ranks on one host: one core list per rank
    (vLLM's ``|`` syntax). 'auto' splits the cores :func:`omp_threads_bind` would use; when
    there are fewer of them than ranks the reserved cores are used too, rather than putting
    two ranks' threads on one core (they step in lockstep)."""
    if local_ranks == 1 or cpu.omp_threads_bind != "auto":
        return omp_threads_bind(cpu, cores)
    usable = list(range(max(cores - cpu.reserved_cpus, 1)))
    if len(usable) < local_ranks:
        usable = list(range(cores))
    return rank_core_lists(usable, local_ranks)


def cpu_engine_env(profile: ModelProfile, settings: Settings) -> dict[str, str]:
    """Environment of a vLLM-CPU engine: thread binding, KV-cache size, offline caches.
    On a local multi-node cluster each node's engine ranks bind to that node's cores instead
    (llmplat.engine.multinode)."""
    local_ranks = placement_plan(profile).ranks_per_node
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(profile.accelerator.kv_cache_space_gib),
        "VLLM_CPU_OMP_THREADS_BIND": ranks_threads_bind(
            settings.cpu, settings.cpu.cores or os.cpu_count() or 1, local_ranks
        ),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": str(settings.cpu.reserved_cpus),
    }


def offline_env(settings: Settings) -> dict[str, str]:
    """Keep every cache under the platform's home and never reach a model hub."""
    cache = settings.cache_dir
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(cache / "huggingface"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


POLICY_PATH = "llmplat.autoscaling.policy:EngineSignalsPolicy"
DRAIN_CHECK_S = 1.0
"""How often a stopping replica checks whether its last request finished."""


def autoscaling_config(profile: ModelProfile) -> dict[str, Any]:
    """Ray Serve's ``autoscaling_config`` of a profile whose replica count may change."""
    auto = profile.serving.autoscaling
    config: dict[str, Any] = {
        "min_replicas": auto.min_replicas,
        "max_replicas": auto.max_replicas,
        "target_ongoing_requests": auto.target_ongoing_requests,
        "upscale_delay_s": auto.upscale_delay_s,
        "downscale_delay_s": auto.downscale_delay_s,
        "look_back_period_s": auto.look_back_period_s,
    }
    if auto.initial_replicas is not None:
        config["initial_replicas"] = auto.initial_replicas
    if auto.scale_to_zero_delay_s is not None:
        config["downscale_to_zero_delay_s"] = auto.scale_to_zero_delay_s
    if auto.policy == "engine_signals":
        from llmplat.autoscaling.policy import Objective, policy_kwargs

        objective = Objective(
            model_id=profile.model_id,
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            max_num_seqs=profile.engine.max_num_seqs,
            target_waiting_requests=auto.target_waiting_requests,
            target_kv_cache_usage=auto.target_kv_cache_usage,
            target_ttft_s=auto.target_ttft_s,
            target_ongoing_requests=auto.target_ongoing_requests,
            scale_down_below=auto.scale_down_below,
        )
        config["policy"] = {
            "policy_function": POLICY_PATH,
            "policy_kwargs": policy_kwargs(objective),
        }
    return config


def deployment_config(profile: ModelProfile) -> dict[str, Any]:
    serving = profile.serving
    auto = serving.autoscaling
    # On CPU the replica actor must not hold a core of its own, or it never
    # schedules next to the engine on a small host.
    replica_cpus = 0 if profile.accelerator.kind == "cpu" else 1
    options: dict[str, Any] = {
        "max_ongoing_requests": serving.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": replica_cpus},
        # A replica being stopped (scale-down, upgrade, shutdown) leaves the routers at
        # once and finishes its requests within the grace period.
        "graceful_shutdown_timeout_s": serving.drain_grace_s,
        "graceful_shutdown_wait_loop_s": DRAIN_CHECK_S,
    }
    if auto.fixed:
        # A fixed size: no autoscaling metrics polled for nothing.
        options["num_replicas"] = auto.min_replicas
    else:
        options["autoscaling_config"] = autoscaling_config(profile)
    return options


def build_llm_config(profile: ModelProfile, settings: Settings, model_path: str) -> LLMConfig:
    """The ``LLMConfig`` of one model deployment (one replica = one engine = one PG)."""
    env = offline_env(settings)
    plan = placement_plan(profile)
    if profile.accelerator.kind == "cpu":
        env |= cpu_engine_env(profile, settings)
    return LLMConfig(
        model_loading_config={"model_id": profile.model_id, "model_source": model_path},
        engine_kwargs=engine_kwargs(profile),
        accelerator_type=profile.accelerator.accelerator_type,
        accelerator_config={"kind": profile.accelerator.kind},
        placement_group_config=plan.placement_group_config(),
        deployment_config=deployment_config(profile),
        runtime_env={"env_vars": env},
        experimental_configs={
            "stream_batching_interval_ms": profile.serving.stream_batching_interval_ms,
            NODES_KEY: plan.nodes,
        },
        log_engine_metrics=True,
    )
