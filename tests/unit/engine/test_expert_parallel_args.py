"""The GPU profiles' expert-parallel engine arguments pass vLLM's own parsing and validation.

vLLM-CPU cannot run expert parallelism (its CPU fused-MoE kernel is handed global expert ids
but only the rank's local experts, and crashes), so these profiles are checked here, on the
CPU build, as deep as vLLM's own validation goes:

1. the arguments as ``vllm serve`` flags, through vLLM's ``FlexibleArgumentParser`` and
   ``AsyncEngineArgs.add_cli_args`` / ``from_cli_args``;
2. ``ParallelConfig`` built from them (its pydantic field types and validators);
3. ``ModelConfig`` built from the profile's ``hf_config`` shapes, then
   ``ModelConfig.verify_with_parallel_config``, the platform-independent cross-check
   ``VllmConfig.__post_init__`` runs (heads divisible by TP, a MoE model when EP is on);
4. ``AsyncEngineArgs.create_engine_config``, the whole config stage. On this build its
   platform hooks are vLLM-CPU's (device ``cpu``, ``CPUWorker``), not CUDA's: only the
   platform-independent results are asserted. vLLM-CPU has no expert-parallel guard there;
   should one appear, this test fails and belongs in tests/gpu.

Invalid combinations vLLM itself rejects are shown rejected at each level.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import yaml

from llmplat.config.loader import load_profile
from llmplat.config.profiles import ModelProfile
from llmplat.engine.llm_config import build_llm_config, engine_kwargs
from llmplat.settings import Settings

MODELS_DIR = Path(__file__).parents[3] / "configs" / "models"
EP_PROFILES = sorted(
    p.stem
    for p in MODELS_DIR.glob("*.yaml")
    if (yaml.safe_load(p.read_text()).get("engine") or {}).get("enable_expert_parallel")
)
PARALLEL_KEYS = ("tensor_parallel_size", "pipeline_parallel_size", "enable_expert_parallel")


@pytest.fixture(autouse=True)
def _offline_and_env_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No model hub; and vLLM-CPU's platform hook (create_engine_config) sets process-wide
    variables (LD_PRELOAD, LOCAL_WORLD_SIZE, ...) that must not leak into other tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _profile(settings: Settings, name: str) -> ModelProfile:
    return load_profile(name, settings.config_dir)


def _shapes_dir(tmp_path: Path, settings: Settings, profile: ModelProfile, **changes: Any) -> Path:
    """A weightless model folder: the profile's ``hf_config`` as config.json (what vLLM's
    ModelConfig reads), with ``changes`` applied (None drops a key)."""
    assert profile.hf_config, f"{profile.name}: no hf_config to validate shapes against"
    config = json.loads((settings.config_dir / "models" / profile.hf_config).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _engine_args_kwargs(profile: ModelProfile) -> dict[str, Any]:
    """The profile's engine kwargs that are AsyncEngineArgs fields with a scalar value (the
    frontend tool-calling ones go to vLLM's OpenAI layer; structured_outputs_config is
    checked in tests/unit/config/test_profiles.py)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    return {
        k: v
        for k, v in engine_kwargs(profile).items()
        if k in fields and v is not None and not isinstance(v, dict | list)
    }


def _cli_flags(kwargs: dict[str, Any]) -> list[str]:
    """``vllm serve`` flags: --tensor-parallel-size 8, --enable-expert-parallel, --no-...."""
    argv: list[str] = []
    for key, value in kwargs.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def _parser():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(prog="vllm serve"))


def test_the_expert_parallel_gpu_profiles_are_found(settings: Settings) -> None:
    assert "mixtral-8x22b-h100x8" in EP_PROFILES
    for name in EP_PROFILES:
        profile = _profile(settings, name)
        assert profile.accelerator.kind == "gpu"
        assert profile.engine.enable_expert_parallel is True
        assert profile.engine.tensor_parallel_size >= 2


@pytest.mark.parametrize("name", EP_PROFILES)
def test_arguments_parse_as_vllm_serve_flags(tmp_path, settings: Settings, name: str) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    profile = _profile(settings, name)
    kwargs = _engine_args_kwargs(profile)
    assert set(PARALLEL_KEYS) <= set(kwargs)
    model = _shapes_dir(tmp_path, settings, profile)
    argv = ["--model", str(model), *_cli_flags(kwargs)]
    assert "--enable-expert-parallel" in argv
    parsed = AsyncEngineArgs.from_cli_args(_parser().parse_args(argv))
    assert {k: getattr(parsed, k) for k in kwargs} == kwargs
    assert parsed.enable_expert_parallel is True
    assert parsed.tensor_parallel_size == profile.engine.tensor_parallel_size
    assert parsed.expert_placement_strategy == "linear"  # vLLM's default, nothing overrides it


def test_vllm_cli_rejects_an_unknown_expert_placement_strategy(tmp_path, settings, capsys) -> None:
    model = _shapes_dir(tmp_path, settings, _profile(settings, EP_PROFILES[0]))
    parser = _parser()
    argv = ["--model", str(model), "--enable-expert-parallel"]
    for strategy in ("linear", "round_robin"):
        assert parser.parse_args([*argv, "--expert-placement-strategy", strategy])
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*argv, "--expert-placement-strategy", "diagonal"])
    assert exc.value.code == 2
    assert "invalid choice: 'diagonal'" in capsys.readouterr().err


