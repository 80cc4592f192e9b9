"""What to plan for: a model profile (or a bare ``config.json``) → shapes and engine choices."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from llmplat.config.loader import ConfigError, load_profile, resolve_profile_path
from llmplat.config.profiles import BUILTIN_PREFIX, ModelProfile
from llmplat.planner.geometry import GeometryError, ModelGeometry, normalize_dtype
from llmplat.planner.layouts import EngineChoices, Layout


@dataclass(frozen=True)
class PlanTarget:
    """A model's shapes, where they came from, and the profile (if planning one)."""

    geometry: ModelGeometry
    shapes_from: str
    profile: ModelProfile | None = None


def _read_config(path: Path, name: str) -> ModelGeometry:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GeometryError(f"{path}: cannot read the model config: {exc}") from exc
    try:
        return ModelGeometry.from_hf_config(data, name=name)
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from exc


def builtin_geometry(name: str) -> ModelGeometry:
    """Shapes of a model llmplat builds itself, from its builder's spec."""
    if name != "tiny-mixtral":
        raise GeometryError(f"unknown builtin model {name!r}")
    from llmplat.models.tiny import TinyModelSpec

    spec = TinyModelSpec()
    return ModelGeometry.from_hf_config(
        {**dataclasses.asdict(spec), "head_dim": spec.head_dim}, name=name
    )


def profile_geometry(profile: ModelProfile, profile_dir: Path) -> tuple[ModelGeometry, str]:
    if profile.hf_config:
        path = (profile_dir / profile.hf_config).resolve()
        return _read_config(path, profile.model_id), str(path)
    if profile.is_builtin:
        name = profile.source.removeprefix(BUILTIN_PREFIX)
        return builtin_geometry(name), f"the {name} builder"
    path = Path(profile.source).expanduser() / "config.json"
    if not path.is_file():
        raise GeometryError(
            f"profile {profile.name!r}: no {path}; mount the weights or set `hf_config` to a "
            "copy of the model's config.json"
        )
    return _read_config(path, profile.model_id), str(path)


def load_target(ref: str, config_dir: Path) -> PlanTarget:
    """``ref``: a profile name or file, a ``config.json``, or a folder holding one."""
    path = Path(ref).expanduser()
    if path.suffix == ".json" or (path.is_dir() and (path / "config.json").is_file()):
        config = path if path.suffix == ".json" else path / "config.json"
        name = config.parent.name if config.name == "config.json" else config.stem
        return PlanTarget(_read_config(config, name), str(config))
    try:
        profile = load_profile(ref, config_dir)
    except ConfigError as exc:
        raise GeometryError(str(exc)) from exc
    profile_dir = resolve_profile_path(ref, config_dir).parent
    geometry, shapes_from = profile_geometry(profile, profile_dir)
    return PlanTarget(geometry, shapes_from, profile)


def engine_choices(
    target: PlanTarget,
    *,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    min_seqs: int | None = None,
) -> EngineChoices:
    """The profile's engine settings (or vLLM's defaults), overridden where given."""
    defaults = EngineChoices(max_model_len=target.geometry.max_position_embeddings)
    p = target.profile
    if p is not None:
        eng = p.engine
        activations = normalize_dtype(eng.dtype)
        weights = "fp8" if eng.quantization == "fp8" else activations
        kv = activations if eng.kv_cache_dtype == "auto" else normalize_dtype(eng.kv_cache_dtype)
        defaults = EngineChoices(
            max_model_len=eng.max_model_len,
            weights=weights,
            activations=activations,
            kv=kv,
            gpu_memory_utilization=eng.gpu_memory_utilization,
            max_num_batched_tokens=eng.max_num_batched_tokens,
            max_num_seqs=eng.max_num_seqs,
            enforce_eager=eng.enforce_eager,
        )
    changes: dict[str, object] = {}
    if dtype is not None:
        changes["weights"] = normalize_dtype(dtype)
    if kv_dtype is not None:
        changes["kv"] = normalize_dtype(kv_dtype)
    if max_model_len is not None:
        changes["max_model_len"] = max_model_len
    if gpu_memory_utilization is not None:
        changes["gpu_memory_utilization"] = gpu_memory_utilization
    if min_seqs is not None:
        changes["min_seqs"] = min_seqs
    return dataclasses.replace(defaults, **changes)


def profile_layout(profile: ModelProfile) -> Layout:
    eng = profile.engine
    return Layout(eng.tensor_parallel_size, eng.pipeline_parallel_size, eng.enable_expert_parallel)
