"""What matters in the rendered RayService, layout by layout: GPUs, worker counts, parallel
sizes, the serve config, and how the Ray pods are run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmplat.config.loader import load_profile
from llmplat.config.profiles import DRAIN_MARGIN_S
from llmplat.engine.llm_config import omp_threads_bind
from llmplat.serving.serve_config import serve_config
from llmplat.settings import CpuEngineSettings
from support import chart
from support.chart_cases import CASES

CONFIGS = chart.REPO / "configs"

# values file → (profile, GPUs per pod, model pods: initial, min, max, gateway pods)
LAYOUTS = {
    "default": ("tiny-mixtral-cpu", 0, (1, 1, 1), 2),
    "dev-cpu": ("tiny-mixtral-cpu", 0, (1, 1, 1), 1),
    "h100x8": ("mixtral-8x22b-h100x8", 8, (1, 1, 4), 2),
    "h100x8-fp8": ("mixtral-8x22b-h100x8-fp8", 8, (1, 1, 4), 2),
    "l40s-2node": ("mixtral-8x22b-l40s-2node", 4, (2, 2, 4), 2),
}


def test_every_values_file_has_its_expectations() -> None:
    assert set(LAYOUTS) == {"default"} | {p.stem for p in chart.values_files()}


def groups(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def containers(rs: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(role, pod spec, container) of every Ray container, head first."""
    cluster = rs["spec"]["rayClusterConfig"]
    specs = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    specs += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return [(role, spec, c) for role, spec in specs for c in spec["containers"]]


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_serve_config_is_what_the_profile_produces(rendered, case: str) -> None:
    profile_name = LAYOUTS[case][0]
    rs = chart.find(rendered[case], "RayService")
    assert chart.serve_config_of(rs) == serve_config([load_profile(profile_name, CONFIGS)])


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_an_upgrade_keeps_the_old_cluster_for_the_drain(rendered, case: str) -> None:
    profile = load_profile(LAYOUTS[case][0], CONFIGS)
    rs = chart.find(rendered[case], "RayService")
    drain = profile.serving.drain_grace_s + DRAIN_MARGIN_S
    assert rs["spec"]["rayClusterDeletionDelaySeconds"] == math.ceil(drain)


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_worker_groups_follow_the_layout(rendered, case: str) -> None:
    profile_name, gpus, (initial, low, high), gateways = LAYOUTS[case]
    profile = load_profile(profile_name, CONFIGS)
    rs = chart.find(rendered[case], "RayService")
    model, gateway = groups(rs)["model"], groups(rs)["gateway"]
    assert (model["replicas"], model["minReplicas"], model["maxReplicas"]) == (initial, low, high)
    assert gateway["replicas"] == gateway["minReplicas"] == gateway["maxReplicas"] == gateways
    assert gateway["rayStartParams"]["resources"] == '"{\\"llmplat_gateway\\": 1}"'
    ((_, spec, worker),) = [c for c in containers(rs) if c[0] == "model"]
    limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
    if gpus:
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == gpus
        assert model["rayStartParams"]["num-gpus"] == str(gpus)
        accel = profile.accelerator.accelerator_type
        assert model["rayStartParams"]["resources"] == f'"{{\\"accelerator_type:{accel}\\":1}}"'

        assert gpus == profile.hardware.gpus_per_node
        eng = profile.engine
        per_replica = eng.tensor_parallel_size * eng.pipeline_parallel_size
        # a TP group inside a pod; replicas tile pods exactly
        assert eng.tensor_parallel_size <= gpus
        assert gpus % per_replica == 0 or per_replica % gpus == 0
        assert spec["nodeSelector"]["nvidia.com/gpu.product"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
    else:
        assert "nvidia.com/gpu" not in yaml.safe_dump(rs)
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in yaml.safe_dump(head)


def test_parallel_sizes_reach_the_engine(rendered) -> None:
    rs = chart.find(rendered["l40s-2node"], "RayService")
    (profile,) = chart.serve_config_of(rs)["applications"][0]["args"]["profiles"]
    eng = profile["engine"]
    assert (eng["tensor_parallel_size"], eng["pipeline_parallel_size"]) == (4, 2)
    assert eng["kv_cache_dtype"] == "fp8"
    rs = chart.find(rendered["h100x8"], "RayService")
    (profile,) = chart.serve_config_of(rs)["applications"][0]["args"]["profiles"]
    assert profile["engine"]["tensor_parallel_size"] == 8
    assert profile["engine"]["enable_expert_parallel"] is True


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_ray_pods_are_locked_down_and_probed(rendered, case: str) -> None:
    rs = chart.find(rendered[case], "RayService")
    for role, spec, c in containers(rs):
        pod_sc, sc = spec["securityContext"], c["securityContext"]
        assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] >= 10000
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
        assert "livenessProbe" in c and "readinessProbe" in c
        readiness = " ".join(c["readinessProbe"]["exec"]["command"])
        assert "local_raylet_healthz" in readiness
        # workers take traffic only while their Serve proxy is healthy (KubeRay's rule)
        assert ("localhost:8000/-/healthz" in readiness) == (role != "head")
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert {"/tmp", "/var/lib/llmplat", "/dev/shm"} <= set(mounts)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        image = c["image"]
        assert image.endswith(("-cpu", "-gpu")) and ":latest" not in image
        assert spec["serviceAccountName"] == f"llmplat-{role}"
    autoscaler = rs["spec"]["rayClusterConfig"].get("autoscalerOptions")
    if autoscaler:
        assert autoscaler["securityContext"]["readOnlyRootFilesystem"]
        assert {"requests", "limits"} <= set(autoscaler["resources"])


