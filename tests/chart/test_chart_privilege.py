"""Least privilege (issue 27): the gateway's Role reaches the key Secrets and nothing else, the
public Ingress leaves /admin alone unless asked, every scratch volume has a size limit, and the
audit log reaches the cluster's log pipeline (the gateway pods' `audit` container). The threat
table of helm/llmplat/README.md names these tests."""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from support import chart
from support.chart_cases import CASES

RELEASE_NS = chart.NAMESPACE
KEYS_NS = f"{RELEASE_NS}-keys"


# --- RBAC ---------------------------------------------------------------------------------


def grants_secrets(rule: dict[str, Any]) -> bool:
    """Whether an RBAC rule covers core Secrets (wildcards included)."""
    return bool({"", "*"} & set(rule.get("apiGroups", []))) and bool(
        {"secrets", "*"} & set(rule.get("resources", []))
    )


def secret_grants(docs: list[dict[str, Any]], account: str) -> dict[str, set[str]]:
    """Namespace → verbs on Secrets that the account holds through the rendered RoleBindings
    (and ClusterRoleBindings, of which the chart has none)."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules", [])
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    out: dict[str, set[str]] = {}
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == account
            and s.get("namespace") == RELEASE_NS
            for s in b.get("subjects", [])
        ):
            continue
        ref = b["roleRef"]
        namespace = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        for rule in roles[(ref["kind"], namespace, ref["name"])]:
            if grants_secrets(rule):
                out.setdefault(namespace or "*", set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_the_gateway_reaches_secrets_of_the_key_namespace_only(rendered_all_on, case) -> None:
    docs = rendered_all_on[case]
    assert secret_grants(docs, "llmplat-gateway") == {
        KEYS_NS: {"get", "list", "watch", "create", "update", "delete"}
    }
    for role in ("head", "model"):
        assert secret_grants(docs, f"llmplat-{role}") == {}
    # the gateway looks for its keys where its Role is
    rs = chart.find(docs, "RayService")["spec"]["rayClusterConfig"]
    for group in rs["workerGroupSpecs"]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["LLMPLAT_KEYSTORE__NAMESPACE"]["value"] == KEYS_NS


@pytest.mark.parametrize("case", list(CASES))
def test_no_role_of_the_release_namespace_grants_secrets(rendered_all_on, case) -> None:
    docs = rendered_all_on[case]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    in_release = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == RELEASE_NS
    ]
    assert [r["metadata"]["name"] for r in in_release if any(map(grants_secrets, r["rules"]))] == []


def test_the_key_namespace_is_a_value_and_created_only_on_request() -> None:
    docs = chart.render(overrides={"keyStore": {"namespace": "team-keys"}})
    assert secret_grants(docs, "llmplat-gateway").keys() == {"team-keys"}
    assert not [d for d in docs if d["kind"] == "Namespace"]
    docs = chart.render(overrides={"keyStore": {"createNamespace": True}})
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == KEYS_NS
    # helm uninstall leaves it, with the team keys in it
    assert namespace["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_keys_in_the_release_namespace_need_consent() -> None:
    with pytest.raises(helm.HelmError, match="keyStore.allowReleaseNamespace"):
        chart.render_raw(chart.load_values(overrides={"keyStore": {"namespace": RELEASE_NS}}))
    docs = chart.render(
        overrides={"keyStore": {"namespace": RELEASE_NS, "allowReleaseNamespace": True}}
    )
    assert secret_grants(docs, "llmplat-gateway").keys() == {RELEASE_NS}
    # createNamespace never makes (or keeps) the release's own namespace
    docs = chart.render(
        overrides={
            "keyStore": {
                "namespace": RELEASE_NS,
                "allowReleaseNamespace": True,
                "createNamespace": True,
            }
        }
    )
    assert not [d for d in docs if d["kind"] == "Namespace"]


# --- Ingress ------------------------------------------------------------------------------


def routes(ingress: dict[str, Any], path: str) -> bool:
    """Whether an Ingress routes ``path`` (Kubernetes' rules: Exact is equality, Prefix
    matches whole path elements; ImplementationSpecific is not used by this chart)."""
    elements = [e for e in path.split("/") if e]
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["pathType"] in ("Exact", "Prefix"), p
            if p["pathType"] == "Exact" and p["path"] == path:
                return True
            prefix = [e for e in p["path"].split("/") if e]
            if p["pathType"] == "Prefix" and elements[: len(prefix)] == prefix:
                return True
    return False


PUBLIC = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/usage",
    "/healthz",
    "/readyz",
]
ADMIN = ["/admin", "/admin/teams", "/admin/keys/k1/revoke", "/admin/status"]


@pytest.mark.parametrize("case", list(CASES))
def test_the_ingress_does_not_route_admin_by_default(rendered_all_on, case) -> None:
    ingress = chart.find(rendered_all_on[case], "Ingress")
    assert all(routes(ingress, p) for p in PUBLIC)
    assert not any(routes(ingress, p) for p in ADMIN + ["/", "/metrics", "/v1x", "/adminx"])


def test_the_ingress_routes_admin_when_asked() -> None:
    docs = chart.render(overrides={"gateway": {"ingress": {"enabled": True, "exposeAdmin": True}}})
    ingress = chart.find(docs, "Ingress")
    assert all(routes(ingress, p) for p in PUBLIC + ADMIN)
    assert not routes(ingress, "/metrics")


# --- scratch volumes ----------------------------------------------------------------------


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the chart renders: the RayService's groups and each workload's."""
    out = {}
    for d in docs:
        if d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            out["head"] = cluster["headGroupSpec"]["template"]["spec"]
            for g in cluster["workerGroupSpecs"]:
                out[g["groupName"]] = g["template"]["spec"]
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            out[d["metadata"]["name"]] = d["spec"]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_every_empty_dir_has_a_size_limit(rendered_all_on, case) -> None:
    specs = pod_specs(rendered_all_on[case])
    assert {"head", "gateway", "model"} <= set(specs)  # and Redis, where bundled
    for where, spec in specs.items():
        for v in spec.get("volumes", []):
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), (where, v["name"])


