"""Model shapes → parameters, weight bytes, KV cache: checked against published facts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmplat.models.tiny import TinyModelSpec, _tensor_shapes
from llmplat.planner.geometry import GeometryError, ModelGeometry
from llmplat.planner.source import builtin_geometry

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module")
def mixtral() -> ModelGeometry:
    data = json.loads((CONFIGS / "architectures" / "mixtral-8x22b.json").read_text())
    return ModelGeometry.from_hf_config(data, name="mixtral-8x22b")


def test_mixtral_8x22b_has_141b_parameters_39b_active(mixtral: ModelGeometry) -> None:
    assert mixtral.total_params == pytest.approx(141e9, rel=0.01)
    assert mixtral.active_params == pytest.approx(39e9, rel=0.02)


def test_mixtral_8x22b_weighs_282_gb_in_bf16_and_141_gb_in_fp8(mixtral: ModelGeometry) -> None:
    assert mixtral.weight_bytes("bf16") == pytest.approx(282e9, rel=0.01)
    assert mixtral.weight_bytes("fp8") == pytest.approx(141e9, rel=0.01)
    # fp8 quantizes the projections only: embeddings, head, norms and router stay bf16
    unquantized = 2 * (mixtral.embedding_params + mixtral.lm_head_params)
    assert mixtral.weight_bytes("fp8") > mixtral.total_params + unquantized / 2


def test_mixtral_8x22b_kv_cache_is_0_23_mb_per_token_in_bf16(mixtral: ModelGeometry) -> None:
    per_token = mixtral.kv_bytes_per_token("bf16")
    assert per_token == 2 * 56 * 8 * 128 * 2  # K and V, 56 layers, 8 KV heads of 128, 2 bytes
    assert per_token / 1e6 == pytest.approx(0.23, abs=0.005)
    assert mixtral.kv_bytes_per_token("fp8") == per_token // 2


def test_dense_model_matches_mistral_7b_parameter_count() -> None:
    # Mistral-7B-v0.1's config.json: 7,241,732,096 parameters as published
    g = ModelGeometry.from_hf_config(
        {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
        }
    )
    assert not g.is_moe
    assert g.total_params == 7_241_732_096
    assert g.active_params == g.total_params


def test_tiny_geometry_counts_exactly_the_tensors_the_builder_writes() -> None:
    g = builtin_geometry("tiny-mixtral")
    shapes = _tensor_shapes(TinyModelSpec())
    assert g.total_params == sum(math.prod(s) for s in shapes.values())
    assert g.weight_bytes("bf16") == 2 * g.total_params
    assert g.kv_tokens_per_sequence(4096) == TinyModelSpec().sliding_window


def test_tied_embeddings_drop_the_output_head() -> None:
    base = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 1000,
        "max_position_embeddings": 512,
    }
    untied = ModelGeometry.from_hf_config(base)
    tied = ModelGeometry.from_hf_config({**base, "tie_word_embeddings": True})
    assert untied.total_params - tied.total_params == 1000 * 64
    assert untied.head_dim == 16 and untied.num_kv_heads == 4  # defaults: hidden/heads, heads


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "'hidden_size'"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"num_key_value_heads": 5}, "not a multiple of 5 KV heads"),
        ({"num_local_experts": 8, "num_experts_per_tok": 9}, "num_experts_per_tok"),
    ],
)
def test_inconsistent_configs_are_refused_naming_the_field(change: dict, message: str) -> None:
    data = json.loads((CONFIGS / "architectures" / "mixtral-8x22b.json").read_text())
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(GeometryError, match=message):
        ModelGeometry.from_hf_config(data)
