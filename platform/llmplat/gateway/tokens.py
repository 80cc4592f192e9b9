"""Count a request's prompt tokens with the model's own tokenizer (for quota admission).

Mistral models: ``mistral_common`` encodes chat requests exactly as the model's template
does. Other models: the Hugging Face tokenizer and its chat template. Conversations a
tokenizer refuses to encode (the engine will answer those with a 400 itself) are counted
as their text's tokens plus a per-message allowance; settlement corrects the reservation
to the engine's exact usage either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmplat.engine.protocol import ChatCompletionRequest, GenerationRequest
from llmplat.gateway.fim import find_fim_tokenizer

log = logging.getLogger(__name__)

PER_MESSAGE_ALLOWANCE = 8
"""Template tokens per message when a conversation is counted from its text."""


class TokenizerNotFound(Exception):
    pass


@dataclass(frozen=True)
class ChatInput:
    """What vLLM renders into a chat prompt besides the messages."""

    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class _Tokenizer(Protocol):
    max_chars_per_token: int
    """No token covers more characters of text than this: a text longer than this many
    characters per allowed token is over the limit without being tokenized."""

    def encode_text(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict[str, Any]], extra: ChatInput) -> list[int]: ...


class _MistralTokenizer:
    def __init__(self, path: Path) -> None:
        from mistral_common.protocol.instruct.converters import (
            convert_openai_messages,
            convert_openai_tools,
        )
        from mistral_common.protocol.instruct.request import ChatCompletionRequest as MCRequest
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        self._tok = MistralTokenizer.from_file(str(path))
        self._request = MCRequest
        self._messages = convert_openai_messages
        self._tools = convert_openai_tools
        raw = self._tok.instruct_tokenizer.tokenizer
        pieces = (raw.id_to_piece(i) for i in range(raw.n_words))
        self.max_chars_per_token = max(len(p) for p in pieces)

    def encode_text(self, text: str) -> list[int]:
        return self._tok.instruct_tokenizer.tokenizer.encode(text, bos=True, eos=False)

    def encode_chat(self, messages: list[dict[str, Any]], extra: ChatInput) -> list[int]:
        # As vLLM's Mistral renderer: tools are encoded, tool-call ids cut to their last 9
        # characters; documents and template kwargs are not part of a Mistral prompt.
        messages = _short_tool_ids(messages)
        if extra.continue_final_message:
            request = self._request.from_openai(
                messages=messages, tools=extra.tools, continue_final_message=True
            )
        else:
            # What from_openai builds, without the TypeAdapter it makes on every call
            # (35 → 7 µs for a short turn).
            request = self._request.model_validate(
                {
                    "messages": self._messages(messages),
                    "tools": self._tools(extra.tools) if extra.tools is not None else None,
                },
                extra="ignore",
            )
        return self._tok.encode_chat_completion(request).tokens


class _HFTokenizer:
    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.max_chars_per_token = max(len(t) for t in self._tok.get_vocab())

    def encode_text(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def encode_chat(self, messages: list[dict[str, Any]], extra: ChatInput) -> list[int]:
        encoded = self._tok.apply_chat_template(
            messages,
            tools=extra.tools,
            documents=extra.documents,
            tokenize=True,
            add_generation_prompt=extra.add_generation_prompt,
            continue_final_message=extra.continue_final_message,
            **(extra.template_kwargs or {}),
        )
        # transformers returns a BatchEncoding (a Mapping, not a dict) or a plain list.
        ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
        return list(ids)


def _short_tool_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [
                {**c, "id": str(c.get("id", ""))[-9:]} if isinstance(c, dict) else c
                for c in m["tool_calls"]
            ]
            m = {**m, "tool_calls": calls}
        if m.get("tool_call_id"):
            m = {**m, "tool_call_id": str(m["tool_call_id"])[-9:]}
        out.append(m)
    return out


def _load(model_dir: Path) -> _Tokenizer:
    mistral = find_fim_tokenizer(model_dir)
    if mistral is not None:
        return _MistralTokenizer(mistral)
    if (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists():
        return _HFTokenizer(model_dir)
    raise TokenizerNotFound(
        f"{model_dir}: no tokenizer (tokenizer.model.v*, tekken.json or tokenizer.json); "
        "quota admission needs one to count prompt tokens"
    )


def _message_texts(messages: list[dict[str, Any]]) -> list[str]:
    texts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return texts


@dataclass(frozen=True)
class PromptSize:
    tokens: int
    """All prompt tokens of the request."""
    longest: int
    """The longest single prompt (bounds the default max_tokens)."""
    prompts: int
    """Prompts in the request (a completions request may batch several)."""


class PromptCounter:
    """Prompt tokens of chat and completion requests for one model."""

    def __init__(self, model_dir: str | Path) -> None:
        self._tok = _load(Path(model_dir))

    def measure(self, request: GenerationRequest, limit: int | None = None) -> PromptSize:
        """Prompt tokens of ``request``. A text that cannot fit ``limit`` tokens whatever
        its content is not tokenized (a 1 MiB prompt costs microseconds, not a second):
        it counts as ``limit`` tokens, enough for the caller to refuse it."""
        bound = None if limit is None else limit * self._tok.max_chars_per_token
        if isinstance(request, ChatCompletionRequest):
            if bound is not None and _chat_chars(request) > bound:
                return PromptSize(limit or 0, limit or 0, 1)
            n = self._count_chat(request)
            return PromptSize(n, n, 1)
        lengths = _prompt_lengths(request.prompt, self._tok, bound, limit or 0) or [0]
        return PromptSize(sum(lengths), max(lengths), len(lengths))

    def _count_chat(self, request: ChatCompletionRequest) -> int:
        messages = [m if isinstance(m, dict) else dict(m) for m in request.messages]
        extra = chat_input(request)
        try:
            return len(self._tok.encode_chat(messages, extra))
        except Exception as exc:
            log.debug("chat not encodable (%s); counting its text", type(exc).__name__)
            texts = _message_texts(messages) + _extra_texts(extra)
            allowance = PER_MESSAGE_ALLOWANCE * len(messages)
            return sum(len(self._tok.encode_text(t)) for t in texts) + allowance


def chat_input(request: ChatCompletionRequest) -> ChatInput:
    tools = (
        [t.model_dump(exclude_none=True) if hasattr(t, "model_dump") else t for t in request.tools]
        if request.tools
        else None
    )
    return ChatInput(
        tools=tools,
        documents=request.documents,
        template_kwargs=request.chat_template_kwargs,
        add_generation_prompt=bool(request.add_generation_prompt),
        continue_final_message=bool(request.continue_final_message),
    )


def _extra_texts(extra: ChatInput) -> list[str]:
    """Tools, documents and template arguments as text (for the fallback count)."""
    parts: list[Any] = [extra.tools, extra.documents, extra.template_kwargs]
    return [json.dumps(p, default=str) for p in parts if p]


def _chat_chars(request: ChatCompletionRequest) -> int:
    messages = [m if isinstance(m, dict) else dict(m) for m in request.messages]
    return sum(len(t) for t in _message_texts(messages))


def _prompt_lengths(
    prompt: Any, tok: _Tokenizer, bound: int | None = None, limit: int = 0
) -> list[int]:
    """Token counts of each prompt of a completions request (it may carry a batch)."""
    if isinstance(prompt, str):
        if bound is not None and len(prompt) > bound:
            return [limit]
        return [len(tok.encode_text(prompt))]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [len(prompt)]
    if isinstance(prompt, list):
        return [n for p in prompt for n in _prompt_lengths(p, tok, bound, limit)]
    return [0]
