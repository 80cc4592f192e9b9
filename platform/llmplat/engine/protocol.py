"""The OpenAI protocol models LLMServer speaks (vLLM's, as Ray Serve LLM wraps them).

The only module that imports them from Ray's internals, so an upgrade touches one file.
"""

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    ErrorInfo,
    ErrorResponse,
)
from ray.llm._internal.serve.core.engine.protocol import LLMEngine
from vllm.exceptions import VLLMClientError

GenerationRequest = ChatCompletionRequest | CompletionRequest
GenerationResponse = ChatCompletionResponse | CompletionResponse

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamResponse",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionStreamResponse",
    "ErrorInfo",
    "ErrorResponse",
    "GenerationRequest",
    "GenerationResponse",
    "LLMEngine",
    "VLLMClientError",
]
