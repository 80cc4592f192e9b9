"""Offline, deterministic builder for a tiny random-init Mixtral checkpoint that vLLM can serve.

The weights are random (seeded), so generations are gibberish, but the architecture (top-2 MoE,
grouped-query attention, sliding window), the dtype, the file layout and the tokenizer (the real
Mistral v3 sentencepiece vocabulary shipped inside ``mistral_common``) are those of a real Mixtral
instruct checkpoint.  Nothing is downloaded.

Tokenizer parity with mistral_common (checked by tests/unit/models/test_tiny.py):

* Plain text encodes to the same ids as sentencepiece, except text that *starts* with whitespace:
  sentencepiece always adds its dummy-prefix space, Hugging Face's Metaspace pre-tokenizer does not
  when the text already begins with a space (as in every Mistral HF tokenizer).
* Control tokens ([INST], [/INST], [PREFIX], ..., [control_N]) are special tokens, so a rendered
  chat template tokenizes to the same ids as ``MistralTokenizer.encode_chat_completion``.  Raw
  sentencepiece (and mistral_common's text encoding) would instead spell "[INST]" out as text.
* Like mistral_common's v3 tokenizer (and the Mixtral-8x22B-Instruct-v0.1 template), the system
  prompt is prepended to the *last* user message, not the first.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MODEL_DIRNAME = "tiny-mixtral"
MARKER_FILE = "llmplat-model.json"
V3_TOKENIZER_RESOURCE = "data/mistral_instruct_tokenizer_240323.model.v3"

Progress = Callable[[str], None]

# Mistral v3 instruct format, as mistral_common's InstructTokenizerV3 encodes it: every content is
# sentencepiece-encoded with its dummy-prefix space (rendered here as the space after a control
# token), assistant turns are right-stripped of spaces and end with eos, and the system prompt is
# prepended (with a blank line) to the LAST user message, as in Mixtral-8x22B-Instruct-v0.1.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
    "{%- endif %}{%- set ns = namespace(last_user=-1) %}{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}{%- if message['role'] == 'user' %}"
    "{%- if loop.index0 == ns.last_user and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'].rstrip(' ') + eos_token }}{%- else %}"
    "{{- raise_exception('Only system, user and assistant roles are supported!') }}"
    "{%- endif %}{%- endfor %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture and seed of the tiny Mixtral checkpoint."""

    vocab_size: int = 32768
    hidden_size: int = 512
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    sliding_window: int | None = 2048
    max_position_embeddings: int = 4096
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 2
    seed: int = 0

    @property
    def head_dim(self) -> int:
        """Per-head dimension (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    def fingerprint(self) -> str:
        """Stable hash of the spec and of the on-disk format version."""
        payload = {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def v3_tokenizer_path() -> Path:
    """Path of the Mistral v3 sentencepiece model shipped in mistral_common's package data."""
    return Path(str(resources.files("mistral_common").joinpath(V3_TOKENIZER_RESOURCE)))


def _tensor_shapes(spec: TinyModelSpec) -> dict[str, tuple[int, ...]]:
    """Names (classic Hugging Face Mixtral layout, as vLLM loads it) and shapes of all weights."""
    h, kv = spec.hidden_size, spec.num_key_value_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, h)}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (spec.num_attention_heads * spec.head_dim, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, spec.num_attention_heads * spec.head_dim),
            p + "post_attention_layernorm.weight": (h,),
            p + "block_sparse_moe.gate.weight": (spec.num_local_experts, h),
        }
        ff = spec.intermediate_size
        for e in range(spec.num_local_experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            shapes |= {q + "w1.weight": (ff, h), q + "w2.weight": (h, ff), q + "w3.weight": (ff, h)}
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (spec.vocab_size, h)}
    return shapes


def _init_weights(spec: TinyModelSpec) -> dict[str, torch.Tensor]:
    """Seeded weights: N(0, init_std) matrices, unit RMSNorm scales, all bfloat16."""
    import torch

    gen = torch.Generator().manual_seed(spec.seed)  # local generator: no global RNG side effect
    tensors = {}
    for name, shape in _tensor_shapes(spec).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(spec.init_std)
            tensors[name] = t.to(torch.bfloat16)
    return tensors


