"""What KubeRay says about a RayService: conditions, clusters, Serve applications.

``helm status`` knows only that the objects were applied; whether the model loaded, which
RayCluster serves, whether an upgrade is rolling and why a deployment failed live in the
RayService's status, which KubeRay fills from Ray Serve. This reads and summarises it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from llmplat.auth.kube_store import kube_configuration

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
_HEALTHY = {"RUNNING", "HEALTHY"}


class StatusError(RuntimeError):
    """The RayService could not be read; the message says why."""


def custom_objects_api(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """In-cluster credentials inside a pod, else the kubeconfig (the file given,
    ``$KUBECONFIG`` or ``~/.kube/config``)."""
    try:
        cfg = kube_configuration(kubeconfig, context)
    except (config.ConfigException, OSError, ValueError) as exc:
        raise StatusError(f"no Kubernetes configuration (kubeconfig or in-cluster): {exc}") from exc
    return client.CustomObjectsApi(client.ApiClient(cfg))


def read_rayservice(api: Any, namespace: str, name: str) -> dict[str, Any]:
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            raise StatusError(
                f"no RayService {namespace}/{name} (is the release installed? "
                f"`helm list -n {namespace}`; the name is the release's, see --name)"
            ) from exc
        raise StatusError(
            f"reading RayService {namespace}/{name}: {exc.status} {exc.reason}"
        ) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise StatusError(f"cannot reach the Kubernetes API: {exc}") from exc


@dataclass
class ClusterSummary:
    name: str
    role: str  # active | pending
    workers: str
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ServiceSummary:
    namespace: str
    name: str
    ready: bool
    conditions: list[dict[str, Any]]
    endpoints: int
    generation: int | None
    observed_generation: int | None
    clusters: list[ClusterSummary]
    problems: list[str]


def _cluster(role: str, status: dict[str, Any] | None) -> ClusterSummary | None:
    if not status or not status.get("rayClusterName"):
        return None
    rc = status.get("rayClusterStatus") or {}
    workers = (
        f"{rc.get('readyWorkerReplicas', 0)}/{rc.get('desiredWorkerReplicas', 0)} workers ready "
        f"(min {rc.get('minWorkerReplicas', 0)}, max {rc.get('maxWorkerReplicas', 0)}), "
        f"GPUs {rc.get('desiredGPU', 0)}"
    )
    return ClusterSummary(
        status["rayClusterName"], role, workers, status.get("applicationStatuses") or {}
    )


def summarize(obj: dict[str, Any]) -> ServiceSummary:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    conditions = status.get("conditions") or []
    ready_cond = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready_cond is not None:
        ready = ready_cond.get("status") == "True"
    else:  # KubeRay before conditions: serviceStatus only
        ready = status.get("serviceStatus") == "Running"
    clusters = [
        c
        for c in (
            _cluster("active", status.get("activeServiceStatus")),
            _cluster("pending", status.get("pendingServiceStatus")),
        )
        if c is not None
    ]
    problems = []
    for c in clusters:
        for app_name, app in c.applications.items():
            if app.get("status") not in _HEALTHY and app.get("message"):
                problems.append(f"{c.name} application {app_name}: {app['message']}")
            for dep_name, dep in (app.get("serveDeploymentStatuses") or {}).items():
                if dep.get("status") not in _HEALTHY and dep.get("message"):
                    problems.append(f"{c.name} {dep_name}: {dep['message']}")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        problems.append(
            f"KubeRay has not acted on the latest spec yet (generation {generation}, "
            f"observed {observed})"
        )
    return ServiceSummary(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        ready=ready,
        conditions=conditions,
        endpoints=int(status.get("numServeEndpoints") or 0),
        generation=generation,
        observed_generation=observed,
        clusters=clusters,
        problems=problems,
    )


def render(s: ServiceSummary) -> str:
    lines = [
        f"rayservice {s.namespace}/{s.name}: {'ready' if s.ready else 'NOT ready'}, "
        f"{s.endpoints} serve endpoint(s)"
    ]
    if s.conditions:
        lines.append("conditions:")
        for c in s.conditions:
            lines.append(
                f"  {c.get('type', '?'):20} {c.get('status', '?'):7} {c.get('reason', ''):28} "
                f"{c.get('message', '')}".rstrip()
            )
    for c in s.clusters:
        lines.append(f"{c.role} cluster {c.name}: {c.workers}")
        for app_name, app in c.applications.items():
            lines.append(f"  application {app_name}: {app.get('status', '?')}")
            for dep_name, dep in (app.get("serveDeploymentStatuses") or {}).items():
                lines.append(f"    {dep_name:40} {dep.get('status', '?')}")
    if not s.clusters:
        lines.append("no Ray cluster yet (KubeRay is creating it, or the operator is not running)")
    if s.problems:
        lines.append("problems:")
        lines.extend(f"  {p}" for p in s.problems)
    return "\n".join(lines)
