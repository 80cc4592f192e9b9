"""The request fields a client may send: OpenAI's, plus the documented vLLM sampling extras.

Anything else is refused with a 400 naming the field, so engine-only controls never reach
vLLM from a client: ``request_id`` (the engine id is always the gateway's own),
``priority`` (the team's class), ``cache_salt`` (set per team), ``kv_transfer_params``,
``ec_transfer_params``, ``vllm_xargs``, ``prompt_embeds`` (serialized tensors),
``chat_template`` (an arbitrary template), ``mm_processor_kwargs``/``media_io_kwargs``,
``session_id``, ``use_beam_search`` (multiplies cost outside ``n``) and the debugging
return flags.
"""

from __future__ import annotations

from typing import Any

from llmplat.gateway.errors import InvalidRequest

_OPENAI_COMMON = frozenset(
    {
        "model",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "response_format",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "user",
    }
)

VLLM_SAMPLING_EXTRAS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "allowed_token_ids",
        "bad_words",
        "prompt_logprobs",
        "structured_outputs",
        "add_special_tokens",
        "return_tokens_as_token_ids",
    }
)
"""vLLM extras documented for clients (docs/api.md, request fields)."""

CHAT_FIELDS = (
    _OPENAI_COMMON
    | VLLM_SAMPLING_EXTRAS
    | {
        "messages",
        "max_completion_tokens",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "include_reasoning",
        "echo",
        "add_generation_prompt",
        "continue_final_message",
        "documents",
        "chat_template_kwargs",
    }
)
COMPLETION_FIELDS = _OPENAI_COMMON | VLLM_SAMPLING_EXTRAS | {"prompt", "echo", "suffix"}


def screen_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    """Refuse a body with a field outside ``allowed`` (the first one, by name)."""
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {unknown[0]}{more}. This endpoint accepts "
            "OpenAI's parameters and vLLM's documented sampling extras only.",
            param=unknown[0],
            code="unsupported_parameter",
        )
