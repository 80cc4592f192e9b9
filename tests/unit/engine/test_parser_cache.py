"""vLLM's tool-call parser, built per chat request, reuses one lexer per tokenizer."""

from __future__ import annotations

import shutil

import pytest

from llmplat.engine import parser_cache
from support import V3_TOKENIZER


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from vllm.tokenizers.mistral import MistralTokenizer

    d = tmp_path_factory.mktemp("v3")
    shutil.copy(V3_TOKENIZER, d / "tokenizer.model.v3")
    return MistralTokenizer.from_pretrained(str(d))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """vLLM's own lexer build, counted, installed as vLLM has it (the cache not yet)."""
    from vllm.parser.engine import streaming_parser_engine as engine

    original = engine._build_drop_info
    while getattr(original, "__wrapped__", None) is not None:
        original = original.__wrapped__
    calls: list[int] = []

    def counted(config, tok):
        calls.append(1)
        return original(config, tok)

    monkeypatch.setattr(engine, "_build_drop_info", counted)
    return calls


def _parser(tokenizer):
    from vllm.parser import ParserManager

    cls = ParserManager.get_parser(
        tool_parser_name="mistral",
        reasoning_parser_name=None,
        enable_auto_tools=True,
        model_name="tiny",
        is_harmony=False,
    )
    return cls(tokenizer, None)


def test_without_the_cache_every_request_builds_the_lexer(tokenizer, builds) -> None:
    _parser(tokenizer)
    _parser(tokenizer)
    assert len(builds) == 2  # what vLLM does: the cost the cache removes


def test_one_build_per_tokenizer_serves_every_request(tokenizer, builds) -> None:
    from vllm.parser.engine import streaming_parser_engine as engine

    assert parser_cache.install()
    assert parser_cache.install()  # idempotent: never wrapped twice
    first, second = _parser(tokenizer), _parser(tokenizer)
    assert len(builds) == 1
    assert first is not second  # parsers keep their per-request state
    assert engine._build_drop_info.__wrapped__ is not None


def test_cached_build_equals_vllms_own(tokenizer) -> None:
    from vllm.parser.engine import streaming_parser_engine as engine
    from vllm.parser.mistral import mistral_config

    config = mistral_config(reasoning_encoding="none")
    plain = getattr(engine._build_drop_info, "__wrapped__", engine._build_drop_info)
    own = plain(config, tokenizer)
    memo = parser_cache.cached(plain)(config, tokenizer)
    assert own is not None and len(own.extra_token_ids) > 700  # v3: ~770 unused specials
    assert memo.extra_token_ids == own.extra_token_ids
    assert [t.literal for t in memo.lexer_shape.terminals] == [
        t.literal for t in own.lexer_shape.terminals
    ]
