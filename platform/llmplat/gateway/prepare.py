"""Body → engine request: parse, check the team's policy, encode, count (synchronous).

Everything here is CPU work on one request (JSON parsing, request-model validation,
fill-in-the-middle encoding, prompt tokenization), so the route runs it off the event loop
for any body that is not tiny (see ``INLINE_BODY_BYTES``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from llmplat.auth.base import Principal
from llmplat.gateway.backends import Method
from llmplat.gateway.errors import InvalidRequest, NotFound, PermissionDenied
from llmplat.gateway.requests import (
    ParsedRequest,
    parse_chat,
    parse_completion,
    parse_json_object,
    requested_model,
)
from llmplat.gateway.state import GatewayModel, GatewayState
from llmplat.gateway.surface import CHAT_FIELDS, COMPLETION_FIELDS, screen_fields

INLINE_BODY_BYTES = 16 * 1024
"""Bodies up to this size are prepared on the event loop (tens of microseconds); larger
ones in the gateway's worker threads, so one large prompt never stalls other streams."""


@dataclass
class Prepared:
    """A request ready for admission: the engine request and what to reserve for it."""

    model: GatewayModel
    parsed: ParsedRequest
    prompt_tokens: int
    """Prompt tokens as the model's tokenizer counts them (every prompt, once)."""
    reserve_tokens: int
    """Prompt tokens plus the most every choice of every prompt may generate."""
    choices: int


def unknown_model(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def _check_tool_choice(body: dict[str, Any], model: GatewayModel) -> None:
    """``tools`` without ``tool_choice`` mean "auto": the model decides, and the engine must
    parse its tool calls from free text, which needs a parser in the model's profile."""
    if model.auto_tool_choice or not body.get("tools"):
        return
    if body.get("tool_choice") in (None, "auto"):
        raise InvalidRequest(
            f"Model '{model.model_id}' does not choose tools itself: its profile has no "
            "tool-call parser (tools.tool_call_parser). Name the function in 'tool_choice', "
            "or send 'required' or 'none'.",
            param="tool_choice",
            code="tool_choice_not_supported",
        )


def prepare(state: GatewayState, principal: Principal, raw: bytes, method: Method) -> Prepared:
    """Parse and check ``raw`` for ``principal``; raise an APIError (4xx) on bad input."""
    body = parse_json_object(raw)
    model_id = requested_model(body)
    model = state.model(model_id)
    if model is None:
        raise unknown_model(model_id)
    if not principal.may_use(model_id):
        raise PermissionDenied(
            f"Team '{principal.team}' may not use model '{model_id}'.",
            param="model",
            code="model_not_allowed",
        )
    screen_fields(body, CHAT_FIELDS if method == "chat" else COMPLETION_FIELDS)
    choices = _choices(body, principal)
    if method == "chat":
        messages = body.get("messages")
        if isinstance(messages, list) and len(messages) > state.config.gateway.max_messages:
            raise InvalidRequest(
                f"The request has {len(messages)} messages; this server accepts at most "
                f"{state.config.gateway.max_messages}.",
                param="messages",
            )
        _check_tool_choice(body, model)
        parsed = parse_chat(body)
    else:
        parsed = parse_completion(body, state.fim.get(model_id), model_id)
    req = parsed.request
    _apply_token_policy(req, body, model, principal)
    req.priority = principal.vllm_priority
    req.cache_salt = principal.cache_salt
    # Always the gateway's own id (set explicitly, so Ray Serve LLM keeps it): a client's
    # id never names an engine request or a response.
    req.request_id = uuid.uuid4().hex
    prompt_tokens, reserve = _reservation(state, model, req, principal, choices)
    return Prepared(model, parsed, prompt_tokens, reserve, choices)


def _choices(body: dict[str, Any], principal: Principal) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidRequest("'n' must be a positive integer.", param="n")
    if n > principal.max_choices:
        raise InvalidRequest(
            f"'n' is {n}; team '{principal.team}' may ask for at most {principal.max_choices} "
            "choices per request.",
            param="n",
            code="too_many_choices",
        )
    return n


def _apply_token_policy(
    req: Any, body: dict[str, Any], model: GatewayModel, principal: Principal
) -> None:
    cap = principal.max_tokens_cap
    explicit = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    if cap is not None and not explicit and (req.max_tokens is None or req.max_tokens > cap):
        req.max_tokens = cap  # the team's cap is also its default
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest("'max_tokens' must be at least 1.", param="max_tokens")
    if max_tokens is not None and max_tokens > model.max_model_len:
        raise InvalidRequest(
            f"'max_tokens' is {max_tokens}, but model '{model.model_id}' has a context of "
            f"{model.max_model_len} tokens (prompt and completion together).",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if cap is not None and max_tokens is not None and max_tokens > cap:
        raise InvalidRequest(
            f"'max_tokens' is {max_tokens}; team '{principal.team}' may ask for at most {cap}.",
            param="max_tokens",
        )


def _reservation(
    state: GatewayState, model: GatewayModel, req: Any, principal: Principal, choices: int
) -> tuple[int, int]:
    """(prompt tokens, tokens to reserve): the prompt as the engine will render it plus
    the most the request may generate, for every choice of every prompt.

    Without ``max_tokens`` the engine may fill the context; a team cap then becomes the
    request's ``max_tokens``, so the reservation and the engine agree.
    """
    size = state.counters[model.model_id].measure(req, model.max_model_len)
    if size.longest >= model.max_model_len:
        raise InvalidRequest(
            f"This model's maximum context length is {model.max_model_len} tokens, but the "
            f"prompt has {size.longest} tokens. Shorten the prompt.",
            param="messages" if hasattr(req, "messages") else "prompt",
            code="context_length_exceeded",
        )
    attr = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    max_tokens = getattr(req, attr)
    if max_tokens is None and principal.max_tokens_cap is not None:
        max_tokens = min(principal.max_tokens_cap, model.max_model_len - size.longest)
        req.max_tokens = max_tokens
    if max_tokens is None:
        max_tokens = model.max_model_len - size.longest
    return size.tokens, size.tokens + size.prompts * choices * max_tokens
