"""On real GPUs: vLLM's own config validation accepts the tiny model on CUDA with the
priority scheduler and prefix caching that the profiles use."""

from __future__ import annotations

import pytest

from llmplat.config.loader import load_profile
from llmplat.engine.llm_config import build_llm_config, resolve_model_source
from llmplat.settings import Settings

pytestmark = [pytest.mark.gpu(count=1), pytest.mark.timeout(900)]


def test_tiny_model_generates_on_one_gpu(tmp_path) -> None:
    from vllm import LLM, SamplingParams

    settings = Settings(home=tmp_path)
    profile = load_profile("tiny-mixtral-cpu", settings.config_dir)
    path = resolve_model_source(profile, settings)
    gpu_profile = profile.model_copy(
        update={"accelerator": profile.accelerator.model_copy(update={"kind": "gpu"})}
    )
    kwargs = build_llm_config(gpu_profile, settings, path).engine_kwargs
    kwargs.pop("kv_cache_dtype", None)
    llm = LLM(model=path, gpu_memory_utilization=0.3, **kwargs)
    out = llm.generate(["hello"] * 8, SamplingParams(max_tokens=16, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 16 for o in out)