@pytest.mark.parametrize("case", ["h100x8", "l40s-2node", "h100x8-fp8"])
def test_weights_come_read_only_from_the_claim(rendered, case: str) -> None:
    rs = chart.find(rendered[case], "RayService")
    for _, spec, c in containers(rs):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"] == {
            "claimName": "llmplat-models",
            "readOnly": True,
        }
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_host_path_weights() -> None:
    docs = chart.render(
        chart.VALUES_DIR / "h100x8.yaml",
        overrides={"model": {"storage": {"type": "hostPath", "hostPath": "/data/models"}}},
    )
    _, spec, _ = containers(chart.find(docs, "RayService"))[0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["hostPath"] == {"path": "/data/models", "type": "Directory"}


def test_builtin_model_is_built_in_every_pod(rendered) -> None:
    rs = chart.find(rendered["dev-cpu"], "RayService")
    for role, spec, _ in containers(rs):
        (init,) = [c for c in spec["initContainers"] if c.get("restartPolicy") != "Always"]
        assert init["command"] == ["llmplat", "model", "build-tiny"]
        sidecars = [c["name"] for c in spec["initContainers"] if c.get("restartPolicy")]
        assert sidecars == (["audit"] if role == "gateway" else [])
        assert "models" not in {v["name"] for v in spec["volumes"]}


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return chart.find(docs, "ConfigMap", "llmplat-env")["data"]


@pytest.mark.parametrize(
    ("cpus", "bind"),
    [(1, "0"), (2, "0"), (3, "0-1"), (8, "0-6"), ("2.5", "0"), ("3500m", "0-1"), ("500m", "0")],
)
def test_cpu_engine_threads_leave_a_core_to_the_scheduler(cpus: int, bind: str) -> None:
    """As `llmplat serve` binds them (LLMPLAT_CPU__RESERVED_CPUS=1): every core of the model
    pod but one, which vLLM's scheduler process and the replica need."""
    docs = chart.render(*CASES["dev-cpu"], overrides={"modelWorkers": {"cpu": str(cpus)}})
    env = env_of(docs)
    assert "LLMPLAT_CPU__OMP_THREADS_BIND" not in env  # computed by llmplat, not the chart
    cpu = CpuEngineSettings.model_validate({"cores": env["LLMPLAT_CPU__CORES"]})
    assert omp_threads_bind(cpu, cpu.cores or 0) == bind


def test_settings_reach_the_pods(rendered) -> None:
    env = env_of(rendered["h100x8"])
    assert env["LLMPLAT_KEYSTORE__BACKEND"] == "kubernetes"
    assert env["LLMPLAT_QUOTAS__BACKEND"] == "redis" and env["LLMPLAT_GATEWAY__REPLICAS"] == "2"
    assert env["LLMPLAT_GATEWAY__RAY_RESOURCE"] == "llmplat_gateway"
    assert env["LLMPLAT_MODE"] == "production"
    assert env["RAY_worker_niceness"] == "0"  # from llmplat.local.runtime, as `llmplat serve` sets it
    dev = env_of(rendered["dev-cpu"])
    assert dev["LLMPLAT_QUOTAS__BACKEND"] == "memory" and dev["LLMPLAT_GATEWAY__REPLICAS"] == "1"
    assert dev["LLMPLAT_CPU__CORES"] == "2"  # the model pod's, not the head pod's
    rs = chart.find(rendered["h100x8"], "RayService")
    for role, spec, c in containers(rs):
        env_vars = {e["name"]: e for e in c["env"]}
        # the key store's own namespace, where the gateway's Role is (keyStore.namespace)
        assert env_vars["LLMPLAT_KEYSTORE__NAMESPACE"] == {
            "name": "LLMPLAT_KEYSTORE__NAMESPACE",
            "value": "llmplat-keys",
        }
        assert "LLMPLAT_ADMIN_TOKEN" not in env_vars
        assert "LLMPLAT_QUOTAS__REDIS_URL" not in env_vars
        if role != "gateway":
            continue
        # the gateway reads its secrets from files of a read-only secret volume
        assert env_vars["LLMPLAT_ADMIN_TOKEN_FILE"]["value"] == (
            "/var/run/llmplat/secrets/admin-token"
        )
        assert env_vars["LLMPLAT_QUOTAS__REDIS_URL_FILE"]["value"] == (
            "/var/run/llmplat/secrets/redis-url"
        )
        volumes = {v["name"]: v for v in spec["volumes"]}
        sources = volumes["llmplat-secrets"]["projected"]["sources"]
        assert [s["secret"] for s in sources] == [
            {"name": "llmplat-admin", "items": [{"key": "admin-token", "path": "admin-token"}]},
            {"name": "llmplat-redis", "items": [{"key": "redis-url", "path": "redis-url"}]},
        ]


def test_declared_teams_become_the_key_store_format(rendered_all_on) -> None:
    from llmplat.auth.declared import DeclaredTeams

    teams_yaml = chart.find(rendered_all_on["h100x8"], "ConfigMap", "llmplat-teams")["data"]
    (team,) = DeclaredTeams.model_validate(yaml.safe_load(teams_yaml["teams.yaml"])).teams
    assert team.name == "ci" and team.priority_class == "batch" and team.max_tokens_cap == 512
    assert team.models == ("mixtral-8x22b-instruct",)
    assert team.limits.requests_per_minute == 60 and team.limits.tokens_per_day == 1_000_000
    empty = chart.find(chart.render(), "ConfigMap", "llmplat-teams")["data"]["teams.yaml"]
    assert DeclaredTeams.model_validate(yaml.safe_load(empty)).teams == []


def test_gateway_service_ingress_and_disruption_budget(rendered_all_on) -> None:
    docs = rendered_all_on["h100x8"]
    rs = chart.find(docs, "RayService")
    svc = rs["spec"]["serveService"]
    assert svc["metadata"]["name"] == "llmplat-gateway"
    assert svc["spec"]["ports"] == [
        {"name": "serve", "port": 8000, "targetPort": "serve", "protocol": "TCP"}
    ]
    # KubeRay's Service selects every worker pod: only the gateway pods declare the named port
    # it targets, so model pods (whose 8000 is closed beyond the release) are no endpoints.
    for role, _, c in containers(rs):
        named = {p["name"] for p in c["ports"]}
        assert ("serve" in named) == (role == "gateway")
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
    ingress = chart.find(docs, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llmplat-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "llmplat-gateway", "port": {"number": 8000}}
    pdb = chart.find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["llmplat.io/role"] == "gateway"
    assert pdb["spec"]["minAvailable"] == 1
    assert not [d for d in rendered_all_on["dev-cpu"] if d["kind"] == "PodDisruptionBudget"]


def test_key_store_rbac_is_limited_to_secrets_of_one_namespace(rendered) -> None:
    docs = rendered["h100x8"]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = chart.find(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "list", "watch", "create", "update", "delete"],
        }
    ]
    binding = chart.find(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmplat-gateway", "namespace": "llmplat"}
    ]
    separate = chart.render(overrides={"keyStore": {"namespace": "llmplat-keys"}})
    assert chart.find(separate, "Role")["metadata"]["namespace"] == "llmplat-keys"


