"""The OpenAI protocol models LLMServer speaks (vLLM's, as Ray Serve LLM wraps them).

Ray keeps them in its internals; :mod:`llmplat.compat` imports them from there.
"""

from vllm.exceptions import VLLMClientError

from llmplat.compat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    ErrorInfo,
    ErrorResponse,
    LLMEngine,
)

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
