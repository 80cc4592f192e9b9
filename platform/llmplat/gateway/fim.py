"""Fill-in-the-middle: turn ``prompt`` + ``suffix`` into the model's native FIM token sequence.

vLLM's completions endpoint rejects ``suffix``. Mistral tokenizers (v3 and later) carry the
``[SUFFIX]``/``[PREFIX]`` control tokens, and ``mistral_common`` encodes a FIM request the
way the model was trained (``<s>[SUFFIX]suffix[PREFIX]prompt``); the gateway sends the
resulting token ids as the prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmplat.gateway.errors import InvalidRequest

log = logging.getLogger(__name__)

# Files mistral_common can load, most specific first.
_TOKENIZER_GLOBS = ("tekken.json", "tokenizer.model.v*")


class FimEncoder:
    """Encodes FIM requests with one model's mistral_common tokenizer."""

    def __init__(self, path: Path) -> None:
        from mistral_common.protocol.fim.request import FIMRequest
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        self.path = path
        self._request_cls = FIMRequest
        self._tokenizer = MistralTokenizer.from_file(str(path))
        # Fails early (and we report "no FIM") for tokenizers without FIM control tokens.
        self._tokenizer.encode_fim(FIMRequest(prompt="a", suffix="b"))

    def encode(self, prompt: str, suffix: str) -> list[int]:
        return self._tokenizer.encode_fim(self._request_cls(prompt=prompt, suffix=suffix)).tokens


def find_fim_tokenizer(model_dir: str | Path) -> Path | None:
    """A mistral_common tokenizer file next to the weights, if any."""
    root = Path(model_dir)
    for pattern in _TOKENIZER_GLOBS:
        matches = sorted(root.glob(pattern))
        if matches:
            return matches[-1]
    return None


def load_fim_encoder(model_dir: str | Path) -> FimEncoder | None:
    """The FIM encoder of a model, or None when its tokenizer has no FIM tokens."""
    path = find_fim_tokenizer(model_dir)
    if path is None:
        return None
    try:
        return FimEncoder(path)
    except Exception as exc:  # a v1/v2 tokenizer: FIM unsupported, which is an answer
        log.info("no fill-in-the-middle for %s: %s", path, exc)
        return None


def apply_fim(body: dict[str, Any], suffix: Any, fim: FimEncoder | None, model: str) -> None:
    """Replace the body's ``prompt`` with the FIM token ids of ``prompt`` + ``suffix``."""
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
