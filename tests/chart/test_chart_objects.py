"""Every rendered object is valid: built-in kinds against Kubernetes' OpenAPI schemas (strict),
RayService and RayCluster against KubeRay's CRDs, monitoring objects against their sources."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support import chart
from support.chart_cases import CASES, KUBE_VERSIONS, requires_crds


def builtin_docs(rendered_all_on: dict[str, list[dict[str, Any]]]):
    for case, docs in rendered_all_on.items():
        for doc in docs:
            if chart.is_builtin(doc):
                yield case, doc


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_builtin_objects_pass_strict_openapi_validation(rendered_all_on, kube_version) -> None:
    checked = set()
    for _case, doc in builtin_docs(rendered_all_on):
        chart.validate_builtin(doc, kube_version)
        checked.add(doc["kind"])
    assert checked >= {
        "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy",
        "PodDisruptionBudget", "Ingress", "Deployment", "Service",
    }  # fmt: skip


def test_strict_validation_is_live() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Alway"}]},
                "replica": 1,
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        chart.validate_builtin(deployment, KUBE_VERSIONS[-1])


def rayservices(rendered_all_on):
    return [(case, chart.find(docs, "RayService")) for case, docs in rendered_all_on.items()]


def as_raycluster(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster KubeRay makes of the RayService's rayClusterConfig."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": f"{rayservice['metadata']['name']}-abcde"},
        "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"]),
    }


@requires_crds
def test_rayservices_and_their_clusters_match_the_kuberay_crds(rendered_all_on) -> None:
    for case, rs in rayservices(rendered_all_on):
        assert chart.crd_errors(rs) == [], case
        assert chart.crd_errors(as_raycluster(rs)) == [], case


@requires_crds
def test_crd_validation_is_live(rendered_all_on) -> None:
    _, rs = rayservices(rendered_all_on)[0]
    broken = copy.deepcopy(rs)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 1
    broken["spec"]["rayClusterConfig"]["autoscalerOptions"]["upscalingMode"] = "Eager"
    errors = chart.crd_errors(broken)
    assert any("'replica' was unexpected" in e for e in errors)
    assert any("upscalingMode" in e for e in errors)


def test_prometheus_rule_and_dashboards_are_the_deploy_files(rendered_all_on) -> None:
    deploy = chart.REPO / "deploy"
    rules = yaml.safe_load((deploy / "prometheus" / "rules.yaml").read_text())
    for docs in rendered_all_on.values():
        assert chart.find(docs, "PrometheusRule")["spec"] == rules
        dashboards = {
            key: value
            for d in docs
            if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
            for key, value in d["data"].items()
        }
        expected = {
            p.name: p.read_text() for p in (deploy / "grafana" / "dashboards").glob("*.json")
        }
        assert {k: v.rstrip("\n") for k, v in dashboards.items()} == {
            k: v.rstrip("\n") for k, v in expected.items()
        }
        pod_monitors = [d for d in docs if d["kind"] == "PodMonitor"]
        assert {m["spec"]["podMetricsEndpoints"][0]["port"] for m in pod_monitors} == {
            "metrics",
            "gateway-metrics",
        }


@pytest.mark.parametrize("case", list(CASES))
def test_every_object_is_namespaced_and_labelled(rendered_all_on, case) -> None:
    for doc in rendered_all_on[case]:
        meta = doc["metadata"]
        # the key store's Role and RoleBinding sit in its namespace of its own
        keys = doc["kind"] in ("Role", "RoleBinding") and meta["name"] == "llmplat-keystore"
        assert meta["namespace"] == ("llmplat-keys" if keys else "llmplat"), (
            doc["kind"],
            meta["name"],
        )
        assert meta["labels"]["app.kubernetes.io/instance"] == "llmplat"
