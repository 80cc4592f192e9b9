"""Model shapes from a Hugging Face ``config.json``, and the sizes that follow from them.

Parameter counts, weight bytes and KV-cache bytes per token are computed from the layer
shapes (hidden and intermediate sizes, layers, attention and KV heads, head dim, experts,
vocabulary, tied embeddings), never looked up. Works for Mixtral-style MoE models and for
dense Llama/Mistral-style models (no experts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}

_PROFILE_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "auto": "bf16"}


def normalize_dtype(name: str) -> str:
    """``bfloat16`` → ``bf16``, ``fp8_e4m3`` → ``fp8``; raises on anything unknown."""
    short = _PROFILE_DTYPES.get(name, name)
    if short.startswith("fp8"):
        short = "fp8"
    if short not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPE_BYTES)}")
    return short


class GeometryError(ValueError):
    """A model configuration the planner cannot size (missing or inconsistent fields)."""


def _int(cfg: dict[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise GeometryError(f"config field {key!r} must be a positive integer: {value!r}")
            return value
    if default is None:
        raise GeometryError(f"model config lacks {' or '.join(repr(k) for k in keys)}")
    return default


@dataclass(frozen=True)
class ModelGeometry:
    """The shapes that decide a transformer's memory. ``num_experts`` 0 means dense."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    num_experts: int = 0
    experts_per_token: int = 0
    tie_embeddings: bool = False
    sliding_window: int | None = None

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], name: str = "model") -> ModelGeometry:
        """Read a ``config.json`` dict (Mixtral, Mistral, Llama field names)."""
        hidden = _int(cfg, "hidden_size")
        heads = _int(cfg, "num_attention_heads")
        experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
        geometry = cls(
            name=name,
            hidden_size=hidden,
            intermediate_size=_int(cfg, "intermediate_size"),
            num_layers=_int(cfg, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=_int(cfg, "num_key_value_heads", default=heads),
            head_dim=_int(cfg, "head_dim", default=hidden // heads),
            vocab_size=_int(cfg, "vocab_size"),
            max_position_embeddings=_int(cfg, "max_position_embeddings"),
            num_experts=int(experts),
            experts_per_token=int(cfg.get("num_experts_per_tok") or 0) if experts else 0,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=cfg.get("sliding_window") or None,
        )
        if geometry.num_heads % geometry.num_kv_heads:
            raise GeometryError(
                f"{heads} attention heads are not a multiple of {geometry.num_kv_heads} KV heads"
            )
        if geometry.is_moe and not 1 <= geometry.experts_per_token <= geometry.num_experts:
            raise GeometryError(
                f"num_experts_per_tok must be between 1 and {geometry.num_experts} experts"
            )
        return geometry

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    # parameters, by kind ------------------------------------------------------------------
    @property
    def attention_params(self) -> int:
        """Per layer: Q, K, V and output projections."""
        q = self.hidden_size * self.num_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return 2 * q + kv

    @property
    def expert_params(self) -> int:
        """One gated MLP (gate, up and down projections): one expert, or a dense layer's MLP."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def mlp_params(self) -> int:
        """Per layer: every expert (or the dense MLP)."""
        return self.expert_params * max(self.num_experts, 1)

    @property
    def router_params(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def norm_params(self) -> int:
        return 2 * self.hidden_size

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params + self.router_params + self.norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        return (
            self.num_layers * self.layer_params
            + self.embedding_params
            + self.lm_head_params
            + self.hidden_size  # final norm
        )

    @property
    def active_params(self) -> int:
        """Parameters one token passes through (top-k experts of each MoE layer)."""
        active_experts = self.experts_per_token if self.is_moe else 1
        per_layer = self.layer_params - self.mlp_params + active_experts * self.expert_params
        return (
            self.num_layers * per_layer
            + self.embedding_params
            + self.lm_head_params
            + self.hidden_size  # final norm
        )

    # bytes --------------------------------------------------------------------------------
    def layer_bytes(self, weights: str, activations: str = "bf16") -> int:
        """One decoder layer's weights. Quantized (fp8) checkpoints quantize the linear
        projections; norms and the router stay in the activation dtype."""
        linear = DTYPE_BYTES[weights] * (self.attention_params + self.mlp_params)
        return linear + DTYPE_BYTES[activations] * (self.router_params + self.norm_params)

    def embedding_bytes(self, activations: str = "bf16") -> int:
        """Input embedding (never quantized)."""
        return DTYPE_BYTES[activations] * self.embedding_params

    def head_bytes(self, activations: str = "bf16") -> int:
        """Output head and final norm (the head is not quantized by vLLM's fp8)."""
        return DTYPE_BYTES[activations] * (self.lm_head_params + self.hidden_size)

    def weight_bytes(self, weights: str, activations: str = "bf16") -> int:
        return (
            self.num_layers * self.layer_bytes(weights, activations)
            + self.embedding_bytes(activations)
            + self.head_bytes(activations)
        )

    def kv_bytes_per_token(
        self, kv: str, layers: int | None = None, kv_heads: int | None = None
    ) -> int:
        """Keys and values of one token over ``layers`` (all) with ``kv_heads`` (all) heads."""
        n_layers = self.num_layers if layers is None else layers
        heads = self.num_kv_heads if kv_heads is None else kv_heads
        return 2 * n_layers * heads * self.head_dim * DTYPE_BYTES[kv]

    def kv_tokens_per_sequence(self, max_model_len: int) -> int:
        """KV entries one full-length sequence keeps (a sliding window caps it)."""
        if self.sliding_window:
            return min(max_model_len, self.sliding_window)
        return max_model_len

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads each tensor-parallel rank stores (replicated when TP exceeds them)."""
        return max(1, math.ceil(self.num_kv_heads / tp))
