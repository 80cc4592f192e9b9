"""`helm lint --strict` (Helm's Go library) for the oldest and newest Kubernetes."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest
import yaml

from support import chart
from support.chart_cases import CASES, EVERYTHING_ON, KUBE_VERSIONS


def lint(values: dict, kube_version: str) -> dict:
    return helm.lint(
        str(chart.CHART), values, strict=True, kube_version=f"v{kube_version}", namespace="llmplat"
    )


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_lints_clean_in_strict_mode(case: str, kube_version: str) -> None:
    values = chart.load_values(*CASES[case], overrides=EVERYTHING_ON)
    report = lint(values, kube_version)
    assert report["errors"] == []
    # strict: warnings are failures; only informational notes (e.g. "icon is recommended") pass
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_does_see_broken_values() -> None:
    report = lint({"gateway": {"replicas": "two"}}, KUBE_VERSIONS[0])
    text = str(report)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"])
    assert "replicas" in text


def test_chart_declares_the_oldest_supported_kubernetes() -> None:
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"
    assert Path(chart.CHART / "values.schema.json").is_file()
