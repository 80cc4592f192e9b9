"""Secure by default, for the defaults and every layout: only the gateway is reachable from
outside the release, Ray is authenticated, each secret is only where it is read, each account
holds only what its pods use. The threat table of helm/llmplat/README.md names these tests."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from support import chart
from support.chart_cases import CASES, requires_crds

METADATA = ipaddress.ip_network("169.254.169.254/32")
SECRETS_DIR = "/var/run/llmplat/secrets"


def pods(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """role → (labels, pod spec) of the Ray pods (head, gateway, model) and the Redis pod."""
    cluster = chart.find(docs, "RayService")["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis"):
            out["redis"] = d["spec"]["template"]
    return {role: (t["metadata"]["labels"], t["spec"]) for role, t in out.items()}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # no matchExpressions in this chart
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def in_release(peer: dict[str, Any], docs) -> bool:
    """A podSelector-only peer (this namespace, by Kubernetes' rules) that selects only pods
    of this release."""
    if set(peer) != {"podSelector"}:
        return False
    labels = peer["podSelector"].get("matchLabels", {})
    return labels.get("app.kubernetes.io/instance") == "llmplat" and any(
        matches(peer["podSelector"], lab) for lab, _ in pods(docs).values()
    )


def ports_of(rule: dict[str, Any]) -> set[int] | None:
    """The rule's TCP/UDP port numbers; None: every port."""
    if not rule.get("ports"):
        return None
    return {p["port"] for p in rule["ports"]}


@pytest.mark.parametrize("case", list(CASES))
def test_peers_outside_the_release_are_named_by_namespace(rendered, case: str) -> None:
    docs = rendered[case]
    assert policies(docs)
    for policy in policies(docs):
        spec = policy["spec"]
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                assert_named_peer(peer, docs)
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                assert_named_peer(peer, docs)


def assert_named_peer(peer: dict[str, Any], docs) -> None:
    if "ipBlock" in peer:
        return
    if "namespaceSelector" not in peer:
        assert in_release(peer, docs), peer
        return
    names = peer["namespaceSelector"].get("matchLabels", {})
    assert set(names) == {"kubernetes.io/metadata.name"} and names["kubernetes.io/metadata.name"]


@pytest.mark.parametrize("case", list(CASES))
def test_only_the_gateway_port_is_open_beyond_the_release(rendered, case: str) -> None:
    """(role, port) pairs reachable by a peer outside the release, over every ingress rule."""
    docs = rendered[case]
    labelled = pods(docs)
    reachable: set[tuple[str, int | None, str]] = set()
    for policy in policies(docs):
        targets = [
            r for r, (lab, _) in labelled.items() if matches(policy["spec"]["podSelector"], lab)
        ]
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            outside = [p for p in peers or [{}] if not in_release(p, docs)]
            if not outside:
                continue
            who = {
                p.get("namespaceSelector", {})
                .get("matchLabels", {})
                .get("kubernetes.io/metadata.name", "anyone")
                for p in outside
            }
            for role in targets:
                for port in ports_of(rule) or {None}:
                    reachable |= {(role, port, ns) for ns in who}
    (gateway,) = labelled["gateway"][1]["containers"]
    (metrics_port,) = [
        p["containerPort"] for p in gateway["ports"] if p["name"] == "gateway-metrics"
    ]
    assert reachable == {
        ("gateway", 8000, "anyone"),
        ("gateway", metrics_port, "monitoring"),
        ("head", 8080, "monitoring"),
        ("gateway", 8080, "monitoring"),
        ("model", 8080, "monitoring"),
        ("head", 8265, "default"),  # the KubeRay operator's namespace
    }
    # Every pod of the release is selected by an ingress policy (so nothing is open by default).
    for role, (lab, _) in labelled.items():
        assert any(
            matches(p["spec"]["podSelector"], lab) and "Ingress" in p["spec"]["policyTypes"]
            for p in policies(docs)
        ), role


def test_gateway_callers_and_operator_namespace_come_from_values() -> None:
    docs = chart.render(
        overrides={
            "networkPolicy": {
                "gatewayFrom": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "ingress"}
                        }
                    }
                ],
                "kuberayOperator": {"namespace": "kuberay-system"},
                "monitoringNamespace": "",
            }
        }
    )
    gateway = chart.find(docs, "NetworkPolicy", "llmplat-gateway")["spec"]["ingress"]
    assert gateway == [
        {
            "ports": [{"port": 8000, "protocol": "TCP"}],
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
            ],
        }
    ]
    (rule,) = chart.find(docs, "NetworkPolicy", "llmplat-head")["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kuberay-system"
    }
    assert rule["ports"] == [{"port": 8265, "protocol": "TCP"}]


