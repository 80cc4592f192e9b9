"""Admission counts the prompt the engine will render: tools, tool calls, documents and
template arguments included.

The oracle for Mistral models is vLLM's own Mistral renderer (what the engine runs); for
Hugging Face models, the tokenizer's chat template given what vLLM gives it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from llmplat.engine.protocol import ChatCompletionRequest, CompletionRequest
from llmplat.gateway.tokens import PER_MESSAGE_ALLOWANCE, PromptCounter
from support import MODEL, V3_TOKENIZER

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                "required": ["city"],
            },
        },
    }
]
LONG_ID = "call_0123456789abcdefghij"  # OpenAI-style id: vLLM keeps its last 9 characters
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": LONG_ID,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": LONG_ID, "content": '{"temp": 21, "unit": "C"}'},
]


def _chat(messages: list[dict[str, Any]], **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": MODEL, "messages": messages, **extra})


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mistral-tok")
    shutil.copy(V3_TOKENIZER, d / "tokenizer.model.v3")
    return d


def _vllm_mistral_count(
    model_dir: Path, messages: list[dict[str, Any]], tools: Any, *, continue_final: bool = False
) -> int:
    from vllm.tokenizers.mistral import MistralTokenizer

    tok = MistralTokenizer.from_pretrained(str(model_dir))
    shortened = json.loads(json.dumps(messages))
    for m in shortened:  # vLLM's truncate_tool_call_ids, applied before rendering
        for call in m.get("tool_calls") or []:
            call["id"] = call["id"][-9:]
        if "tool_call_id" in m:
            m["tool_call_id"] = m["tool_call_id"][-9:]
    return len(
        tok.apply_chat_template(
            shortened,
            tools=tools,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
    )


@pytest.mark.parametrize(
    ("messages", "tools"),
    [
        ([{"role": "user", "content": "What is the weather in Paris?"}], None),
        ([{"role": "user", "content": "What is the weather in Paris?"}], TOOLS),
        (TOOL_CONVERSATION, TOOLS),
        (
            [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
                {"role": "assistant", "content": "Paris"},
                {"role": "user", "content": "And of Italy?"},
            ],
            None,
        ),
    ],
    ids=["plain", "tools", "tool-calls", "system-multi-turn-parts"],
)
def test_mistral_count_matches_vllms_renderer(
    mistral_dir: Path, messages: list[dict[str, Any]], tools: Any
) -> None:
    counter = PromptCounter(mistral_dir)
    counted = counter.measure(_chat(messages, tools=tools)).tokens
    assert counted == _vllm_mistral_count(mistral_dir, messages, tools)


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["plain", "tools"])
def test_mistral_count_of_a_continued_assistant_message(mistral_dir: Path, tools: Any) -> None:
    """``continue_final_message``: the last (assistant) message is a prefix to complete."""
    messages = [
        {"role": "user", "content": "Write a haiku about rain."},
        {"role": "assistant", "content": "Soft rain on the roof"},
    ]
    counted = (
        PromptCounter(mistral_dir)
        .measure(
            _chat(messages, tools=tools, continue_final_message=True, add_generation_prompt=False)
        )
        .tokens
    )
    assert counted == _vllm_mistral_count(mistral_dir, messages, tools, continue_final=True)


def test_mistral_tools_are_reserved(mistral_dir: Path) -> None:
    counter = PromptCounter(mistral_dir)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    without = counter.measure(_chat(messages)).tokens
    with_tools = counter.measure(_chat(messages, tools=TOOLS)).tokens
    assert with_tools > without + 30  # the schema is rendered into the prompt


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_text_too_long_for_the_limit_is_not_tokenized(mistral_dir: Path, endpoint: str) -> None:
    """Up to ``limit`` × the longest token's characters a text may still fit: it is counted;
    one character more cannot fit whatever its tokens: it counts as ``limit``, untokenized."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    raw = MistralTokenizer.from_file(str(V3_TOKENIZER)).instruct_tokenizer.tokenizer
    longest = max(len(raw.id_to_piece(i)) for i in range(raw.n_words))
    counter, limit = PromptCounter(mistral_dir), 10

    def measure(text: str) -> int:
        if endpoint == "chat":
            request = _chat([{"role": "user", "content": text}])
        else:
            request = CompletionRequest.model_validate({"model": MODEL, "prompt": text})
        return counter.measure(request, limit=limit).tokens

    at_bound = "ab" * (limit * longest // 2)
    assert len(at_bound) == limit * longest
    assert limit < measure(at_bound) < len(at_bound)  # really tokenized: over the limit
    assert measure(at_bound + "a") == limit


HF_TEMPLATE = (
    "{% if tools %}[TOOLS]{{ tools | tojson }}[/TOOLS]{% endif %}"
    "{% if documents %}[DOCS]{% for d in documents %}{{ d.title }}: {{ d.text }} "
    "{% endfor %}[/DOCS]{% endif %}"
    "{% if persona %}[PERSONA]{{ persona }}[/PERSONA]{% endif %}"
    "{% for m in messages %}"
    "{% if loop.index0 > 0 and m.role == messages[loop.index0 - 1].role %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "<{{ m.role }}> {{ m.content }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Hugging Face tokenizer (one token per character) with a chat template that
    renders tools, documents and a template argument."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({chr(c) for c in range(32, 127)})
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    tok.chat_template = HF_TEMPLATE
    d = tmp_path_factory.mktemp("hf-tok")
    tok.save_pretrained(str(d))
    return d


def test_hf_count_includes_tools_documents_and_template_arguments(hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    counter = PromptCounter(hf_dir)
    messages = [{"role": "user", "content": "Summarise the report."}]
    documents = [{"title": "Q3", "text": "Revenue grew by four percent."}]
    kwargs = {"persona": "a terse analyst"}
    plain = counter.measure(_chat(messages)).tokens
    full = counter.measure(
        _chat(messages, tools=TOOLS, documents=documents, chat_template_kwargs=kwargs)
    ).tokens
    oracle = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    expected = oracle.apply_chat_template(
        messages,
        tools=TOOLS,
        documents=documents,
        tokenize=True,
        return_dict=True,
        add_generation_prompt=True,
        **kwargs,
    )
    assert full == len(expected["input_ids"])
    rendered = len(json.dumps(TOOLS)) + len("Revenue grew by four percent.")
    assert full > plain + rendered  # one token per character: everything was counted


def test_hf_completion_prompts_are_counted_with_the_tokenizer(hf_dir: Path) -> None:
    """One token per character here: a single prompt and a batch of two."""
    counter = PromptCounter(hf_dir)
    one = counter.measure(CompletionRequest(model=MODEL, prompt="def f(x):"))
    assert (one.tokens, one.longest, one.prompts) == (9, 9, 1)
    batch = counter.measure(CompletionRequest(model=MODEL, prompt=["ab", "cdef"]))
    assert (batch.tokens, batch.longest, batch.prompts) == (6, 4, 2)


def test_a_chat_the_template_refuses_is_counted_from_its_text(hf_dir: Path) -> None:
    """The template raises (two user turns in a row; vLLM will answer 400), yet admission
    still reserves for it: every message's text plus a per-message allowance, and the
    tools, documents and template arguments as JSON."""
    counter = PromptCounter(hf_dir)
    messages = [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]
    base = counter.measure(_chat(messages)).tokens
    assert base == len("first") + len("second") + 2 * PER_MESSAGE_ALLOWANCE
    documents = [{"title": "Q3", "text": "Revenue grew."}]
    kwargs = {"persona": "terse"}
    extras = {"tools": TOOLS, "documents": documents, "chat_template_kwargs": kwargs}
    for name, value in extras.items():
        counted = counter.measure(_chat(messages, **{name: value})).tokens
        assert counted == base + len(json.dumps(value)), name
    everything = counter.measure(_chat(messages, **extras)).tokens
    assert everything == base + sum(len(json.dumps(v)) for v in extras.values())
