"""Model profiles load, map onto LLMConfig, and refuse bad input naming file and field."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from llmplat.config.loader import ConfigError, load_platform, load_profile
from llmplat.engine.llm_config import build_llm_config, omp_threads_bind
from llmplat.settings import CpuEngineSettings, Settings

PROFILES = sorted(p.stem for p in (Path(__file__).parents[3] / "configs" / "models").glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_shipped_profile_loads_and_maps(settings: Settings, name: str) -> None:
    profile = load_profile(name, settings.config_dir)
    cfg = build_llm_config(profile, settings, "/models/x")
    engine = cfg.get_engine_config()
    assert len(engine.placement_bundles) == profile.engine.gpus_per_replica
    assert cfg.engine_kwargs["scheduling_policy"] == "priority"
    assert cfg.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("name", PROFILES)
def test_tool_calling_and_structured_outputs_reach_vllm(settings: Settings, name: str) -> None:
    from vllm.config import StructuredOutputsConfig
    from vllm.entrypoints.launchers.cli_args import FrontendArgs
    from vllm.tool_parsers import ToolParserManager

    engine = build_llm_config(
        load_profile(name, settings.config_dir), settings, "/models/x"
    ).get_engine_config()
    # Ray Serve LLM hands these to vLLM's OpenAI layer, as `vllm serve` flags would.
    frontend = FrontendArgs(**engine.frontend_kwargs)
    assert frontend.enable_auto_tool_choice and frontend.tool_call_parser == "mistral"
    assert ToolParserManager.get_tool_parser("mistral")
    structured = StructuredOutputsConfig(**engine.engine_kwargs["structured_outputs_config"])
    assert structured.backend == "xgrammar" and structured.disable_any_whitespace
    # vLLM renders chats (tools, tool results) with mistral_common, as the gateway counts them.
    assert engine.engine_kwargs["tokenizer_mode"] == "mistral"


def test_tools_off_without_a_parser(tmp_path, settings: Settings) -> None:
    data = _tiny(settings)
    del data["tools"]
    kwargs = build_llm_config(
        load_profile(str(_write(tmp_path, data)), settings.config_dir), settings, "/m"
    ).engine_kwargs
    assert "tool_call_parser" not in kwargs and "enable_auto_tool_choice" not in kwargs
    assert kwargs["structured_outputs_config"] == {
        "backend": "auto",
        "disable_any_whitespace": False,
    }


def test_tiny_profile_is_cpu_with_thread_binding(settings: Settings) -> None:
    cfg = build_llm_config(load_profile("tiny-mixtral-cpu", settings.config_dir), settings, "/m")
    assert cfg.accelerator_config.kind == "cpu"
    env = cfg.runtime_env["env_vars"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    assert cfg.deployment_config["ray_actor_options"]["num_cpus"] == 0
    assert cfg.engine_kwargs["max_model_len"] == 4096
    assert cfg.deployment_config["num_replicas"] == 1  # min == max: no autoscaling loop
    assert "autoscaling_config" not in cfg.deployment_config


@pytest.mark.parametrize(
    ("cores", "cpu", "bind"),
    [
        (2, CpuEngineSettings(), "0"),  # one core for the threads, one for everything else
        (8, CpuEngineSettings(), "0-6"),
        (1, CpuEngineSettings(), "0"),  # nothing left to reserve: still one core
        (8, CpuEngineSettings(reserved_cpus=0), "0-7"),
        (8, CpuEngineSettings(reserved_cpus=3), "0-4"),
        (8, CpuEngineSettings(omp_threads_bind="nobind"), "nobind"),
        (8, CpuEngineSettings(omp_threads_bind="2-5"), "2-5"),
    ],
)
def test_auto_binding_leaves_the_reserved_cores_free(
    cores: int, cpu: CpuEngineSettings, bind: str
) -> None:
    assert omp_threads_bind(cpu, cores) == bind


def test_engine_env_binds_as_the_settings_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    settings = Settings(cpu=CpuEngineSettings(reserved_cpus=2))
    profile = load_profile("tiny-mixtral-cpu", settings.config_dir)
    env = build_llm_config(profile, settings, "/m").runtime_env["env_vars"]
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["VLLM_CPU_NUM_OF_RESERVED_CPU"]) == ("0-1", "2")


def test_engine_env_binds_the_declared_cores_not_this_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart builds the engines' environment in the head pod and names the model pod's
    cores (LLMPLAT_CPU__CORES); this machine's core count must not leak in."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    settings = Settings(cpu=CpuEngineSettings(cores=8))
    profile = load_profile("tiny-mixtral-cpu", settings.config_dir)
    env = build_llm_config(profile, settings, "/m").runtime_env["env_vars"]
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-6"


def test_h100x8_is_tp8_expert_parallel_on_one_node(settings: Settings) -> None:
    cfg = build_llm_config(
        load_profile("mixtral-8x22b-h100x8", settings.config_dir), settings, "/m"
    )
    assert cfg.engine_kwargs["tensor_parallel_size"] == 8
    assert cfg.engine_kwargs["enable_expert_parallel"] is True
    engine = cfg.get_engine_config()
    assert engine.placement_strategy == "STRICT_PACK"
    assert all(b["GPU"] == 1 for b in engine.placement_bundles)
    assert cfg.accelerator_type == "H100"


def test_fp8_is_two_tp4_replicas_per_node(settings: Settings) -> None:
    p = load_profile("mixtral-8x22b-h100x8-fp8", settings.config_dir)
    cfg = build_llm_config(p, settings, "/m")
    assert cfg.engine_kwargs["quantization"] == "fp8"
    assert cfg.engine_kwargs["tensor_parallel_size"] == 4
    auto = cfg.deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (2, 8)
    assert 2 * p.engine.gpus_per_replica == p.hardware.gpus_per_node


def test_two_node_profile_is_tp4_pp2_spanning_nodes(settings: Settings) -> None:
    p = load_profile("mixtral-8x22b-l40s-2node", settings.config_dir)
    cfg = build_llm_config(p, settings, "/m")
    assert (
        cfg.engine_kwargs["tensor_parallel_size"],
        cfg.engine_kwargs["pipeline_parallel_size"],
    ) == (4, 2)
    engine = cfg.get_engine_config()
    assert len(engine.placement_bundles) == 8 and engine.placement_strategy == "PACK"
    assert p.engine.gpus_per_replica == p.hardware.gpus_per_node * p.hardware.nodes


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _tiny(settings: Settings) -> dict:
    return yaml.safe_load((settings.config_dir / "models" / "tiny-mixtral-cpu.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["engine"].update(tensor_parallel_size=0), "engine.tensor_parallel_size"),
        (lambda d: d["engine"].update(max_model_len="long"), "engine.max_model_len"),
        (lambda d: d["engine"].update(dtype="int3"), "engine.dtype"),
        (lambda d: d["engine"].update(bogus=1), "engine.bogus"),
        (lambda d: d.pop("model_id"), "model_id"),
        (
            lambda d: d["engine"].update(enable_expert_parallel=True, tensor_parallel_size=2),
            "enable_expert_parallel",
        ),
        (lambda d: d["engine"].update(extra={"max_model_len": 5}), "extra must not repeat"),
        (lambda d: d["serving"]["autoscaling"].update(min_replicas=3), "min_replicas"),
        (
            lambda d: d["tools"]["structured_outputs"].update(backend="outlines"),
            "disable_any_whitespace needs backend",
        ),
        (lambda d: d["tools"].update(tool_parser="mistral"), "tools.tool_parser"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path, settings, mutate, field: str) -> None:
    data = _tiny(settings)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_profile(str(path), settings.config_dir)
    assert str(path) in str(exc.value)
    assert field in str(exc.value)


def test_invalid_yaml_and_missing_profile(tmp_path, settings) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(str(_write(tmp_path, "engine: [unclosed")), settings.config_dir)
    with pytest.raises(ConfigError, match="not found.*known: .*tiny-mixtral-cpu"):
        load_profile("no-such-profile", settings.config_dir)


def test_platform_rejects_two_profiles_serving_one_model_id(tmp_path, settings) -> None:
    cfg = tmp_path / "platform.yaml"
    cfg.write_text(yaml.safe_dump({"models": ["mixtral-8x22b-h100x8", "mixtral-8x22b-h100x8-fp8"]}))
    with pytest.raises(ConfigError, match="both serve model_id 'mixtral-8x22b-instruct'"):
        load_platform(cfg, settings.config_dir)


def test_local_platform_serves_the_tiny_model(settings) -> None:
    platform = load_platform(settings.config_dir / "local.yaml", settings.config_dir)
    assert [p.model_id for p in platform.profiles] == ["tiny-mixtral"]


def test_autoscale_profiles_render_rays_autoscaling_config(settings: Settings) -> None:
    """What Ray Serve is given: its own AutoscalingConfig accepts it, with our policy
    (importable by the controller) and the profile's objective, delays and drain."""
    from ray.serve.config import AutoscalingConfig

    from llmplat.autoscaling.policy import EngineSignalsPolicy

    p = load_profile("tiny-mixtral-cpu-autoscale", settings.config_dir)
    options = build_llm_config(p, settings, "/m").deployment_config
    assert (options["graceful_shutdown_timeout_s"], options["graceful_shutdown_wait_loop_s"]) == (
        60.0,
        1.0,
    )
    ray_config = AutoscalingConfig(**options["autoscaling_config"])
    assert (ray_config.min_replicas, ray_config.max_replicas) == (1, 2)
    assert (ray_config.upscale_delay_s, ray_config.downscale_delay_s) == (5.0, 20.0)
    policy = ray_config.policy.get_policy()
    assert policy is EngineSignalsPolicy or policy.__name__ == "EngineSignalsPolicy"
    objective = ray_config.policy.policy_kwargs
    assert objective == {
        "model_id": "tiny-mixtral",
        "min_replicas": 1,
        "max_replicas": 2,
        "max_num_seqs": 8,
        "target_waiting_requests": 2.0,
        "target_kv_cache_usage": 0.85,
        "target_ongoing_requests": 32,
        "scale_down_below": 0.6,
    }
    zero = load_profile("tiny-mixtral-cpu-scale-to-zero", settings.config_dir)
    auto = build_llm_config(zero, settings, "/m").deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["downscale_to_zero_delay_s"]) == (0, 20.0)