@pytest.mark.parametrize("case", list(CASES))
def test_ray_writes_into_sized_volumes_only(rendered_all_on, case) -> None:
    """KubeRay adds an emptyDir without a limit at /tmp/ray (the head's and the autoscaler's
    logs) unless the container already mounts that path: every Ray container, and the
    autoscaler, mount /tmp/ray from the chart's sized volume."""
    rs = chart.find(rendered_all_on[case], "RayService")["spec"]["rayClusterConfig"]
    specs = pod_specs(rendered_all_on[case])
    for role in ("head", "gateway", "model"):
        spec = specs[role]
        sized = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        for path in ("/tmp", "/tmp/ray", "/var/lib/llmplat", "/dev/shm"):
            assert mounts.get(path) in sized, (role, path)
    if rs["enableInTreeAutoscaling"]:
        mounts = {m["mountPath"]: m["name"] for m in rs["autoscalerOptions"]["volumeMounts"]}
        assert mounts["/tmp/ray"] == "ray-logs"


def test_scratch_sizes_come_from_values() -> None:
    docs = chart.render(
        overrides={"scratch": {"model": {"rayLogs": "50Gi", "home": "20Gi"}, "redis": "8Mi"}}
    )
    specs = pod_specs(docs)
    model = {v["name"]: v for v in specs["model"]["volumes"]}
    assert model["ray-logs"]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert model["home"]["emptyDir"] == {"sizeLimit": "20Gi"}
    redis = {v["name"]: v for v in specs["llmplat-redis"]["volumes"]}
    assert redis["data"]["emptyDir"] == {"sizeLimit": "8Mi"}
    with pytest.raises(helm.HelmValuesError, match="/scratch/gateway/tmp"):
        chart._chart().validate_schema({"scratch": {"gateway": {"tmp": "big"}}})


# --- audit --------------------------------------------------------------------------------


