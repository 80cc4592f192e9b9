"""The sharded profiles on real GPUs (`make gpu-check`): the tiny model's TP 2, PP 2 and
TP 2 + expert-parallel layouts, run by vLLM's Ray executor as the 8x22B profiles are, give
the unsharded engine's greedy tokens wherever its top two log-probabilities are apart."""

from __future__ import annotations

import pytest

from llmplat.config.loader import load_profile
from llmplat.engine.llm_config import build_llm_config, resolve_model_source
from llmplat.settings import Settings

pytestmark = [pytest.mark.gpu(count=2), pytest.mark.timeout(1200)]

PROMPTS = ["hello world", "def add(a, b):\n    return", "The capital of France is", "1, 2, 3,"]
TOLERANCE = 0.05


def _gpu_kwargs(name: str, settings: Settings, **update) -> tuple[str, dict]:
    profile = load_profile(name, settings.config_dir)
    path = resolve_model_source(profile, settings)
    gpu = profile.model_copy(
        update={
            "accelerator": profile.accelerator.model_copy(update={"kind": "gpu"}),
            "engine": profile.engine.model_copy(update=update),
        }
    )
    kwargs = build_llm_config(gpu, settings, path).engine_kwargs
    kwargs.pop("kv_cache_dtype", None)
    return path, kwargs


def _greedy(path: str, kwargs: dict) -> list:
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, gpu_memory_utilization=0.3, distributed_executor_backend="ray",
              **kwargs)
    try:
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=0, logprobs=2))
        return [o.outputs[0] for o in outs]
    finally:
        del llm


@pytest.mark.parametrize(
    ("profile", "update"),
    [
        ("tiny-mixtral-cpu-tp2", {}),
        ("tiny-mixtral-cpu-pp2", {}),
        ("tiny-mixtral-cpu-tp2", {"enable_expert_parallel": True}),
    ],
    ids=["tp2", "pp2", "tp2-ep"],
)
def test_sharded_layout_matches_the_unsharded_engine(tmp_path, profile: str, update) -> None:
    settings = Settings(home=tmp_path)
    path, base_kwargs = _gpu_kwargs("tiny-mixtral-cpu-unsharded", settings)
    _, kwargs = _gpu_kwargs(profile, settings, **update)
    base, sharded = _greedy(path, base_kwargs), _greedy(path, kwargs)
    for b, s in zip(base, sharded, strict=True):
        for i, (bt, st) in enumerate(zip(b.token_ids, s.token_ids, strict=True)):
            top = sorted((lp.logprob for lp in b.logprobs[i].values()), reverse=True)
            if len(top) > 1 and top[0] - top[1] > TOLERANCE:
                assert st == bt
            if st != bt:
                break
