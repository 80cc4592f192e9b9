"""Which node holds which rank of every model replica, from Ray's placement groups.

Serve names a replica's placement group after the replica (``SERVE_REPLICA::<app>#<deployment>
#<id>``); bundle i holds rank i (:mod:`llmplat.engine.placement`). A group Ray cannot place
(too few nodes or CPUs/GPUs for its bundles and strategy) stays ``PENDING``: reported here
with Ray's reason instead of a replica that silently never starts.
"""

from __future__ import annotations

from typing import Any

from llmplat.engine.multinode import node_names

REPLICA_PG_PREFIX = "SERVE_REPLICA::"
MODEL_DEPLOYMENT_CLASS = "PlatformLLMServer"
"""Name of the model deployment class (llmplat.serving.llm_server), which Ray Serve LLM puts
in each model deployment's name; spelled out so the gateway need not import ray.serve.llm."""


def deployment_name(model_id: str) -> str:
    """The Serve deployment of a model."""
    return f"{MODEL_DEPLOYMENT_CLASS}:{model_id}"


def replica_placements(
    tensor_parallel: dict[str, int],
    table: dict[str, dict[str, Any]],
    nodes: list[dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Deployment name -> one entry per replica placement group of that deployment.

    ``tensor_parallel``: deployment name -> tensor-parallel size (ranks of a stage);
    ``table``: ``ray.util.placement_group_table()``; ``nodes``: ``ray.nodes()``."""
    names = node_names(nodes)
    alive = {n["NodeID"] for n in nodes if n.get("Alive")}
    out: dict[str, list[dict[str, Any]]] = {}
    for pg in table.values():
        name = pg.get("name") or ""
        if not name.startswith(REPLICA_PG_PREFIX) or pg.get("state") == "REMOVED":
            continue
        parts = name.removeprefix(REPLICA_PG_PREFIX).split("#")
        if len(parts) != 3 or parts[1] not in tensor_parallel:
            continue
        tp = tensor_parallel[parts[1]]
        bundle_nodes = pg.get("bundles_to_node_id") or {}
        entry: dict[str, Any] = {"replica": parts[2], "state": pg.get("state", "?")}
        if pg.get("state") == "CREATED":
            ranks = []
            for i in sorted(bundle_nodes):
                node = bundle_nodes[i]
                ranks.append(
                    {
                        "rank": i,
                        "stage": i // tp,
                        "shard": i % tp,
                        "node": names.get(node, node[:8]),
                        "node_alive": node in alive,
                    }
                )
            entry["ranks"] = ranks
        else:
            stats = pg.get("stats") or {}
            entry["reason"] = (
                f"{len(pg.get('bundles') or {})} bundle(s) "
                f"{list((pg.get('bundles') or {}).values())[:1]} with strategy "
                f"{pg.get('strategy')} cannot be placed on the {len(alive)} alive node(s) "
                f"({stats.get('scheduling_state', 'pending')})"
            )
        out.setdefault(parts[1], []).append(entry)
    return out


def live_placements(tensor_parallel: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    import ray
    from ray.util.placement_group import placement_group_table

    return replica_placements(tensor_parallel, placement_group_table(), ray.nodes())
