"""Model artefacts: the tiny offline Mixtral checkpoint used for CPU serving and tests."""

from llmplat.models.tiny import (
    MODEL_DIRNAME,
    TinyModelSpec,
    build_tiny_model,
    ensure_tiny_model,
    v3_tokenizer_path,
)

__all__ = [
    "MODEL_DIRNAME",
    "TinyModelSpec",
    "build_tiny_model",
    "ensure_tiny_model",
    "v3_tokenizer_path",
]
