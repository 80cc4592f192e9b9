"""Body → engine request, in one direction: parse, check the team's policy and the input
bounds (``gateway.bounds``), validate, encode, count.

All of it is CPU work on one request (JSON parsing, request-model validation,
fill-in-the-middle encoding, prompt tokenization), so it runs off the event loop for any
body that is not tiny (see ``INLINE_BODY_BYTES``). The fields a client may send at all are
the table in ``gateway.surface``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llmplat.auth.base import Principal
from llmplat.engine.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    VLLMClientError,
)
from llmplat.gateway.backends import Method
from llmplat.gateway.bounds import check_input_bounds
from llmplat.gateway.errors import InvalidRequest, NotFound, PermissionDenied
from llmplat.gateway.fim import apply_fim
from llmplat.gateway.grammars import grammar_key
from llmplat.gateway.requests import parse_json_object
from llmplat.gateway.state import GatewayModel, GatewayState
from llmplat.gateway.surface import CHAT_FIELDS, COMPLETION_FIELDS, screen_fields

INLINE_BODY_BYTES = 16 * 1024
"""Bodies up to this size are prepared on the event loop (tens of microseconds); larger
ones in the gateway's worker threads, so one large prompt never stalls other streams."""

M = TypeVar("M", bound=BaseModel)


@dataclass
class Prepared:
    """A request ready for admission: the engine request, what the client asked of the
    response, and what to reserve for it."""

    model: GatewayModel
    request: GenerationRequest
    stream: bool
    client_wants_usage: bool
    """The final usage chunk of a stream (``stream_options.include_usage``)."""
    client_wants_continuous_usage: bool
    """Usage on every chunk of a stream (``stream_options.continuous_usage_stats``)."""
    prompt_tokens: int
    """Prompt tokens as the model's tokenizer counts them (every prompt, once)."""
    reserve_tokens: int
    """Prompt tokens plus the most every choice of every prompt may generate."""
    choices: int
    grammar: str | None = None
    """What the engine will compile for it (``gateway.grammars.grammar_key``), if anything."""
    grammar_limit: int = 1
    """The team's ``grammar_compiles`` bound."""


def unknown_model(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


async def prepare(
    state: GatewayState, principal: Principal, raw: bytes, method: Method
) -> Prepared:
    """Make the body ``raw`` an engine request for ``principal`` (on the event loop, or in
    the gateway's worker threads for a large body); raise an APIError (4xx) on bad input."""
    if len(raw) <= INLINE_BODY_BYTES:
        return prepare_body(state, principal, raw, method)
    return await asyncio.get_running_loop().run_in_executor(
        state.executor, prepare_body, state, principal, raw, method
    )


def prepare_body(state: GatewayState, principal: Principal, raw: bytes, method: Method) -> Prepared:
    """The synchronous part of :func:`prepare`: parse and check ``raw``."""
    body = parse_json_object(raw)
    model_id = _requested_model(body)
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
    # Before validation, which would copy a huge schema, and before admission: a refusal
    # costs no engine call and no quota.
    bounds = principal.input_bounds.applied_to(state.config.gateway.input_bounds)
    check_input_bounds(body, bounds, chat=method == "chat")
    grammar = grammar_key(body, chat=method == "chat")
    req: GenerationRequest
    if method == "chat":
        _check_message_count(body, state.config.gateway.max_messages)
        _check_tool_choice(body, model)
        _check_messages(body)
        wants, continuous = _stream_usage(body)
        req = _validate(ChatCompletionRequest, body)
    else:
        suffix = body.pop("suffix", None)
        if suffix is not None:
            apply_fim(body, suffix, state.fim.get(model_id), model_id)
        wants, continuous = _stream_usage(body)
        req = _validate(CompletionRequest, body)
    _apply_token_policy(req, body, model, principal)
    req.priority = principal.vllm_priority
    req.cache_salt = principal.cache_salt
    # Always the gateway's own id (set explicitly, so Ray Serve LLM keeps it): a client's
    # id never names an engine request or a response.
    req.request_id = uuid.uuid4().hex
    prompt_tokens, reserve = _reservation(state, model, req, principal, choices)
    return Prepared(
        model,
        req,
        bool(req.stream),
        wants,
        continuous,
        prompt_tokens,
        reserve,
        choices,
        grammar,
        bounds.grammar_compiles,
    )


def _requested_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


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


def _check_message_count(body: dict[str, Any], max_messages: int) -> None:
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        raise InvalidRequest(
            f"The request has {len(messages)} messages; this server accepts at most "
            f"{max_messages}.",
            param="messages",
        )


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("You must provide 'messages'.", param="messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest(
            '\'messages\' must be a list of message objects like {"role": "user", "content": "…"}.',
            param="messages",
        )
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")


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


def _stream_usage(body: dict[str, Any]) -> tuple[bool, bool]:
    """Ask the engine for usage on every chunk (so a stream cut short is billed for what it
    generated); report whether the client wanted the final usage chunk, and per-chunk usage."""
    if not body.get("stream"):
        return False, False
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    wants = bool((opts or {}).get("include_usage"))
    continuous = wants and bool((opts or {}).get("continuous_usage_stats"))
    body["stream_options"] = {
        **(opts or {}),
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    return wants, continuous


def _validate(cls: type[M], body: dict[str, Any]) -> M:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc, body) from exc
    except RecursionError:
        raise InvalidRequest("A field of your request is nested too deeply.") from None
    except (VLLMClientError, ValueError, TypeError, AttributeError, KeyError) as exc:
        # vLLM's "before" validators raise these without pydantic wrapping them; its own
        # validation errors name the parameter.
        param = getattr(exc, "parameter", None)
        text = str(exc.args[0]) if param and exc.args else str(exc)
        raise InvalidRequest(f"Invalid request: {text.rstrip('.')}.", param=param) from exc


def _param(loc: tuple[int | str, ...], body: Any) -> str | None:
    """The field an error is about: pydantic's location, cut where it leaves the client's
    input (what follows names union members, e.g. ``prompt.list[constrained-int]``)."""
    path: list[str] = []
    node = body
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and (part in node or i == len(loc) - 1):
            path.append(part)  # a field given, or missing (the last part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(str(part))
            node = node[part]
        else:
            break
    return ".".join(path) or None


def _validation_error(exc: ValidationError, body: Any) -> InvalidRequest:
    # A value that fails every branch of a union gets one error per branch; the branch of
    # the value's own type ("List should have at most 4 items") says more than the others'
    # "Input should be a valid string".
    errors = sorted(exc.errors(), key=lambda e: str(e["type"]).endswith("_type"))
    first = errors[0]
    param = _param(first["loc"], body)
    msg = first["msg"].removeprefix("Value error, ")
    where = f"'{param}': " if param else ""
    extra = f" ({len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return InvalidRequest(f"Invalid request: {where}{msg}{extra}", param=param)


def _apply_token_policy(
    req: Any, body: dict[str, Any], model: GatewayModel, principal: Principal
) -> None:
    cap = principal.max_tokens_cap
    explicit = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    if cap is not None and not explicit and (req.max_tokens is None or req.max_tokens > cap):
        req.max_tokens = cap  # the team's cap is also its default
    newer = getattr(req, "max_completion_tokens", None)  # 0 is a value, not "unset"
    max_tokens = newer if newer is not None else req.max_tokens
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