def _hf_config(spec: TinyModelSpec) -> dict:
    from transformers import MixtralConfig

    skip = ("seed", "init_std", "rope_theta")
    kwargs = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in skip}
    config = MixtralConfig(
        **kwargs,
        head_dim=spec.head_dim,
        initializer_range=spec.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=False,
        architectures=["MixtralForCausalLM"],
        dtype="bfloat16",
    ).to_dict()
    for noise in ("_name_or_path", "id2label", "label2id"):  # generic PretrainedConfig defaults
        config.pop(noise, None)
    return config


def _write_tokenizer(out: Path, spec: TinyModelSpec) -> None:
    """Copy the v3 sentencepiece model and write an equivalent Hugging Face fast tokenizer."""
    from tokenizers import AddedToken
    from transformers import GenerationConfig, LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    from transformers.tokenization_utils_base import generate_merges

    shutil.copyfile(v3_tokenizer_path(), out / "tokenizer.model.v3")
    shutil.copyfile(v3_tokenizer_path(), out / "tokenizer.model")
    pieces = SentencePieceExtractor(str(out / "tokenizer.model")).proto.pieces
    normal, control, user_defined = 1, 3, 4  # sentencepiece ModelProto.SentencePiece.Type
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    # sentencepiece BPE merges by *score*; its whitespace-run pieces have score -1e9 but low ids,
    # so merges ranked by id (the transformers default) would split "    return" differently.
    merges = generate_merges(vocab, {p.piece: p.score for p in pieces if p.type == normal})
    added = [
        AddedToken(p.piece, normalized=False, special=p.type == control)
        for p in pieces
        if p.type in (control, user_defined)
    ]
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        legacy=False,
        add_bos_token=True,
        add_eos_token=False,
        additional_special_tokens=added,
        model_max_length=spec.max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(out, save_jinja_files=False)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _write_json(out / "special_tokens_map.json", special)
    generation = GenerationConfig(bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id)
    generation.save_pretrained(out)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(
    out_dir: Path, spec: TinyModelSpec = TinyModelSpec(), progress: Progress | None = None
) -> Path:
    """Build the checkpoint into a temp dir beside ``out_dir``, then move it into place."""
    from safetensors.torch import save_file

    report = progress or (lambda _msg: None)
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        report("initialising weights")
        tensors = _init_weights(spec)
        size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
        report(f"writing safetensors ({size_mb:.0f} MB)")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)
        del tensors
        report("writing config")
        _write_json(tmp / "config.json", _hf_config(spec))
        report("converting tokenizer")
        _write_tokenizer(tmp, spec)
        report("finalising")
        marker = {
            "fingerprint": spec.fingerprint(),
            "format_version": FORMAT_VERSION,
            "description": "tiny random-init Mixtral (top-2 MoE, GQA, sliding window) with the "
            "Mistral v3 tokenizer; built offline by llmplat.models.tiny; outputs are gibberish",
            "spec": dataclasses.asdict(spec),
        }
        _write_json(tmp / MARKER_FILE, marker)
        os.chmod(tmp, 0o755)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(f"built {out_dir}")
    return out_dir


def read_fingerprint(model_dir: Path) -> str | None:
    """Fingerprint recorded in a built model directory, or None if absent/unreadable."""
    try:
        marker = json.loads((Path(model_dir) / MARKER_FILE).read_text(encoding="utf-8"))
        return str(marker["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_path(models_dir: Path) -> Path:
    """Lock file serialising concurrent ``ensure_tiny_model`` calls on ``models_dir``."""
    return Path(models_dir) / f".{MODEL_DIRNAME}.lock"


def ensure_tiny_model(
    models_dir: Path, spec: TinyModelSpec = TinyModelSpec(), progress: Progress | None = None
) -> Path:
    """Return ``models_dir / "tiny-mixtral"``, (re)building it only if missing or stale."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / MODEL_DIRNAME
    with open(lock_path(models_dir), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        fresh = read_fingerprint(target) == spec.fingerprint()
        if fresh and (target / "model.safetensors").is_file():
            return target
        for stale in models_dir.glob(f".{MODEL_DIRNAME}.*-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        return build_tiny_model(target, spec, progress)
