"""Build vLLM's tool-call parser lexer once per tokenizer, not once per chat request.

With a tool-call parser set (automatic tool choice), vLLM's chat endpoint creates a parser
for every chat request, tools or not. vLLM 0.29's streaming parser engine then compiles one
regex per special token of the tokenizer it does not use (770 for Mistral's v3 tokenizer,
the one Mixtral 8x22B Instruct ships with): about 50 ms of CPU per request, more than the
rest of a short request costs. What it builds depends only on the parser's configuration
(one cached object per format) and the tokenizer, and vLLM's own types call it immutable
(``LexerShape``: "shared across all IncrementalLexer instances"), so one build per
(configuration, tokenizer) serves every request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_llmplat_cached"


def cached(build: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``build(config, tokenizer)``, memoized on the two objects' identities (the cache
    holds them, so an identity is never reused while its entry lives)."""
    cache: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
    lock = threading.Lock()

    def build_once(config: Any, tokenizer: Any) -> Any:
        key = (id(config), id(tokenizer))
        hit = cache.get(key)
        if hit is not None:
            return hit[2]
        value = build(config, tokenizer)
        with lock:
            cache.setdefault(key, (config, tokenizer, value))
        return cache[key][2]

    setattr(build_once, _MARK, True)
    build_once.__wrapped__ = build  # type: ignore[attr-defined]
    return build_once


def install() -> bool:
    """Memoize vLLM's per-request lexer build in this process; False (and a warning) when
    this vLLM has no such function, i.e. the cost is gone or has moved."""
    try:
        from llmplat.compat import streaming_parser_engine as engine
    except ImportError:
        log.warning("vLLM has no streaming parser engine; tool-parser cache not installed")
        return False
    build = getattr(engine, "_build_drop_info", None)
    if build is None:
        log.warning("vLLM's parser engine has no _build_drop_info; tool-parser cache not installed")
        return False
    if not getattr(build, _MARK, False):
        engine._build_drop_info = cached(build)
    return True
