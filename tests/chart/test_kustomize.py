"""`kubectl kustomize` of every overlay: valid objects, and exactly what Helm renders for the
same layout (so the overlays cannot drift from the chart)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from support import chart
from support.chart_cases import KUBE_VERSIONS, requires_crds

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed (`make system-deps` installs it)"
)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(chart.KUSTOMIZE / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize(overlay) for overlay in chart.OVERLAYS}


def test_every_overlay_folder_is_tested() -> None:
    assert {p.name for p in (chart.KUSTOMIZE / "overlays").iterdir()} == set(chart.OVERLAYS)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_builtin_objects_validate(overlays, kube_version: str) -> None:
    for docs in overlays.values():
        for doc in filter(chart.is_builtin, docs):
            chart.validate_builtin(doc, kube_version)


@requires_crds
def test_rayservices_validate_against_the_crds(overlays) -> None:
    for overlay, docs in overlays.items():
        assert chart.crd_errors(chart.find(docs, "RayService")) == [], overlay


def _without_layout_label(doc: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(doc))
    doc["metadata"].get("labels", {}).pop("llmplat.io/layout", None)
    return doc


@pytest.mark.parametrize("overlay", list(chart.OVERLAYS))
def test_overlay_is_what_helm_renders_for_its_layout(overlays, overlay: str) -> None:
    docs = overlays[overlay]
    assert all(d["metadata"]["labels"]["llmplat.io/layout"] == overlay for d in docs)
    helm_docs = chart.render(
        chart.VALUES_DIR / chart.OVERLAYS[overlay], overrides=chart.KUSTOMIZE_VALUES
    )
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(_without_layout_label, docs), key=key) == sorted(helm_docs, key=key)
