"""The OpenAI-compatible HTTP surface: routes, validation, streaming, errors."""
