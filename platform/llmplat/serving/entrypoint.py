"""The Serve application on a cluster: ``import_path: llmplat.serving.entrypoint:build_app``.

Ray Serve calls :func:`build_app` with the config's ``args`` (see
:mod:`llmplat.serving.serve_config`) on a node of the cluster. Settings come from that pod's
environment (``LLMPLAT_*``, set by the Helm chart from its ConfigMap). Secrets are not
needed here and not passed on: each gateway replica reads them from files mounted into the
gateway's pods only, and applies the declared teams (see :mod:`gateway_deployment`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.serve.deployment import Application

from llmplat.config.loader import LoadedPlatform
from llmplat.serving.builder import build_application, build_models
from llmplat.serving.serve_config import ServeAppArgs
from llmplat.settings import Settings

log = logging.getLogger("llmplat.entrypoint")


def build_app(args: dict[str, Any]) -> Application:
    """Gateway + one LLMServer deployment per profile, as ``llmplat serve`` builds them."""
    settings = Settings()
    spec = ServeAppArgs.model_validate(args)
    platform = LoadedPlatform(path=Path("serveConfigV2"), profiles=tuple(spec.profiles))
    models = build_models(platform, settings, progress=log.info)
    return build_application(models, settings, secrets_from_environment=True)
