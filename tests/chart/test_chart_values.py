"""Bad values are refused before anything is applied: by the schema (naming the value) or by
the chart's own checks of the layout (naming the value and the numbers)."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from support import chart


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"gateway": {"replicas": 0}}, "/gateway/replicas"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"model": {"storage": {"type": "nfs"}}}, "/model/storage/type"),
        ({"model": {"storage": {"mountPath": "models"}}}, "/model/storage/mountPath"),
        ({"teams": [{"name": "CI"}]}, "/teams/0/name"),
        ({"teams": [{"name": "ci", "priorityClass": "urgent"}]}, "/teams/0/priorityClass"),
        (
            {"teams": [{"name": "ci", "limits": {"tokensPerDay": 0}}]},
            "/teams/0/limits/tokensPerDay",
        ),
        ({"gateway": {"metricsPort": 8080}}, "/gateway/metricsPort"),
        ({"modelWorkers": {"memory": "lots"}}, "/modelWorkers/memory"),
        ({"modelWorkers": {"kind": "tpu"}}, "/modelWorkers/kind"),
        ({"head": {"resources": {"requests": {"cpu": "two"}}}}, "/head/resources/requests/cpu"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        (
            {"networkPolicy": {"monitoringNamespace": "Mon itoring"}},
            "/networkPolicy/monitoringNamespace",
        ),
        (
            {"networkPolicy": {"egress": {"apiServerCIDRs": ["10.0.0.1"]}}},
            "/networkPolicy/egress/apiServerCIDRs/0",
        ),
        ({"rayAuth": {"enabled": "yes"}}, "/rayAuth/enabled"),
        ({"quotas": {"onStoreError": "ajar"}}, "/quotas/onStoreError"),
        ({"externalRedis": {"url": "http://redis:6379"}}, "/externalRedis/url"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        ({"gatway": {"replicas": 2}}, "'gatway'"),
    ],
)
def test_schema_rejects_bad_values_naming_them(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=names):
        chart._chart().validate_schema(values)
    with pytest.raises(helm.HelmError, match=names):  # and an install would stop there too
        chart.render_raw(values)


def test_every_values_file_passes_the_schema() -> None:
    for path in chart.values_files():
        chart._chart().validate_schema(chart.load_values(path))


@pytest.mark.parametrize(
    ("files", "overrides", "message"),
    [
        (
            (),
            {"gateway": {"replicas": 3}, "redis": {"enabled": False}},
            "gateway.replicas is 3: several gateway replicas share quotas through Redis",
        ),
        (
            ("h100x8.yaml",),
            {"model": {"storage": {"mountPath": "/weights"}}},
            "profile mixtral-8x22b-h100x8 reads its weights from "
            "/models/Mixtral-8x22B-Instruct-v0.1, outside model.storage.mountPath /weights",
        ),
        (
            ("h100x8.yaml",),
            {"model": {"storage": {"type": "none"}}},
            "model.storage.type is none but profile mixtral-8x22b-h100x8 reads",
        ),
        (
            ("h100x8.yaml",),
            {"modelWorkers": {"gpusPerPod": 6}},
            "modelWorkers.gpusPerPod is 6 but profile mixtral-8x22b-h100x8 needs 8 GPUs per "
            "replica (TP 8 x PP 1)",
        ),
        (
            ("l40s-2node.yaml",),
            {"modelWorkers": {"minReplicas": 1, "maxReplicas": 1, "replicas": 1}},
            "modelWorkers.maxReplicas is 1 but one replica of mixtral-8x22b-l40s-2node spans 2 pods",
        ),
        (
            (),
            {"modelWorkers": {"minReplicas": 3, "maxReplicas": 2}},
            "modelWorkers.minReplicas (3) exceeds modelWorkers.maxReplicas (2)",
        ),
        ((), {"serveConfig": {"applications": []}}, "/serveConfig/applications"),
        (
            (),
            {"networkPolicy": {"gatewayFrom": [{"namespaceSelector": {}}]}},
            "networkPolicy.gatewayFrom[0] has an empty namespaceSelector (every namespace)",
        ),
    ],
)
def test_layouts_that_cannot_run_are_refused(files, overrides, message: str) -> None:
    values = chart.load_values(*(chart.VALUES_DIR / f for f in files), overrides=overrides)
    with pytest.raises(helm.HelmError) as raised:
        chart.render_raw(values)
    assert message in str(raised.value)


def test_external_redis_and_existing_secrets() -> None:
    url = chart.render(
        overrides={"redis": {"enabled": False}, "externalRedis": {"url": "redis://r:6379/0"}}
    )
    assert chart.find(url, "Secret", "llmplat-redis-url")["data"]["redis-url"]
    assert not [d for d in url if d["kind"] == "Deployment"]
    existing = chart.render(
        overrides={
            "redis": {"enabled": False},
            "externalRedis": {"existingSecret": "corp-redis", "existingSecretKey": "url"},
            "adminToken": {"existingSecret": "corp-admin"},
        }
    )
    assert [d["metadata"]["name"] for d in existing if d["kind"] == "Secret"] == [
        "llmplat-ray-token"
    ]
    cluster = chart.find(existing, "RayService")["spec"]["rayClusterConfig"]
    gateway = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gateway")
    volumes = {v["name"]: v for v in gateway["template"]["spec"]["volumes"]}
    assert [s["secret"] for s in volumes["llmplat-secrets"]["projected"]["sources"]] == [
        {"name": "corp-admin", "items": [{"key": "admin-token", "path": "admin-token"}]},
        {"name": "corp-redis", "items": [{"key": "url", "path": "redis-url"}]},
    ]
    own_token = chart.render(overrides={"rayAuth": {"existingSecret": "corp-ray"}})
    assert "llmplat-ray-token" not in [d["metadata"]["name"] for d in own_token]
    auth = chart.find(own_token, "RayService")["spec"]["rayClusterConfig"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "corp-ray"}


def test_generated_secrets_are_long_and_random() -> None:
    import base64

    tokens, ray_tokens = set(), set()
    for _ in range(2):
        docs = chart.render()
        admin = chart.find(docs, "Secret", "llmplat-admin")["data"]["admin-token"]
        tokens.add(base64.b64decode(admin).decode())
        ray = chart.find(docs, "Secret", "llmplat-ray-token")["data"]["auth_token"]
        ray_tokens.add(base64.b64decode(ray).decode())
        for name in ("llmplat-admin", "llmplat-ray-token"):
            assert chart.find(docs, "Secret", name)["metadata"]["annotations"] == {
                "helm.sh/resource-policy": "keep"
            }
    assert len(tokens) == 2 and all(len(t) >= 50 for t in tokens)
    assert len(ray_tokens) == 2 and all(len(t) == 64 and t.isalnum() for t in ray_tokens)
