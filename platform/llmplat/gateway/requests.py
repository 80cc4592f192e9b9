"""Read, parse and validate an OpenAI request body into the engine's request model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from llmplat.engine.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    VLLMClientError,
)
from llmplat.gateway.errors import InvalidRequest, PayloadTooLarge
from llmplat.gateway.fim import FimEncoder

M = TypeVar("M", bound=BaseModel)


def client_address(request: Request) -> str | None:
    """The peer's address (behind an Ingress: the controller's)."""
    return request.client.host if request.client else None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing oversize bodies before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(size, max_bytes)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequest("The client closed the connection while sending the body.") from exc
    return b"".join(chunks)


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object (small admin bodies: parsed on the loop)."""
    return parse_json_object(await read_body(request, max_bytes))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (a 400 for anything else, deep nesting included)."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "The body must be a JSON object."
        ) from exc
    except RecursionError:
        raise InvalidRequest(
            "The JSON body of your request is nested too deeply to parse."
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(data).__name__}.")
    return data


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is {size} bytes, over this server's limit of {limit} bytes.",
        code="request_too_large",
    )


def requested_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


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
    first = exc.errors()[0]
    param = _param(first["loc"], body)
    msg = first["msg"].removeprefix("Value error, ")
    where = f"'{param}': " if param else ""
    extra = f" ({len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return InvalidRequest(f"Invalid request: {where}{msg}{extra}", param=param)


@dataclass
class ParsedRequest:
    """A validated engine request plus what the client asked of the response."""

    request: GenerationRequest
    stream: bool
    client_wants_usage: bool
    client_wants_continuous_usage: bool = False


def _prepare_stream_usage(body: dict[str, Any]) -> tuple[bool, bool]:
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


def _validate_model(cls: type[M], body: dict[str, Any]) -> M:
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


def parse_chat(body: dict[str, Any]) -> ParsedRequest:
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
    wants, continuous = _prepare_stream_usage(body)
    req = _validate_model(ChatCompletionRequest, body)
    return ParsedRequest(req, bool(req.stream), wants, continuous)


def parse_completion(body: dict[str, Any], fim: FimEncoder | None, model: str) -> ParsedRequest:
    suffix = body.pop("suffix", None)
    if suffix is not None:
        _apply_fim(body, suffix, fim, model)
    wants, continuous = _prepare_stream_usage(body)
    req = _validate_model(CompletionRequest, body)
    return ParsedRequest(req, bool(req.stream), wants, continuous)


def _apply_fim(body: dict[str, Any], suffix: Any, fim: FimEncoder | None, model: str) -> None:
    if not isinstance(suffix, str):
        raise InvalidRequest("'suffix' must be a string.", param="suffix")
    if fim is None:
        raise InvalidRequest(
            f"Model '{model}' does not support fill-in-the-middle: its tokenizer has no "
            "[SUFFIX]/[PREFIX] control tokens. Send the request without 'suffix'.",
            param="suffix",
            code="fim_not_supported",
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest(
            "With 'suffix', 'prompt' must be one string (the code before the cursor).",
            param="prompt",
        )
    if body.get("echo"):
        raise InvalidRequest("'echo' cannot be combined with 'suffix'.", param="echo")
    body["prompt"] = fim.encode(prompt, suffix)
