"""Which node holds which rank, read from Ray's placement-group table."""

from __future__ import annotations

from llmplat.cli.status import placement_lines
from llmplat.engine.placement_status import (
    MODEL_DEPLOYMENT_CLASS,
    deployment_name,
    replica_placements,
)

NODES = [
    {"NodeID": "aaaa1111", "Alive": True, "Labels": {"llmplat.io/node": "head"}},
    {"NodeID": "bbbb2222", "Alive": False, "Labels": {"llmplat.io/node": "worker-1"},
     "NodeManagerAddress": "10.0.0.2"},
]
DEP = deployment_name("tiny-mixtral-pp2")


def _pg(name: str, state: str, nodes: dict[int, str], **extra) -> dict:
    return {"name": name, "state": state, "bundles_to_node_id": nodes, "strategy":
            "STRICT_SPREAD", "bundles": {0: {"CPU": 0.001}, 1: {"CPU": 0.001}}, **extra}


def test_the_deployment_class_name_is_the_one_serve_uses() -> None:
    from llmplat.serving.llm_server import PlatformLLMServer

    assert MODEL_DEPLOYMENT_CLASS == PlatformLLMServer.__name__


def test_ranks_of_a_placed_replica_and_the_reason_of_an_unplaced_one() -> None:
    table = {
        "1": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r1", "CREATED", {0: "aaaa1111", 1: "bbbb2222"}),
        "2": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r2", "PENDING", {},
                 stats={"scheduling_state": "INFEASIBLE"}),
        "3": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r0", "REMOVED", {}),  # gone: not shown
        "4": _pg("someone-elses-group", "CREATED", {0: "aaaa1111"}),
        "5": _pg("SERVE_REPLICA::llmplat#Gateway#g1", "CREATED", {0: "aaaa1111"}),
    }
    out = replica_placements({DEP: 1}, table, NODES)
    assert list(out) == [DEP]
    placed, pending = out[DEP]
    assert placed == {
        "replica": "r1",
        "state": "CREATED",
        "ranks": [
            {"rank": 0, "stage": 0, "shard": 0, "node": "head", "node_alive": True},
            {"rank": 1, "stage": 1, "shard": 0, "node": "worker-1", "node_alive": False},
        ],
    }
    assert pending["state"] == "PENDING"
    assert pending["reason"] == (
        "2 bundle(s) [{'CPU': 0.001}] with strategy STRICT_SPREAD cannot be placed on the 1 "
        "alive node(s) (INFEASIBLE)"
    )
    lines = placement_lines({DEP: {"placement": out[DEP]}})
    assert lines == [
        "  tiny-mixtral-pp2 replica r1: rank 0 (stage 0, shard 0) on head, "
        "rank 1 (stage 1, shard 0) on worker-1 [node down]",
        f"  tiny-mixtral-pp2 replica r2: not placed: {pending['reason']}",
    ]


def test_tensor_parallel_ranks_are_shards_of_one_stage() -> None:
    table = {"1": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r1", "CREATED",
                      {0: "aaaa1111", 1: "aaaa1111"})}
    (entry,) = replica_placements({DEP: 2}, table, NODES)[DEP]
    assert [(r["stage"], r["shard"]) for r in entry["ranks"]] == [(0, 0), (0, 1)]


def test_a_local_cluster_refuses_to_wait_for_a_replica_it_can_never_place() -> None:
    from llmplat.local.runtime import unplaceable_replicas

    table = {
        "1": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r1", "PENDING", {},
                 stats={"scheduling_state": "INFEASIBLE"}),
        # waiting for resources another replica holds: it may still be placed
        "2": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r2", "PENDING", {},
                 stats={"scheduling_state": "NO_RESOURCES"}),
        "3": _pg(f"SERVE_REPLICA::llmplat#{DEP}#r3", "CREATED", {0: "aaaa1111"}),
    }
    assert unplaceable_replicas(table, 1) == [
        f"{DEP}: 2 bundle(s) [{{'CPU': 0.001}}] with strategy STRICT_SPREAD cannot be placed "
        "on 1 node(s); a layout over more nodes needs `llmplat serve --nodes N` "
        "(LLMPLAT_LOCAL__NODES)"
    ]
