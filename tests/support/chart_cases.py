"""What the chart tests render: the defaults, every values file, every optional object on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from support import chart

KUBE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known."""

CASES: dict[str, tuple[Path, ...]] = {"default": ()} | {p.stem: (p,) for p in chart.values_files()}
"""Values the chart is rendered with: its defaults, then each layout file on top."""

EVERYTHING_ON: dict[str, Any] = {
    "monitoring": {
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    },
    "gateway": {"ingress": {"enabled": True}},
    "teams": [
        {
            "name": "ci",
            "models": ["mixtral-8x22b-instruct"],
            "priorityClass": "batch",
            "maxTokensCap": 512,
            "limits": {"requestsPerMinute": 60, "tokensPerDay": 1000000},
        }
    ],
}
"""Every optional object switched on, so that validation and checkov see all of them."""

requires_crds = pytest.mark.skipif(
    not chart.CRDS.is_dir(),
    reason=f"KubeRay CRDs not found at {chart.CRDS} (../shared/crds beside the repository); "
    "RayService/RayCluster schema validation needs them",
)
