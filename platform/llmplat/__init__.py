"""llmplat: self-hosted, OpenAI-compatible inference for Mixture-of-Experts models."""

__version__ = "0.1.0"
