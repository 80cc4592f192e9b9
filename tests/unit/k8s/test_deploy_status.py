"""`llmplat deploy status`: the RayService's status through the Kubernetes API (kmock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from llmplat.cli import main
from llmplat.k8s import status
from support.kube_emulator import EmulatorHandle, running_kube_emulator, write_kubeconfig

NS = "llmplat"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kube() -> Iterator[EmulatorHandle]:
    with running_kube_emulator() as handle:
        handle.call(
            lambda: handle.emulator.resources.__setitem__(
                "ray.io/v1/rayservices",
                kmock.ResourceInfo(kind="RayService", singular="rayservice", namespaced=True),
            )
        )
        yield handle


@pytest.fixture
def api(kube: EmulatorHandle) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def rayservice(ready: bool, *, failing: str | None = None, pending: bool = False) -> dict[str, Any]:
    deployments = {
        "Gateway": {"status": "HEALTHY"},
        "LLMServer:mixtral-8x22b-instruct": (
            {"status": "DEPLOY_FAILED", "message": failing} if failing else {"status": "HEALTHY"}
        ),
    }
    cluster = {
        "rayClusterName": "llmplat-x7k2q",
        "rayClusterStatus": {
            "readyWorkerReplicas": 3,
            "desiredWorkerReplicas": 3,
            "minWorkerReplicas": 3,
            "maxWorkerReplicas": 6,
            "desiredGPU": "8",
        },
        "applicationStatuses": {
            "llmplat": {
                "status": "DEPLOY_FAILED" if failing else "RUNNING",
                "serveDeploymentStatuses": deployments,
            }
        },
    }
    obj = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "llmplat", "namespace": NS, "generation": 2},
        "spec": {"serveConfigV2": "applications: []"},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                    "message": "",
                    "lastTransitionTime": "2026-11-23T00:00:00Z",
                }
            ],
            "numServeEndpoints": 3 if ready else 0,
            "observedGeneration": 2,
            "activeServiceStatus": cluster,
        },
    }
    if pending:
        obj["status"]["pendingServiceStatus"] = dict(cluster, rayClusterName="llmplat-p9z1m")
    return obj


def create(api: client.CustomObjectsApi, obj: dict[str, Any]) -> None:
    api.create_namespaced_custom_object("ray.io", "v1", NS, "rayservices", obj)


def test_ready_service_is_summarised(api: client.CustomObjectsApi) -> None:
    create(api, rayservice(True, pending=True))
    summary = status.summarize(status.read_rayservice(api, NS, "llmplat"))
    assert summary.ready and summary.endpoints == 3 and not summary.problems
    text = status.render(summary)
    assert "rayservice llmplat/llmplat: ready, 3 serve endpoint(s)" in text
    assert "active cluster llmplat-x7k2q: 3/3 workers ready (min 3, max 6), GPUs 8" in text
    assert "pending cluster llmplat-p9z1m" in text
    assert "LLMServer:mixtral-8x22b-instruct" in text


def test_failed_deployment_message_is_surfaced(api: client.CustomObjectsApi) -> None:
    create(api, rayservice(False, failing="CUDA out of memory while loading weights"))
    summary = status.summarize(status.read_rayservice(api, NS, "llmplat"))
    assert not summary.ready
    assert summary.problems == [
        "llmplat-x7k2q LLMServer:mixtral-8x22b-instruct: CUDA out of memory while loading weights"
    ]


def test_a_spec_kuberay_has_not_seen_yet_is_a_problem() -> None:
    obj = rayservice(True)
    obj["metadata"]["generation"] = 3
    assert "generation 3, observed 2" in status.summarize(obj).problems[0]


def test_missing_service_is_a_clear_error(api: client.CustomObjectsApi) -> None:
    with pytest.raises(status.StatusError, match="no RayService llmplat/other"):
        status.read_rayservice(api, NS, "other")


def test_cli_exit_status_follows_readiness(
    kube: EmulatorHandle,
    api: client.CustomObjectsApi,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = str(write_kubeconfig(tmp_path / "kubeconfig", kube.url))
    argv = ["deploy", "status", "-n", NS, "--kubeconfig", cfg]
    assert main(argv) == 1
    assert "no RayService llmplat/llmplat" in capsys.readouterr().err
    create(api, rayservice(False, failing="weights not found at /models/x"))
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert "NOT ready" in out and "weights not found at /models/x" in out
    api.delete_namespaced_custom_object("ray.io", "v1", NS, "rayservices", "llmplat")
    create(api, rayservice(True))
    assert main(argv) == 0