def egress_rules(docs, role: str) -> list[dict[str, Any]]:
    labels, _ = pods(docs)[role]
    return [
        rule
        for p in policies(docs)
        if matches(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("egress", [])
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_egress_is_restricted_and_never_reaches_cloud_metadata(rendered, case: str) -> None:
    docs = rendered[case]
    for role, (labels, _) in pods(docs).items():
        selected = [p for p in policies(docs) if matches(p["spec"]["podSelector"], labels)]
        assert any("Egress" in p["spec"]["policyTypes"] for p in selected), role
        for rule in egress_rules(docs, role):
            assert rule.get("to"), f"{role}: an egress rule to anywhere"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    excepted = [ipaddress.ip_network(e) for e in peer["ipBlock"].get("except", [])]
                    if METADATA.subnet_of(net):
                        assert any(METADATA.subnet_of(e) for e in excepted), (role, peer)
    # Redis calls nobody; model pods reach Ray pods and DNS only (no API server, no Redis).
    if "redis" in pods(docs):
        assert egress_rules(docs, "redis") == []
    for rule in egress_rules(docs, "model"):
        assert all("ipBlock" not in peer for peer in rule["to"]), rule
    api_ports = {443, 6443}
    gateway_ports = {port for r in egress_rules(docs, "gateway") for port in ports_of(r) or ()}
    assert api_ports <= gateway_ports
    head_api = any((ports_of(r) or set()) & api_ports for r in egress_rules(docs, "head"))
    autoscaler = chart.find(docs, "RayService")["spec"]["rayClusterConfig"][
        "enableInTreeAutoscaling"
    ]
    assert head_api == autoscaler


def test_egress_addresses_come_from_values() -> None:
    docs = chart.render(
        overrides={
            "redis": {"enabled": False},
            "externalRedis": {"url": "rediss://llmplat:pw@redis.example:6380/0"},
            "autoscaler": {"enabled": False},
            "networkPolicy": {
                "egress": {
                    "apiServerCIDRs": ["10.0.0.10/32"],
                    "redisCIDRs": ["10.1.2.3/32"],
                    "redisPorts": [6380],
                    "extra": [
                        {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]}
                    ],
                }
            },
        }
    )
    gateway = egress_rules(docs, "gateway")
    assert {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}], "ports": [
        {"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in gateway  # fmt: skip
    assert {
        "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
        "ports": [{"port": 6380, "protocol": "TCP"}],
    } in gateway
    assert {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]} in (
        egress_rules(docs, "model")
    )
    assert chart.find(docs, "NetworkPolicy", "llmplat-head")["spec"]["egress"] == []


@pytest.mark.parametrize("case", list(CASES))
def test_bundled_redis_answers_the_gateway_pods_only(rendered, case: str) -> None:
    docs = rendered[case]
    if "redis" not in pods(docs):
        pytest.skip("no bundled Redis in this layout")
    labelled = pods(docs)
    policy = chart.find(docs, "NetworkPolicy", "llmplat-redis")
    (rule,) = policy["spec"]["ingress"]
    assert ports_of(rule) == {6379}
    (peer,) = rule["from"]
    assert [r for r, (lab, _) in labelled.items() if matches(peer["podSelector"], lab)] == [
        "gateway"
    ]


def secret_refs(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(env vars from a Secret, secret volumes) of a pod spec, init containers included."""
    env = [
        e["name"]
        for c in spec.get("initContainers", []) + spec["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    env += [
        f"envFrom {s['secretRef']['name']}"
        for c in spec.get("initContainers", []) + spec["containers"]
        for s in c.get("envFrom", [])
        if "secretRef" in s
    ]
    volumes = [
        v["name"]
        for v in spec.get("volumes", [])
        if "secret" in v or any("secret" in s for s in v.get("projected", {}).get("sources", []))
    ]
    return env, volumes


@pytest.mark.parametrize("case", list(CASES))
def test_llmplat_secrets_are_files_in_the_gateway_pods_only(rendered, case: str) -> None:
    docs = rendered[case]
    for role, (_, spec) in pods(docs).items():
        env, volumes = secret_refs(spec)
        assert env == [], (role, env)
        if role in ("head", "model"):
            assert volumes == [], (role, volumes)
    _, gateway = pods(docs)["gateway"]
    (secrets,) = [v for v in gateway["volumes"] if v["name"] == "llmplat-secrets"]
    assert secrets["projected"]["defaultMode"] == 0o400
    assert gateway["securityContext"]["fsGroup"] == gateway["securityContext"]["runAsGroup"]
    paths = {item["path"] for s in secrets["projected"]["sources"] for item in s["secret"]["items"]}
    (c,) = gateway["containers"]
    assert {"name": "llmplat-secrets", "mountPath": SECRETS_DIR, "readOnly": True} in c[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LLMPLAT_ADMIN_TOKEN_FILE"] == f"{SECRETS_DIR}/admin-token"
    has_redis = "LLMPLAT_QUOTAS__REDIS_URL_FILE" in env
    assert paths == {"admin-token"} | ({"redis-url"} if has_redis else set())
    if has_redis:
        assert env["LLMPLAT_QUOTAS__REDIS_URL_FILE"] == f"{SECRETS_DIR}/redis-url"


@pytest.mark.parametrize("case", list(CASES))
def test_each_role_has_its_own_account_and_only_the_gateway_reads_keys(rendered, case) -> None:
    docs = rendered[case]
    autoscaler = chart.find(docs, "RayService")["spec"]["rayClusterConfig"][
        "enableInTreeAutoscaling"
    ]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    expected_mount = {"gateway": True, "head": autoscaler, "model": False}
    for role, mount in expected_mount.items():
        _, spec = pods(docs)[role]
        assert spec["serviceAccountName"] == f"llmplat-{role}"
        assert spec["automountServiceAccountToken"] is mount, role
        assert accounts[f"llmplat-{role}"]["automountServiceAccountToken"] is mount, role
    if "redis" in pods(docs):
        assert pods(docs)["redis"][1]["automountServiceAccountToken"] is False
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d["rules"] for d in docs if d["kind"] == "Role"}
    assert roles == {
        "llmplat-keystore": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "list", "watch", "create", "update", "delete"],
            }
        ]
    }
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert [(b["roleRef"]["name"], b["subjects"]) for b in bindings] == [
        (
            "llmplat-keystore",
            [{"kind": "ServiceAccount", "name": "llmplat-gateway", "namespace": "llmplat"}],
        )
    ]


@requires_crds
@pytest.mark.parametrize("case", list(CASES))
def test_ray_requires_its_token(rendered, case: str) -> None:
    docs = rendered[case]
    rs = chart.find(docs, "RayService")
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token",
        "secretName": "llmplat-ray-token",
    }
    assert chart.crd_errors(rs) == []
    secret = chart.find(docs, "Secret", "llmplat-ray-token")
    assert set(secret["data"]) == {"auth_token"}
    # the probes' endpoints stay open in token mode: the probes need no token
    for _, spec in [v for k, v in pods(docs).items() if k != "redis"]:
        (c,) = spec["containers"]
        probe = " ".join(c["livenessProbe"]["exec"]["command"])
        assert "RAY_AUTH_TOKEN" not in probe and "/api/local_raylet_healthz" in probe


def test_ray_auth_can_be_switched_off() -> None:
    docs = chart.render(overrides={"rayAuth": {"enabled": False}})
    assert "authOptions" not in chart.find(docs, "RayService")["spec"]["rayClusterConfig"]
    assert "llmplat-ray-token" not in [d["metadata"]["name"] for d in docs]


def test_redis_gateway_user_holds_the_quota_commands_only(rendered) -> None:
    import base64

    rule = (chart.CHART / "files" / "redis-quota-acl.txt").read_text().strip()
    assert rule.startswith("~llmplat:quota:* resetchannels -@all ")
    deployment = chart.find(rendered["default"], "Deployment", "llmplat-redis")
    (redis,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "user default off" in redis["args"][0]
    assert "user llmplat on >%s %s" in redis["args"][0] and f"'{rule}'" in redis["args"][0]
    assert "--user llmplat" in " ".join(redis["readinessProbe"]["exec"]["command"])
    secret = chart.find(rendered["default"], "Secret", "llmplat-redis")["data"]
    password = base64.b64decode(secret["password"]).decode()
    url = base64.b64decode(secret["redis-url"]).decode()
    assert url == f"redis://llmplat:{password}@llmplat-redis.llmplat.svc:6379/0"
