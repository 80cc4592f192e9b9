"""The Ray Serve config (``serveConfigV2`` of the chart's RayService) from model profiles.

On a cluster, KubeRay hands this config to Ray Serve, which imports :data:`ENTRYPOINT` and
calls it with ``args``; that builds the same application ``llmplat serve`` builds locally
(:mod:`llmplat.serving.builder`) from the same profiles, through the same LLMConfig code. The
profiles travel whole in ``args``, so the RayService shows every engine and serving setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmplat.config.platform import repeated
from llmplat.config.profiles import ModelProfile
from llmplat.local.runtime import APP_NAME

ENTRYPOINT = "llmplat.serving.entrypoint:build_app"
SERVE_PORT = 8000
"""Port of Ray Serve's HTTP proxy on every Ray pod (KubeRay's 'serve' port)."""


class ServeAppArgs(BaseModel):
    """``args`` of the application in the Serve config: the model profiles to serve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[ModelProfile] = Field(..., min_length=1)

    @field_validator("profiles")
    @classmethod
    def _unique_model_ids(cls, profiles: list[ModelProfile]) -> list[ModelProfile]:
        if dupes := repeated(p.model_id for p in profiles):
            raise ValueError(f"model_id served by more than one profile: {dupes}")
        return profiles


def serve_app_args(profiles: Sequence[ModelProfile]) -> dict[str, Any]:
    args = ServeAppArgs(profiles=list(profiles))
    return args.model_dump(mode="json", exclude_none=True)


def serve_config(profiles: Sequence[ModelProfile], *, log_level: str = "INFO") -> dict[str, Any]:
    """The whole Serve config: one application (gateway + one LLMServer per profile) at '/'.

    Proxies run on every node that hosts a replica, on :data:`SERVE_PORT`; access logs are
    off (the gateway writes one audit line per request itself), as in ``llmplat serve``.
    """
    from ray.serve.schema import ServeDeploySchema

    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "logging_config": {"enable_access_log": False, "log_level": log_level},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": ENTRYPOINT,
                "args": serve_app_args(profiles),
            }
        ],
    }
    ServeDeploySchema.model_validate(config)  # what Ray Serve will accept, checked now
    return config
