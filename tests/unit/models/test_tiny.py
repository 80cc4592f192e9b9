"""Unit tests for the offline tiny Mixtral builder (llmplat.models.tiny)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from llmplat.models.tiny import (
    MARKER_FILE,
    MODEL_DIRNAME,
    TinyModelSpec,
    build_tiny_model,
    ensure_tiny_model,
    lock_path,
    read_fingerprint,
    v3_tokenizer_path,
)

pytestmark = pytest.mark.timeout(300)

# Plain texts on which the HF fast tokenizer must agree with sentencepiece / mistral_common.
# (None starts with whitespace: there HF's Metaspace adds no dummy-prefix space but sentencepiece
# does; see the llmplat.models.tiny docstring.)
PLAIN_TEXTS = [
    "Hello world",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):  # tab-indented, trailing spaces   \n\t\tpass\n\n\n",
    "naïve café — 日本語のテキスト 🚀 ∑(x²) Ünïcödé",
    "x    y      z\n\n    indented line",
    "numbers 1234567 and 3.14159, emails a.b@c.de",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def progress_log() -> list[str]:
    return []


@pytest.fixture(scope="module")
def model_dir(models_dir: Path, progress_log: list[str]) -> Path:
    return ensure_tiny_model(models_dir, progress=progress_log.append)


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def mistral_tokenizer(model_dir: Path):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(model_dir / "tokenizer.model.v3"))


def test_layout_and_progress(model_dir: Path, progress_log: list[str]) -> None:
    assert model_dir.name == MODEL_DIRNAME
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.model.v3",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        MARKER_FILE,
    ):
        assert (model_dir / name).is_file(), name
    assert not [p for p in model_dir.parent.iterdir() if ".build-" in p.name or ".old-" in p.name]
    assert progress_log[0] == "initialising weights"
    assert any(m.startswith("writing safetensors (") and m.endswith(" MB)") for m in progress_log)
    assert "converting tokenizer" in progress_log
    marker = json.loads((model_dir / MARKER_FILE).read_text())
    assert marker["fingerprint"] == TinyModelSpec().fingerprint() and marker["description"]


def test_config_fields(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    assert cfg["num_local_experts"] == 8 and cfg["num_experts_per_tok"] == 2
    assert cfg["num_key_value_heads"] == 2 < cfg["num_attention_heads"] == 8
    assert cfg["sliding_window"] == 2048 < cfg["max_position_embeddings"]
    assert cfg["vocab_size"] == 32768 and cfg["hidden_size"] == 512
    assert cfg["num_hidden_layers"] == 4 and cfg["intermediate_size"] == 1024
    assert cfg["tie_word_embeddings"] is False and cfg["dtype"] == "bfloat16"
    assert cfg["rope_parameters"]["rope_theta"] == 1e6
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)
    assert str(model_dir.parent) not in "".join(
        (model_dir / n).read_text() for n in ("config.json", "tokenizer_config.json", MARKER_FILE)
    )


def test_weights_bfloat16_and_size(model_dir: Path) -> None:
    import torch
    from safetensors import safe_open

    path = model_dir / "model.safetensors"
    assert path.stat().st_size <= 200 * 1024 * 1024
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        assert "model.layers.3.block_sparse_moe.experts.7.w2.weight" in keys
        assert "lm_head.weight" in keys and "model.embed_tokens.weight" in keys
        for key in keys:
            assert f.get_slice(key).get_dtype() == "BF16", key
        assert f.get_tensor("model.layers.0.self_attn.k_proj.weight").shape == (128, 512)
        assert f.get_tensor("model.layers.0.block_sparse_moe.gate.weight").dtype == torch.bfloat16


def test_deterministic_build(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", TinyModelSpec(seed=0))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert _sha256(again / name) == _sha256(model_dir / name), name


def test_ensure_does_not_rebuild(model_dir: Path, models_dir: Path) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    calls: list[str] = []
    assert ensure_tiny_model(models_dir, progress=calls.append) == model_dir
    assert calls == [] and (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_ensure_waits_for_lock(model_dir: Path, models_dir: Path) -> None:
    result: list[Path] = []
    with open(lock_path(models_dir), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: result.append(ensure_tiny_model(models_dir)))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and not result  # blocked behind our lock
    worker.join(timeout=30)
    assert result == [model_dir]


def test_ensure_rebuilds_on_fingerprint_mismatch_and_seed_changes_weights(
    model_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "models"
    shutil.copytree(model_dir, other / MODEL_DIRNAME)
    marker = other / MODEL_DIRNAME / MARKER_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "stale"}))
    leftover = other / f".{MODEL_DIRNAME}.build-killed"  # as left by a build that was SIGKILLed
    leftover.mkdir()
    spec = TinyModelSpec(seed=1)
    assert spec.fingerprint() != TinyModelSpec().fingerprint()
    calls: list[str] = []
    rebuilt = ensure_tiny_model(other, spec, progress=calls.append)
    assert calls and read_fingerprint(rebuilt) == spec.fingerprint() and not leftover.exists()
    assert _sha256(rebuilt / "model.safetensors") != _sha256(model_dir / "model.safetensors")


def test_fingerprint_is_stable() -> None:
    assert TinyModelSpec().fingerprint() == TinyModelSpec(seed=0).fingerprint()
    assert TinyModelSpec().fingerprint() != TinyModelSpec(sliding_window=None).fingerprint()


def test_tokenizer_files_are_the_v3_model(model_dir: Path) -> None:
    source = v3_tokenizer_path().read_bytes()
    assert (model_dir / "tokenizer.model.v3").read_bytes() == source
    assert (model_dir / "tokenizer.model").read_bytes() == source


@pytest.mark.parametrize("text", PLAIN_TEXTS)
def test_hf_matches_sentencepiece(hf_tokenizer, mistral_tokenizer, text: str) -> None:
    sp = mistral_tokenizer.instruct_tokenizer.tokenizer
    expected = sp.encode(text, bos=False, eos=False)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == expected
    assert hf_tokenizer.encode(text) == sp.encode(text, bos=True, eos=False)


def test_control_tokens_are_special(hf_tokenizer) -> None:
    expected = {
        "<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 5,
        "[AVAILABLE_TOOLS]": 6, "[/AVAILABLE_TOOLS]": 7, "[TOOL_RESULTS]": 8,
        "[/TOOL_RESULTS]": 9, "[PREFIX]": 11, "[MIDDLE]": 12, "[SUFFIX]": 13,
        "[control_12]": 14, "[control_748]": 750,
    }  # fmt: skip
    for token, token_id in expected.items():
        assert hf_tokenizer.convert_tokens_to_ids(token) == token_id
        assert token_id in hf_tokenizer.all_special_ids, token
        assert hf_tokenizer.encode(f"a{token}b", add_special_tokens=False)[1:2] == [token_id]


def _chat_ids(hf_tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False)
    return hf_tokenizer(text, add_special_tokens=False).input_ids


def _mistral_ids(mistral_tokenizer, messages: list[dict[str, str]]) -> list[int]:
    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    msgs = [kinds[m["role"]](content=m["content"]) for m in messages]
    return mistral_tokenizer.encode_chat_completion(ChatCompletionRequest(messages=msgs)).tokens


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
        [
            {"role": "user", "content": "Write fib."},
            {"role": "assistant", "content": "def fib(n):\n    return n  "},
            {"role": "user", "content": "Now in 日本語, please."},
        ],
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "A"},
            {"role": "assistant", "content": "B"},
            {"role": "user", "content": "C"},
        ],
    ],
    ids=["system+user", "user/assistant/user", "system+user/assistant/user"],
)
def test_chat_template_matches_mistral_common(hf_tokenizer, mistral_tokenizer, messages) -> None:
    ids = _chat_ids(hf_tokenizer, messages)
    assert ids == _mistral_ids(mistral_tokenizer, messages)
    assert ids[:2] == [1, 3] and ids[-1] == 4


def test_chat_template_rejects_bad_order(hf_tokenizer) -> None:
    from jinja2 import TemplateError

    with pytest.raises(TemplateError, match="alternate"):
        hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tokenize=False
        )


def test_built_model_ships_the_fim_tokenizer_the_gateway_uses(model_dir: Path) -> None:
    """The gateway finds the v3 tokenizer next to the weights and encodes FIM natively:
    <s>[SUFFIX]suffix[PREFIX]prefix, as Mistral's reference encoder does."""
    from llmplat.gateway.fim import load_fim_encoder

    encoder = load_fim_encoder(model_dir)
    assert encoder is not None
    raw = encoder.encode("def f(", "return 1")
    from mistral_common.protocol.fim.request import FIMRequest

    reference = MistralTokenizer.from_file(str(model_dir / "tokenizer.model.v3"))
    expected = reference.encode_fim(FIMRequest(prompt="def f(", suffix="return 1")).tokens
    assert raw == expected and raw[:2] == [1, 13] and 11 in raw  # <s>[SUFFIX]…[PREFIX]…


def test_transformers_forward_pass(model_dir: Path, hf_tokenizer) -> None:
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    assert model.config.sliding_window == 2048 and model.config.num_experts_per_tok == 2
    ids = torch.tensor([hf_tokenizer.encode("def fibonacci(n):\n    return n")])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 32768)
    assert torch.isfinite(logits.float()).all()