def test_redis_secret_never_appears_in_env_or_args(rendered) -> None:
    deployment = chart.find(rendered["h100x8"], "Deployment")
    (redis,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "env" not in redis
    assert "/run/secrets/redis/password" in redis["args"][0]
    assert "user default off" in redis["args"][0]
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    secret = chart.find(rendered["h100x8"], "Secret", "llmplat-redis")
    assert set(secret["data"]) == {"password", "redis-url"}


def test_notes_name_the_layout_and_the_endpoint() -> None:
    values = chart.load_values(chart.VALUES_DIR / "h100x8.yaml")
    notes = chart.render_raw(values)["llmplat/templates/NOTES.txt"]
    assert "TP 8 x PP 1 + expert parallel, 1-4 replicas" in notes
    assert "llmplat deploy status -n llmplat --name llmplat" in notes
    assert "Declared teams (applied at every start): ci" in notes


@pytest.mark.parametrize(("proxies", "warned"), [([], True), (["10.0.0.0/8"], False)])
def test_notes_ask_for_the_ingress_range_when_no_proxy_is_trusted(
    proxies: list[str], warned: bool
) -> None:
    values = chart.load_values(chart.VALUES_DIR / "h100x8.yaml")
    values["gateway"] = {"ingress": {"enabled": True}, "trustedProxies": proxies}
    notes = chart.render_raw(values)["llmplat/templates/NOTES.txt"]
    assert ("set gateway.trustedProxies" in notes) is warned


def test_helm_merge_of_a_layout_file_leaves_no_stale_default_keys() -> None:
    """Helm merges maps key by key: every generated key of the chart's default layout must
    be set again by each layout file, or a default value would leak into it."""
    default = yaml.safe_load((chart.CHART / "values.yaml").read_text())

    def paths(d: Any, prefix: str = "") -> set[str]:
        if not isinstance(d, dict):
            return {prefix}
        return {p for k, v in d.items() for p in paths(v, f"{prefix}.{k}")} | {prefix}

    for path in chart.values_files():
        layout = yaml.safe_load(Path(path).read_text())
        for key in ("layout", "modelWorkers", "rayEnv", "serveConfig"):
            generated_default = {
                k: v
                for k, v in default[key].items()
                if k not in ("tolerations", "extraNodeSelector", "affinity", "idleTimeoutSeconds")
            }
            missing = paths(generated_default) - paths(layout[key])
            assert not missing, f"{path.name}: {key}{sorted(missing)} would come from the defaults"


@pytest.mark.parametrize("case", ["h100x8", "h100x8-fp8", "l40s-2node"])
def test_rendered_placement_is_the_plan_the_engine_and_local_cluster_use(
    rendered, case: str
) -> None:
    """Bundles, strategy and nodes per replica of each 8x22B layout come from
    ``placement_plan``, the function the engine places its ranks by and that
    ``llmplat serve --nodes`` reproduces on one machine."""
    from llmplat.engine.llm_config import build_llm_config
    from llmplat.engine.placement import placement_plan
    from llmplat.k8s.values import placement_values
    from llmplat.settings import Settings

    profile_name, gpus, (initial, low, high), _ = LAYOUTS[case]
    profile = load_profile(profile_name, CONFIGS)
    plan = placement_plan(profile, gpus)
    values = chart.load_values(chart.VALUES_DIR / f"{case}.yaml")
    (entry,) = values["layout"]["models"]
    assert entry["placement"] == placement_values(plan)
    # The engine in the cluster builds its placement group from the serve config's profile.
    rs = chart.find(rendered[case], "RayService")
    (shipped,) = chart.serve_config_of(rs)["applications"][0]["args"]["profiles"]
    llm = build_llm_config(type(profile).model_validate(shipped), Settings(), "/m")
    assert llm.placement_group_config == plan.placement_group_config()
    engine = llm.get_engine_config()
    assert len(engine.placement_bundles) == plan.world_size
    assert engine.placement_strategy == plan.strategy
    # Worker pods: a replica spanning nodes takes that many pods.
    if plan.nodes > 1:
        assert groups(rs)["model"]["minReplicas"] == low == plan.nodes * (
            profile.serving.autoscaling.min_replicas
        )


def test_a_declared_teams_input_bounds_reach_the_key_store_format() -> None:
    import json

    from llmplat.auth.declared import DeclaredTeams
    from llmplat.settings import InputBounds

    team = {"name": "agents", "inputBounds": {"schema_properties": 4096, "stop_count": 8}}
    docs = chart.render(overrides={"teams": [team]})
    teams_yaml = chart.find(docs, "ConfigMap", "llmplat-teams")["data"]["teams.yaml"]
    (declared,) = DeclaredTeams.model_validate(yaml.safe_load(teams_yaml)).teams
    assert declared.input_bounds.schema_properties == 4096
    assert declared.input_bounds.stop_count == 8
    assert declared.input_bounds.schema_bytes is None  # unset: the gateway's own bound
    # the chart's schema names exactly the gateway's bounds
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    names = schema["properties"]["teams"]["items"]["properties"]["inputBounds"]["properties"]
    assert set(names) == set(InputBounds.model_fields)
