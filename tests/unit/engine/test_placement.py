"""The placement of one replica: bundles, strategy, nodes and the node of every rank."""

from __future__ import annotations

import pytest
import yaml

from llmplat.config.loader import ConfigError, load_profile
from llmplat.engine.llm_config import build_llm_config, ranks_threads_bind
from llmplat.engine.multinode import node_binding, parse_cores, placed_by_bundle
from llmplat.engine.placement import (
    PlacementError,
    placement_plan,
    plan_from_llm_config,
    rank_core_lists,
)
from llmplat.settings import CpuEngineSettings, Settings

# profile -> (tp, pp, nodes, ranks per node, strategy, bundle)
EXPECTED = {
    "mixtral-8x22b-h100x8": (8, 1, 1, 8, "STRICT_PACK", {"CPU": 1, "GPU": 1}),
    "mixtral-8x22b-h100x8-fp8": (4, 1, 1, 4, "STRICT_PACK", {"CPU": 1, "GPU": 1}),
    "mixtral-8x22b-l40s-2node": (4, 2, 2, 4, "PACK", {"CPU": 1, "GPU": 1}),
    "tiny-mixtral-cpu": (1, 1, 1, 1, "PACK", {"CPU": 0.001}),
    "tiny-mixtral-cpu-pp2": (1, 2, 2, 1, "STRICT_SPREAD", {"CPU": 0.001}),
    "tiny-mixtral-cpu-tp2": (2, 1, 1, 2, "STRICT_PACK", {"CPU": 0.001}),
    "tiny-mixtral-cpu-unsharded": (1, 1, 1, 1, "PACK", {"CPU": 0.001}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_plan_of_each_profile(settings: Settings, name: str) -> None:
    plan = placement_plan(load_profile(name, settings.config_dir))
    tp, pp, nodes, per_node, strategy, bundle = EXPECTED[name]
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.nodes) == (tp, pp, nodes)
    assert (plan.ranks_per_node, plan.strategy, plan.bundle) == (per_node, strategy, bundle)
    assert plan.bundles == [bundle] * (tp * pp)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_llm_config_carries_the_plan_and_the_replica_reads_it_back(
    settings: Settings, name: str
) -> None:
    profile = load_profile(name, settings.config_dir)
    plan = placement_plan(profile)
    cfg = build_llm_config(profile, settings, "/m")
    assert cfg.placement_group_config == plan.placement_group_config()
    assert plan_from_llm_config(cfg) == plan
    # Ray Serve LLM expands it to exactly these bundles and this strategy.
    engine = cfg.get_engine_config()
    assert engine.placement_bundles == [
        {**plan.bundle, **({"accelerator_type:" + profile.accelerator.accelerator_type: 0.001}
                           if profile.accelerator.accelerator_type else {})}
    ] * plan.world_size
    assert engine.placement_strategy == plan.strategy


def test_ranks_stage_major_with_tp_groups_inside_a_node(settings: Settings) -> None:
    plan = placement_plan(load_profile("mixtral-8x22b-l40s-2node", settings.config_dir))
    ranks = plan.ranks()
    assert [(r.stage, r.shard, r.node) for r in ranks] == [
        (0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0), (1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 3, 1)
    ]
    placed = placed_by_bundle(plan, ["n-a"] * 4 + ["n-b"] * 4, {"n-a": "node-a"})
    assert [p.node_name for p in placed] == ["node-a"] * 4 + ["n-b"] * 4
    assert placed[5].as_dict() == {
        "rank": 5, "stage": 1, "shard": 1, "node_id": "n-b", "node": "n-b"
    }


def test_node_groups_accept_only_whole_groups_on_distinct_nodes(settings: Settings) -> None:
    plan = placement_plan(load_profile("mixtral-8x22b-l40s-2node", settings.config_dir))
    assert plan.node_groups(["a"] * 4 + ["b"] * 4) == ["a", "b"]
    with pytest.raises(PlacementError, match="needs ranks 4 to a node, in order"):
        plan.node_groups(["a"] * 3 + ["b"] * 5)  # a TP group split over two nodes
    with pytest.raises(PlacementError, match="needs ranks 4 to a node"):
        plan.node_groups(["a"] * 8)  # both stages on one node: nnodes would be wrong
    with pytest.raises(PlacementError, match="7 bundles placed for 8 ranks"):
        plan.node_groups(["a"] * 7)


@pytest.mark.parametrize(
    ("cores", "ranks", "expected"),
    [([0], 1, "0"), ([0, 1], 2, "0|1"), ([0, 1, 2, 3], 2, "0,1|2,3"), ([5], 2, "5|5"),
     ([0, 1, 2], 2, "0|1")],
)
def test_rank_core_lists(cores: list[int], ranks: int, expected: str) -> None:
    assert rank_core_lists(cores, ranks) == expected


def test_rank_core_lists_needs_a_core() -> None:
    with pytest.raises(ValueError, match="no cores"):
        rank_core_lists([], 1)


@pytest.mark.parametrize(
    ("bind", "reserved", "cores", "ranks", "expected"),
    [
        ("auto", 1, 8, 1, "0-6"),  # one rank: as before
        ("auto", 1, 8, 2, "0,1,2|3,4,5"),  # the reserved core stays free
        ("auto", 1, 2, 2, "0|1"),  # too few cores: the reserved one is used too
        ("0-3", 1, 8, 2, "0-3"),  # an explicit binding is the operator's
    ],
)
def test_ranks_threads_bind(bind: str, reserved: int, cores: int, ranks: int, expected: str):
    cpu = CpuEngineSettings(omp_threads_bind=bind, reserved_cpus=reserved)
    assert ranks_threads_bind(cpu, cores, ranks) == expected


def test_tp2_engine_env_has_one_core_list_per_rank(settings: Settings) -> None:
    cfg = build_llm_config(load_profile("tiny-mixtral-cpu-tp2", settings.config_dir), settings, "/m")
    assert cfg.runtime_env["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"].count("|") == 1


def test_node_binding_from_the_local_cluster_label() -> None:
    assert parse_cores("0,2-4") == [0, 2, 3, 4]
    assert node_binding({"llmplat.io/cores": "1"}, 1) == "1"
    assert node_binding({"llmplat.io/cores": "2-5"}, 2) == "2,3|4,5"
    assert node_binding({}, 2) is None  # a real node: the environment's binding stands


def _tiny(settings: Settings) -> dict:
    return yaml.safe_load((settings.config_dir / "models" / "tiny-mixtral-cpu-pp2.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["engine"].update(enforce_eager=True), "needs enforce_eager: false"),
        (lambda d: d["hardware"].update(nodes=3), "cannot be spread over hardware.nodes 3"),
        (
            lambda d: d["engine"].update(tensor_parallel_size=2, pipeline_parallel_size=1),
            "each node must hold whole tensor-parallel groups",
        ),
    ],
)
def test_cpu_sharding_rules(tmp_path, settings: Settings, mutate, message: str) -> None:
    data = _tiny(settings)
    mutate(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_profile(str(path), settings.config_dir)


def test_gpu_ranks_are_recorded_where_ray_put_their_bundles(settings: Settings) -> None:
    from llmplat.engine.multinode import placed_by_bundle

    plan = placement_plan(load_profile("mixtral-8x22b-l40s-2node", settings.config_dir))
    # PACK may interleave: vLLM's Ray executor copes, so nothing is refused, only recorded.
    nodes = ["a", "b"] * 4
    placed = placed_by_bundle(plan, nodes, {"a": "gpu-0"})
    assert [(p.rank.rank, p.node_name) for p in placed[:3]] == [(0, "gpu-0"), (1, "b"), (2, "gpu-0")]