def audit_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = pod_specs(docs)["gateway"]
    (sidecar,) = [c for c in spec.get("initContainers", []) if c["name"] == "audit"]
    return sidecar


@pytest.mark.parametrize("case", list(CASES))
def test_the_audit_log_is_the_pipe_the_audit_container_streams(rendered, case) -> None:
    docs = rendered[case]
    sink = chart.find(docs, "ConfigMap", "llmplat-env")["data"]["LLMPLAT_AUDIT__SINK"]
    specs = pod_specs(docs)
    gateway = specs["gateway"]
    sidecar = audit_container(docs)
    # a native sidecar (Kubernetes >= 1.29): runs beside the Ray container, restarted alone
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"] and sidecar["livenessProbe"]
    assert {"cpu", "memory"} <= set(sidecar["resources"]["limits"])
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["AUDIT_PIPE"] == sink
    assert "mkfifo -m 600" in sidecar["args"][0] and "cat" in sidecar["args"][0]
    # the gateway's Ray container and the sidecar share the pipe's folder, an emptyDir ...
    folder = os.path.dirname(sink)
    ray = {m["mountPath"]: m["name"] for m in gateway["containers"][0]["volumeMounts"]}
    side = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert ray[folder] == side[folder] == "audit"
    (volume,) = [v for v in gateway["volumes"] if v["name"] == "audit"]
    assert volume["emptyDir"]["sizeLimit"]
    # ... that no other pod has, and the sidecar runs as the gateway's user (mode 0600 pipe)
    for role in ("head", "model"):
        assert "audit" not in {v["name"] for v in specs[role]["volumes"]}, role
    ray_user = gateway["containers"][0]["securityContext"]["runAsUser"]
    assert sidecar["securityContext"]["runAsUser"] == ray_user
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not any("secret" in str(m) for m in sidecar["volumeMounts"])


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sh", "mkfifo", "cat")) or not Path("/proc/self/fd").is_dir(),
    reason="needs sh, mkfifo, cat and /proc (Linux)",
)
def test_audit_lines_come_out_of_the_audit_container(tmp_path: Path) -> None:
    """The sidecar's own command, run here: the platform's audit writer opens the pipe it
    makes (owner-only), each line comes out on the sidecar's stdout, and after the sidecar
    restarts the writer's lines reach the new one."""
    from llmplat.observability.audit import AuditLog
    from llmplat.observability.record import RequestRecord

    def record(request_id: str) -> RequestRecord:
        return RequestRecord(endpoint="chat", started=0.0, request_id=request_id, status=200)

    def line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        out = b""
        while not out.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], 10)
            assert ready, f"no audit line from the sidecar within 10 s (so far: {out!r})"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "the sidecar's stdout closed"
            out += chunk
        return json.loads(out)

    def holds_pipe(pid: int) -> bool:
        fds = Path(f"/proc/{pid}/fd")
        try:
            return any(os.readlink(fd) == str(pipe) for fd in fds.iterdir())
        except OSError:  # an fd closed while listing
            return False

    sidecar = audit_container(chart.render())
    pipe = tmp_path / "audit.log"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            sidecar["command"] + sidecar["args"],
            env={"PATH": os.environ["PATH"], "AUDIT_PIPE": str(pipe)},
            stdout=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not holds_pipe(proc.pid):
            assert time.monotonic() < deadline, "the sidecar did not open its pipe"
            time.sleep(0.02)
        return proc

    first = start()
    try:
        mode = pipe.stat().st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o600
        log = AuditLog(pipe)  # blocks until a reader holds the pipe: the sidecar does
        log.write(record("r1"))  # outside an event loop: handed to the writer at once
        assert line(first)["request_id"] == "r1"
    finally:
        first.kill()
        first.wait()
    second = start()
    try:
        log.write(record("r2"))
        assert line(second)["request_id"] == "r2"
        assert stat.S_IMODE(pipe.stat().st_mode) == 0o600
        log.close()
    finally:
        second.kill()
        second.wait()
