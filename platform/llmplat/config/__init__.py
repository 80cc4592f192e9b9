"""Typed models of the YAML in configs/: platform config and model profiles."""

from llmplat.config.loader import ConfigError, LoadedPlatform, load_platform, load_profile
from llmplat.config.platform import PlatformConfig
from llmplat.config.profiles import ModelProfile

__all__ = [
    "ConfigError",
    "LoadedPlatform",
    "ModelProfile",
    "PlatformConfig",
    "load_platform",
    "load_profile",
]
