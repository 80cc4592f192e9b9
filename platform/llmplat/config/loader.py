"""Load YAML into the typed config models with errors that name the file and the field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from llmplat.config.platform import PlatformConfig
from llmplat.config.profiles import ModelProfile

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the fields."""


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {field}: {e['msg']}")
    return "\n".join(lines)


def load_yaml_model(path: Path, model: type[M]) -> M:
    """Parse ``path`` as YAML and validate it as ``model``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc)) from exc


def resolve_profile_path(ref: str, config_dir: Path, relative_to: Path | None = None) -> Path:
    """A profile reference is a name in ``<config_dir>/models`` or a path to a YAML file."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        return path
    return config_dir / "models" / f"{ref}.yaml"


def load_profile(ref: str, config_dir: Path, relative_to: Path | None = None) -> ModelProfile:
    path = resolve_profile_path(ref, config_dir, relative_to)
    if not path.exists():
        known = sorted(p.stem for p in (config_dir / "models").glob("*.yaml"))
        raise ConfigError(f"model profile {ref!r} not found at {path}; known: {', '.join(known)}")
    return load_yaml_model(path, ModelProfile)


@dataclass(frozen=True)
class LoadedPlatform:
    """A platform config with its profiles resolved and validated."""

    path: Path
    profiles: tuple[ModelProfile, ...]


def load_platform(path: Path, config_dir: Path) -> LoadedPlatform:
    """Load a platform config and every profile it names; model ids must be unique."""
    cfg = load_yaml_model(path, PlatformConfig)
    profiles = tuple(load_profile(ref, config_dir, path.parent) for ref in cfg.models)
    seen: dict[str, str] = {}
    for p in profiles:
        if p.model_id in seen:
            raise ConfigError(
                f"{path}: models: profiles {seen[p.model_id]!r} and {p.name!r} "
                f"both serve model_id {p.model_id!r}"
            )
        seen[p.model_id] = p.name
    return LoadedPlatform(path=path, profiles=profiles)
