"""Every private Ray and vLLM API llmplat uses, in one place: an upgrade touches this file.

Ray keeps ``ray.serve.llm`` public and ``ray.llm._internal`` private; Ray Serve's
``_private`` modules, Ray's internal key-value store and vLLM's ``v1`` engine internals, parser
engine and usage context are not public either. No other module of llmplat imports them
(``tests/unit/test_compat.py`` fails when one does), and the names here are llmplat's
(``normalize_vllm_engine_kwargs`` for Ray's ``_normalize_vllm_engine_kwargs``).

Importing this module imports neither Ray nor vLLM: each name is imported when it is first
looked up (PEP 562 ``__getattr__``, as ``vllm/__init__.py`` does), so
``from llmplat.compat import VLLMEngine`` costs what the direct import did, where it did:
at module load for a module-level import, on call for one inside a function. A name whose
module is missing raises ImportError, as the direct import would.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

    from ray.experimental.internal_kv import _internal_kv_get as internal_kv_get
    from ray.experimental.internal_kv import _internal_kv_put as internal_kv_put
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
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.llm._internal.serve.engines.vllm.vllm_engine import (
        _normalize_vllm_engine_kwargs as normalize_vllm_engine_kwargs,
    )
    from ray.llm._internal.serve.utils.batcher import Batcher
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.exceptions import EngineDeadError
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    serve_replica: ModuleType
    streaming_parser_engine: ModuleType

_OPENAI_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
_RAY_VLLM_ENGINE = "ray.llm._internal.serve.engines.vllm.vllm_engine"
_INTERNAL_KV = "ray.experimental.internal_kv"

_NAMES: dict[str, tuple[str, str | None]] = {
    # Ray Serve LLM: the OpenAI protocol models LLMServer speaks (vLLM's, as Ray wraps them).
    "ChatCompletionRequest": (_OPENAI_MODELS, "ChatCompletionRequest"),
    "ChatCompletionResponse": (_OPENAI_MODELS, "ChatCompletionResponse"),
    "ChatCompletionStreamResponse": (_OPENAI_MODELS, "ChatCompletionStreamResponse"),
    "CompletionRequest": (_OPENAI_MODELS, "CompletionRequest"),
    "CompletionResponse": (_OPENAI_MODELS, "CompletionResponse"),
    "CompletionStreamResponse": (_OPENAI_MODELS, "CompletionStreamResponse"),
    "ErrorInfo": (_OPENAI_MODELS, "ErrorInfo"),
    "ErrorResponse": (_OPENAI_MODELS, "ErrorResponse"),
    # Ray Serve LLM: the engine interface, its vLLM engine, and the stream batcher.
    "LLMEngine": ("ray.llm._internal.serve.core.engine.protocol", "LLMEngine"),
    "VLLMEngine": (_RAY_VLLM_ENGINE, "VLLMEngine"),
    "normalize_vllm_engine_kwargs": (_RAY_VLLM_ENGINE, "_normalize_vllm_engine_kwargs"),
    "Batcher": ("ray.llm._internal.serve.utils.batcher", "Batcher"),
    # Ray Serve's replica module (whose direct-ingress server start the gateway wraps).
    "serve_replica": ("ray.serve._private.replica", None),
    # Ray's internal key-value store in the GCS (the autoscaler's reports).
    "internal_kv_put": (_INTERNAL_KV, "_internal_kv_put"),
    "internal_kv_get": (_INTERNAL_KV, "_internal_kv_get"),
    # vLLM v1 engine internals (a CPU replica's further nodes, a lost engine).
    "EngineDeadError": ("vllm.v1.engine.exceptions", "EngineDeadError"),
    "MultiprocExecutor": ("vllm.v1.executor.multiproc_executor", "MultiprocExecutor"),
    "UsageContext": ("vllm.usage.usage_lib", "UsageContext"),
    # vLLM's streaming parser engine module (whose per-request lexer build is memoized).
    "streaming_parser_engine": ("vllm.parser.engine.streaming_parser_engine", None),
}

__all__ = [
    "Batcher",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamResponse",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionStreamResponse",
    "EngineDeadError",
    "ErrorInfo",
    "ErrorResponse",
    "LLMEngine",
    "MultiprocExecutor",
    "UsageContext",
    "VLLMEngine",
    "internal_kv_get",
    "internal_kv_put",
    "normalize_vllm_engine_kwargs",
    "serve_replica",
    "streaming_parser_engine",
]


def __getattr__(name: str) -> Any:
    """Import ``name`` from its private home (a module itself where the attribute is None)."""
    try:
        module, attribute = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    found = importlib.import_module(module)
    if attribute is None:
        return found
    try:
        return getattr(found, attribute)
    except AttributeError:
        raise ImportError(f"{module} has no {attribute} (llmplat.compat.{name})") from None


def __dir__() -> list[str]:
    return __all__