def test_serve_default_policy_and_fixed_sizes(settings: Settings) -> None:
    p = load_profile("tiny-mixtral-cpu-autoscale", settings.config_dir)
    auto = p.serving.autoscaling.model_copy(update={"policy": "ongoing_requests"})
    ongoing = p.model_copy(update={"serving": p.serving.model_copy(update={"autoscaling": auto})})
    options = build_llm_config(ongoing, settings, "/m").deployment_config
    assert "policy" not in options["autoscaling_config"]  # Ray Serve's default policy
    fixed = load_profile("tiny-mixtral-cpu", settings.config_dir)
    options = build_llm_config(fixed, settings, "/m").deployment_config
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert options["graceful_shutdown_timeout_s"] == fixed.serving.drain_grace_s


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({"target_kv_cache_usage": 1.2}, "less than or equal to 1"),
        ({"scale_down_below": 1.0}, "less than 1"),
        ({"target_waiting_requests": 0}, "greater than 0"),
        ({"policy": "cpu"}, "'engine_signals' or 'ongoing_requests'"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) exceeds max_replicas (2)"),
    ],
)
def test_autoscaling_objectives_are_checked(autoscaling: dict, message: str) -> None:
    from llmplat.config.profiles import AutoscalingSpec

    with pytest.raises(ValueError, match=re.escape(message)):
        AutoscalingSpec(**autoscaling)
