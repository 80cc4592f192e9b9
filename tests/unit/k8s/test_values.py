"""Helm values generated from profiles: worker groups sized by the planner, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from llmplat.cli import main
from llmplat.config.loader import load_profile
from llmplat.config.profiles import DRAIN_MARGIN_S
from llmplat.engine.llm_config import POLICY_PATH, deployment_config
from llmplat.k8s.values import (
    BEGIN,
    END,
    LayoutError,
    layout_values,
    read_block,
    regenerate,
    render_block,
    write_block,
)
from llmplat.serving.serve_config import ServeAppArgs, serve_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize(
    ("profile", "pod", "groups"),
    [
        # TP 8 + EP: one replica per 8-GPU node, 1-4 replicas → 1-4 pods
        ("mixtral-8x22b-h100x8", {"kind": "gpu", "gpusPerPod": 8}, (1, 1, 4)),
        # fp8 TP 4: two replicas per node, 2-8 replicas → 1-4 pods
        ("mixtral-8x22b-h100x8-fp8", {"kind": "gpu", "gpusPerPod": 8}, (1, 1, 4)),
        # TP 4 x PP 2 on 4-GPU nodes: a replica spans 2 pods, 1-2 replicas → 2-4 pods
        ("mixtral-8x22b-l40s-2node", {"kind": "gpu", "gpusPerPod": 4}, (2, 2, 4)),
        ("tiny-mixtral-cpu", {"kind": "cpu", "gpusPerPod": 0}, (1, 1, 1)),
        # one engine per CPU pod: 1-2 replicas → 1-2 pods; scale to zero → 0-1 pods
        ("tiny-mixtral-cpu-autoscale", {"kind": "cpu", "gpusPerPod": 0}, (1, 1, 2)),
        ("tiny-mixtral-cpu-scale-to-zero", {"kind": "cpu", "gpusPerPod": 0}, (0, 0, 1)),
    ],
)
def test_worker_group_sized_from_the_layout(profile: str, pod: dict, groups: tuple) -> None:
    values = layout_values([profile], CONFIGS)
    workers = values["modelWorkers"]
    assert {k: workers[k] for k in pod} == pod
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == groups
    assert values["serveConfig"] == serve_config([load_profile(profile, CONFIGS)])
    (model,) = values["layout"]["models"]
    eng = load_profile(profile, CONFIGS).engine
    assert (model["tensorParallel"], model["pipelineParallel"], model["expertParallel"]) == (
        eng.tensor_parallel_size,
        eng.pipeline_parallel_size,
        eng.enable_expert_parallel,
    )


def test_gpu_pods_select_their_gpu_product_and_hold_the_weights() -> None:
    workers = layout_values(["mixtral-8x22b-h100x8"], CONFIGS)["modelWorkers"]
    assert workers["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert workers["rayResources"] == {"accelerator_type:H100": 1}  # for the autoscaler
    assert int(workers["memory"].removesuffix("Gi")) >= 282 * 1e9 / 2**30  # bf16 weights


def test_refuses_a_tp_group_wider_than_a_node() -> None:
    with pytest.raises(LayoutError, match="TP 8 exceeds the 4 GPUs of a node"):
        layout_values(["mixtral-8x22b-h100x8"], CONFIGS, gpus_per_node=4)


def test_refuses_a_layout_whose_kv_cache_does_not_fit(tmp_path: Path) -> None:
    fp8 = yaml.safe_load((CONFIGS / "models" / "mixtral-8x22b-h100x8-fp8.yaml").read_text())
    del fp8["engine"]["quantization"]  # TP 4 in bf16
    fp8["name"] = "bf16-tp4"
    fp8["hf_config"] = str(CONFIGS / "architectures" / "mixtral-8x22b.json")
    path = tmp_path / "bf16-tp4.yaml"
    path.write_text(yaml.safe_dump(fp8))
    with pytest.raises(LayoutError, match=r"TP4 x PP1 does not fit 8 x h100-80gb .*KV cache"):
        layout_values([str(path)], CONFIGS)


def test_refuses_gpus_ray_would_not_schedule_on() -> None:
    with pytest.raises(LayoutError, match="asks Ray for H100 GPUs but l40s-48gb nodes offer L40S"):
        layout_values(["mixtral-8x22b-h100x8"], CONFIGS, gpu="l40s-48gb")


def test_cpu_and_gpu_profiles_need_separate_releases() -> None:
    with pytest.raises(LayoutError, match="separate releases"):
        layout_values(["tiny-mixtral-cpu", "mixtral-8x22b-h100x8"], CONFIGS)


def test_block_is_rewritten_in_place_and_records_its_inputs(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("# mine\ngateway:\n  replicas: 3\n")
    generated = layout_values(["tiny-mixtral-cpu"], CONFIGS)
    write_block(path, generated)
    write_block(path, generated)  # idempotent
    text = path.read_text()
    assert text.startswith("# mine\ngateway:\n  replicas: 3\n")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert read_block(path) == generated
    assert regenerate(read_block(path), CONFIGS) == generated
    assert yaml.safe_load(text)["gateway"] == {"replicas": 3}


def test_cli_prints_the_block_and_the_serve_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMPLAT_CONFIG_DIR", str(CONFIGS))
    assert main(["deploy", "values", "--model", "mixtral-8x22b-l40s-2node"]) == 0
    out = capsys.readouterr().out
    assert out == render_block(layout_values(["mixtral-8x22b-l40s-2node"], CONFIGS))
    assert main(["deploy", "serve-config", "--model", "tiny-mixtral-cpu"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == serve_config([load_profile("tiny-mixtral-cpu", CONFIGS)])
    assert (
        main(["deploy", "values", "--model", "mixtral-8x22b-h100x8", "--gpus-per-node", "4"]) == 2
    )
    assert "TP 8 exceeds" in capsys.readouterr().err
    stale = tmp_path / "v.yaml"
    write_block(stale, layout_values(["tiny-mixtral-cpu"], CONFIGS) | {"rayEnv": {}})
    assert main(["deploy", "values", "--refresh", str(stale)]) == 0
    assert read_block(stale)["rayEnv"]


@pytest.mark.parametrize(
    "profile", ["mixtral-8x22b-h100x8", "mixtral-8x22b-l40s-2node", "tiny-mixtral-cpu-autoscale"]
)
def test_the_cluster_autoscales_with_the_profiles_policy(profile: str) -> None:
    """The RayService carries the profile whole; the cluster's entrypoint turns it into the
    same deployment options (policy, objective, delays, drain) as `llmplat serve`."""
    values = layout_values([profile], CONFIGS)
    (app,) = values["serveConfig"]["applications"]
    (on_cluster,) = ServeAppArgs(**app["args"]).profiles
    local = load_profile(profile, CONFIGS)
    assert deployment_config(on_cluster) == deployment_config(local)
    options = deployment_config(on_cluster)
    auto = options["autoscaling_config"]
    assert auto["policy"]["policy_function"] == POLICY_PATH
    objective = auto["policy"]["policy_kwargs"]
    assert objective["max_num_seqs"] == local.engine.max_num_seqs
    assert objective["max_replicas"] == local.serving.autoscaling.max_replicas
    assert options["graceful_shutdown_timeout_s"] == local.serving.drain_grace_s
    drain = local.serving.drain_grace_s + DRAIN_MARGIN_S
    assert values["layout"]["drainSeconds"] == math.ceil(drain)