def _parallel_config(kwargs: dict[str, Any], **extra: Any):
    from vllm.config import ParallelConfig

    return ParallelConfig(
        **{k: kwargs[k] for k in PARALLEL_KEYS},
        # Ray Serve LLM runs GPU engines with vLLM's Ray executor (see the last test).
        distributed_executor_backend="ray",
        **extra,
    )


@pytest.mark.parametrize("name", EP_PROFILES)
def test_parallel_config_accepts_the_profile(settings: Settings, name: str) -> None:
    profile = _profile(settings, name)
    parallel = _parallel_config(engine_kwargs(profile), is_moe_model=True)
    assert parallel.enable_expert_parallel is True
    assert parallel.world_size == profile.engine.gpus_per_replica
    assert parallel.world_size == len(
        build_llm_config(profile, settings, "/m").get_engine_config().placement_bundles
    )
    assert parallel.expert_placement_strategy == "linear"
    assert parallel.all2all_backend == "allgather_reducescatter"
    assert parallel.enable_eplb is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"expert_placement_strategy": "diagonal"}, "Input should be 'linear' or 'round_robin'"),
        ({"eplb_config": {"num_redundant_experts": 8}}, "EPLB is not enabled"),
    ],
)
def test_parallel_config_rejects_what_vllm_rejects(
    settings: Settings, extra: dict[str, Any], message: str
) -> None:
    kwargs = engine_kwargs(_profile(settings, EP_PROFILES[0]))
    with pytest.raises(ValueError, match=message):
        _parallel_config(kwargs, is_moe_model=True, **extra)


def _model_config(model: Path, kwargs: dict[str, Any]):
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(model=str(model), **kwargs).create_model_config()


@pytest.mark.parametrize("name", EP_PROFILES)
def test_model_config_verifies_expert_parallel_on_the_real_shapes(
    tmp_path, settings: Settings, name: str
) -> None:
    profile = _profile(settings, name)
    kwargs = _engine_args_kwargs(profile)
    model_config = _model_config(_shapes_dir(tmp_path, settings, profile), kwargs)
    assert model_config.is_moe
    assert model_config.max_model_len == profile.engine.max_model_len
    parallel = _parallel_config(kwargs, is_moe_model=model_config.is_moe)
    model_config.verify_with_parallel_config(parallel)  # raises on a bad layout


def test_model_config_rejects_expert_parallel_on_a_dense_model(tmp_path, settings) -> None:
    """The same shapes without experts: vLLM refuses EP, and accepts the layout without it."""
    profile = _profile(settings, EP_PROFILES[0])
    kwargs = _engine_args_kwargs(profile)
    dense = _shapes_dir(
        tmp_path,
        settings,
        profile,
        architectures=["MistralForCausalLM"],
        model_type="mistral",
        num_local_experts=None,
        num_experts_per_tok=None,
    )
    model_config = _model_config(dense, kwargs)
    assert not model_config.is_moe
    with pytest.raises(ValueError, match="Number of experts in the model must be greater than 0"):
        model_config.verify_with_parallel_config(_parallel_config(kwargs, is_moe_model=False))
    model_config.verify_with_parallel_config(
        _parallel_config({**kwargs, "enable_expert_parallel": False}, is_moe_model=False)
    )


def test_model_config_rejects_a_tensor_parallel_size_the_heads_do_not_divide(
    tmp_path, settings
) -> None:
    profile = _profile(settings, EP_PROFILES[0])
    kwargs = _engine_args_kwargs(profile)
    model_config = _model_config(_shapes_dir(tmp_path, settings, profile), kwargs)
    heads = model_config.model_arch_config.total_num_attention_heads
    bad_tp = next(n for n in range(3, heads) if heads % n)
    with pytest.raises(
        ValueError, match=f"must be divisible by tensor parallel size \\({bad_tp}\\)"
    ):
        model_config.verify_with_parallel_config(
            _parallel_config({**kwargs, "tensor_parallel_size": bad_tp}, is_moe_model=True)
        )


@pytest.mark.parametrize("name", EP_PROFILES)
def test_create_engine_config_accepts_the_profile(tmp_path, settings: Settings, name: str) -> None:
    """The whole config stage as Ray Serve LLM enters it (with its executor backend)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    profile = _profile(settings, name)
    kwargs = _engine_args_kwargs(profile)
    model = _shapes_dir(tmp_path, settings, profile)
    ray_kwargs = build_llm_config(profile, settings, str(model)).get_engine_config()
    backend = ray_kwargs.get_initialization_kwargs()["distributed_executor_backend"]
    assert backend == "ray"
    config = AsyncEngineArgs(
        model=str(model), distributed_executor_backend=backend, **kwargs
    ).create_engine_config()
    parallel = config.parallel_config
    assert parallel.enable_expert_parallel is True
    assert parallel.tensor_parallel_size == profile.engine.tensor_parallel_size
    assert parallel.pipeline_parallel_size == profile.engine.pipeline_parallel_size
    assert parallel.world_size == profile.engine.gpus_per_replica
    assert config.model_config.is_moe
    assert config.model_config.max_model_len == profile.engine.max_model_len
    assert config.scheduler_config.max_num_seqs == profile.engine.max_num_seqs
    assert config.cache_config.gpu_memory_utilization == profile.engine.gpu_memory_utilization
