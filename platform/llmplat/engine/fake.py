"""The one deterministic fake engine that unit tests inject in place of vLLM.

It implements Ray Serve LLM's ``LLMEngine`` interface and answers in exactly vLLM's
shapes: response objects for non-streaming requests, ``data: {json}\\n\\n`` strings for
streams (a usage chunk when asked for, then ``data: [DONE]``), ``ErrorResponse`` for bad
requests. A "token" is a whitespace-separated word, or one id of a token-id prompt.

Test hooks, driven by the prompt text so a test needs no mock of its own:
``FAKE_FAIL_BEFORE`` makes the engine raise before the first token, ``FAKE_FAIL_MID_STREAM``
after two tokens (an engine dying mid-request).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from llmplat.engine.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    LLMEngine,
)

FAIL_BEFORE = "FAKE_FAIL_BEFORE"
FAIL_MID_STREAM = "FAKE_FAIL_MID_STREAM"
FAKE_OPTIONS_KEY = "llmplat_fake_engine"
"""``LLMConfig.experimental_configs`` key with ``{"token_delay_s": float}``."""

_WORDS = (
    "expert router token batch stream cache layer shard gate prefix tensor pipeline "
    "replica quota team model window head value key rotary sparse dense merge"
).split()
DEFAULT_MAX_TOKENS = 16


class FakeEngineError(RuntimeError):
    """Raised by the fake engine on purpose (see the test hooks)."""


def fake_tokens(prompt: str | list[int], max_tokens: int) -> list[str]:
    """The completion the fake produces for a prompt: deterministic words."""
    seed = hashlib.sha256(json.dumps(prompt).encode()).digest()
    return [_WORDS[(seed[i % len(seed)] + i) % len(_WORDS)] for i in range(max_tokens)]


def count_prompt_tokens(prompt: str | list[int]) -> int:
    return len(prompt) if isinstance(prompt, list) else len(prompt.split())


class FakeEngine(LLMEngine):
    """Deterministic, instant (or paced) stand-in for ``VLLMEngine``."""

    def __init__(self, llm_config: Any) -> None:
        self.llm_config = llm_config
        self.model_id: str = llm_config.model_id
        self.max_model_len: int = int(llm_config.engine_kwargs.get("max_model_len", 4096))
        options = llm_config.experimental_configs.get(FAKE_OPTIONS_KEY, {})
        self.token_delay_s: float = float(options.get("token_delay_s", 0.0))
        self.started = False
        self.open_calls = 0
        """Generation calls not yet read to their end (or closed) by the caller."""

    async def start(self) -> None:
        self.started = True

    def routing_stats(self) -> dict:
        return {}

    async def resolve_lora(self, lora_model: Any) -> None:
        raise NotImplementedError("the fake engine serves no LoRA adapters")

    async def reset_prefix_cache(self) -> None:
        return None

    async def check_health(self) -> None:
        if not self.started:
            raise FakeEngineError("engine not started")

    async def embeddings(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator:
        yield self._error("embeddings are not served by this model", 400)

    async def transcriptions(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator:
        yield self._error("transcriptions are not served by this model", 400)

    async def chat(
        self, request: ChatCompletionRequest, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        prompt = "\n".join(_message_text(m) for m in request.messages)
        async for item in self._generate(request, prompt, chat=True):
            yield item

    async def completions(
        self, request: CompletionRequest, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        async for item in self._generate(request, prompt, chat=False):
            yield item

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _error(message: str, code: int) -> ErrorResponse:
        kind = "BadRequestError" if code == 400 else "InternalServerError"
        return ErrorResponse(error=ErrorInfo(message=message, type=kind, code=code))

    def _validate(self, prompt_tokens: int, max_tokens: int | None) -> ErrorResponse | None:
        # The same checks, and nearly the same words, as vLLM's serving layer.
        if prompt_tokens >= self.max_model_len:
            return self._error(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, your request has {prompt_tokens} input tokens. "
                "Please reduce the length of the input messages.",
                400,
            )
        if max_tokens is not None and prompt_tokens + max_tokens > self.max_model_len:
            return self._error(
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. "
                f"This model's maximum context length is {self.max_model_len} tokens and "
                f"your request has {prompt_tokens} input tokens "
                f"({max_tokens} > {self.max_model_len} - {prompt_tokens}).",
                400,
            )
        return None

    async def _generate(
        self, request: Any, prompt: str | list[int], *, chat: bool
    ) -> AsyncGenerator[Any, None]:
        self.open_calls += 1
        try:
            async for item in self._produce(request, prompt, chat=chat):
                yield item
        finally:
            self.open_calls -= 1

    async def _produce(
        self, request: Any, prompt: str | list[int], *, chat: bool
    ) -> AsyncGenerator[Any, None]:
        text = prompt if isinstance(prompt, str) else ""
        if FAIL_BEFORE in text:
            raise FakeEngineError("engine failed before the first token")
        prompt_tokens = count_prompt_tokens(prompt)
        max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens
        if error := self._validate(prompt_tokens, max_tokens):
            yield error
            return
        n = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
        words = fake_tokens(prompt, n)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if not request.stream:
            await asyncio.sleep(self.token_delay_s * len(words))
            yield self._full_response(rid, created, " ".join(words), usage, chat=chat)
            return
        opts = request.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = include_usage and bool(opts and opts.continuous_usage_stats)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict], **extra: Any) -> str:
            body = {"id": rid, "object": obj, "created": created, "model": self.model_id}
            body.update(choices=choices, **extra)
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        def so_far(done: int) -> dict[str, Any]:
            if not continuous:
                return {}
            return {
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": done,
                    "total_tokens": prompt_tokens + done,
                }
            }

        if chat:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}], **so_far(0))
        for i, word in enumerate(words):
            if i == 2 and FAIL_MID_STREAM in text:
                raise FakeEngineError("engine failed mid-stream")
            await asyncio.sleep(self.token_delay_s)
            piece = word if i == 0 else " " + word
            last = i == len(words) - 1
            finish = "length" if last else None
            if chat:
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": finish}
            yield chunk([choice], **so_far(i + 1))
        if include_usage:
            yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"

    def _full_response(
        self, rid: str, created: int, text: str, usage: dict, *, chat: bool
    ) -> ChatCompletionResponse | CompletionResponse:
        if chat:
            return ChatCompletionResponse(
                id=rid,
                created=created,
                model=self.model_id,
                choices=[
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length",
                    }
                ],
                usage=usage,
            )
        return CompletionResponse(
            id=rid,
            created=created,
            model=self.model_id,
            choices=[{"index": 0, "text": text, "finish_reason": "length"}],
            usage=usage,
        )


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message.content
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
    return " ".join(parts)
