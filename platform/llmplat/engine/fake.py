"""The one deterministic fake engine that unit tests inject in place of vLLM.

It implements Ray Serve LLM's ``LLMEngine`` interface and answers in exactly vLLM's
shapes: response objects for non-streaming requests, ``data: {json}\\n\\n`` strings for
streams (a usage chunk when asked for, then ``data: [DONE]``), ``ErrorResponse`` for bad
requests. A "token" is a whitespace-separated word, or one id of a token-id prompt.

Test hooks, driven by the prompt text so a test needs no mock of its own:
``FAKE_FAIL_BEFORE`` makes the engine raise before the first token, ``FAKE_FAIL_MID_STREAM``
after two tokens (an engine dying mid-request), ``FAKE_ERROR_EVENT`` ends a stream after
two tokens with vLLM's in-band error event (``data: {"error": …}`` then ``[DONE]``, what
vLLM's server sends when generation fails mid-stream), ``FAKE_ERROR_OBJECT`` yields an
``ErrorResponse`` object after two tokens instead (LLMServer's stream type allows both),
``FAKE_CUT_SHORT`` ends a stream after two tokens without ``[DONE]`` (a call that returns
early), ``FAKE_HANG`` never answers (until the call is cancelled), ``FAKE_REPLICA_GONE_ONCE``
fails the first call of that prompt as a replica that went away before answering
(:class:`FakeReplicaGone`) and answers the next. ``n``
choices and batches of prompts are numbered as vLLM numbers them, with vLLM's per-choice
continuous usage.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from llmplat.autoscaling.signals import EngineSignals
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
ERROR_EVENT = "FAKE_ERROR_EVENT"
CUT_SHORT = "FAKE_CUT_SHORT"
ERROR_OBJECT = "FAKE_ERROR_OBJECT"
HANG = "FAKE_HANG"
REPLICA_GONE_ONCE = "FAKE_REPLICA_GONE_ONCE"
FAKE_OPTIONS_KEY = "llmplat_fake_engine"
"""``LLMConfig.experimental_configs`` key with ``{"token_delay_s": float}``."""

_WORDS = (
    "expert router token batch stream cache layer shard gate prefix tensor pipeline "
    "replica quota team model window head value key rotary sparse dense merge"
).split()
DEFAULT_MAX_TOKENS = 16


class FakeEngineError(RuntimeError):
    """Raised by the fake engine on purpose (see the test hooks)."""


class FakeReplicaGone(FakeEngineError):
    """Stands for Ray's actor errors: the replica went away before answering."""

    replica_gone = True


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
        self.cancelled = 0
        """Generation calls stopped by their caller (cancellation or close) before the end."""
        self.request_ids: list[str] = []
        """The engine request id of every generation call, in order."""
        self.prompts: collections.deque[list[str | list[int]]] = collections.deque(maxlen=64)
        """The last calls' prompts as the engine received them (text or token ids)."""
        self.requests: collections.deque[Any] = collections.deque(maxlen=64)
        """The last calls' request objects as the engine received them (what the gateway
        set on them: ``cache_salt``, ``priority``, ``request_id``, sampling fields)."""
        self._gone_once: set[str] = set()
        self.health_checks = 0

    async def start(self) -> None:
        self.started = True

    def routing_stats(self) -> dict:
        return {}

    def load_signals(self) -> EngineSignals:
        """What the autoscaler reads: every open call counts as running."""
        return EngineSignals(running=self.open_calls)

    async def resolve_lora(self, lora_model: Any) -> None:
        raise NotImplementedError("the fake engine serves no LoRA adapters")

    async def reset_prefix_cache(self) -> None:
        return None

    async def check_health(self) -> None:
        self.health_checks += 1
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
        async for item in self._generate(request, [prompt], chat=True):
            yield item

    async def completions(
        self, request: CompletionRequest, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        async for item in self._generate(request, _prompts(request.prompt), chat=False):
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
        self, request: Any, prompts: list[str | list[int]], *, chat: bool
    ) -> AsyncGenerator[Any, None]:
        self.open_calls += 1
        self.request_ids.append(str(getattr(request, "request_id", "")))
        self.prompts.append(prompts)
        self.requests.append(request)
        try:
            async for item in self._produce(request, prompts, chat=chat):
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.open_calls -= 1

    async def _produce(
        self, request: Any, prompts: list[str | list[int]], *, chat: bool
    ) -> AsyncGenerator[Any, None]:
        texts = " ".join(p for p in prompts if isinstance(p, str))
        if HANG in texts:
            await asyncio.Event().wait()  # until cancelled: an engine that never answers
        if FAIL_BEFORE in texts:
            raise FakeEngineError("engine failed before the first token")
        if REPLICA_GONE_ONCE in texts and texts not in self._gone_once:
            self._gone_once.add(texts)
            raise FakeReplicaGone("the replica stopped before answering")
        prompt_tokens = [count_prompt_tokens(p) for p in prompts]
        max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens
        for size in prompt_tokens:
            if error := self._validate(size, max_tokens):
                yield error
                return
        length = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
        n = int(getattr(request, "n", None) or 1)
        # Choice i*n + j answers prompt i (vLLM's numbering); each gets the prompt's words.
        words = [fake_tokens(p, length) for p in prompts for _ in range(n)]
        usage = {
            "prompt_tokens": sum(prompt_tokens),
            "completion_tokens": sum(len(w) for w in words),
            "total_tokens": sum(prompt_tokens) + sum(len(w) for w in words),
        }
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{getattr(request, 'request_id', uuid.uuid4().hex)}"
        created = int(time.time())
        if not request.stream:
            await asyncio.sleep(self.token_delay_s * length)
            yield self._full_response(rid, created, words, usage, chat=chat)
            return
        opts = request.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = include_usage and bool(opts and opts.continuous_usage_stats)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict], **extra: Any) -> str:
            body = {"id": rid, "object": obj, "created": created, "model": self.model_id}
            body.update(choices=choices, **extra)
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        def so_far(index: int, done: int) -> dict[str, Any]:
            # vLLM's continuous usage covers the chunk's own choice and prompt only.
            if not continuous:
                return {}
            prompt = prompt_tokens[index // n]
            return {
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": done,
                    "total_tokens": prompt + done,
                }
            }

        if chat:
            for index in range(len(words)):
                role = {"index": index, "delta": {"role": "assistant", "content": ""}}
                yield chunk([role], **so_far(index, 0))
        for i in range(length):
            if i == 2 and FAIL_MID_STREAM in texts:
                raise FakeEngineError("engine failed mid-stream")
            if i == 2 and ERROR_EVENT in texts:
                error = {"message": "generation failed", "type": "InternalServerError"}
                yield f"data: {json.dumps({'error': {**error, 'param': None, 'code': 500}})}\n\n"
                yield "data: [DONE]\n\n"
                return
            if i == 2 and CUT_SHORT in texts:
                return
            if i == 2 and ERROR_OBJECT in texts:
                yield self._error("generation failed", 500)
                return
            await asyncio.sleep(self.token_delay_s)
            for index, choice_words in enumerate(words):
                piece = choice_words[i] if i == 0 else " " + choice_words[i]
                finish = "length" if i == length - 1 else None
                if chat:
                    choice = {"index": index, "delta": {"content": piece}, "finish_reason": finish}
                else:
                    choice = {"index": index, "text": piece, "finish_reason": finish}
                yield chunk([choice], **so_far(index, i + 1))
        if include_usage:
            yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"

    def _full_response(
        self, rid: str, created: int, words: list[list[str]], usage: dict, *, chat: bool
    ) -> ChatCompletionResponse | CompletionResponse:
        texts = [" ".join(w) for w in words]
        if chat:
            return ChatCompletionResponse(
                id=rid,
                created=created,
                model=self.model_id,
                choices=[
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length",
                    }
                    for i, text in enumerate(texts)
                ],
                usage=usage,
            )
        return CompletionResponse(
            id=rid,
            created=created,
            model=self.model_id,
            choices=[
                {"index": i, "text": text, "finish_reason": "length"}
                for i, text in enumerate(texts)
            ],
            usage=usage,
        )


def _prompts(prompt: Any) -> list[str | list[int]]:
    """A completions request's prompts: one string, token ids, or a batch of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return list(prompt)
    return [prompt]


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message.content
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
    return " ".join(parts)
