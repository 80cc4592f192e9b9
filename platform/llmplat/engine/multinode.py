"""Start one engine replica's ranks on the nodes its placement group holds.

On GPUs Ray Serve LLM hands vLLM the placement group and vLLM's Ray executor starts one
worker actor per bundle. vLLM-CPU has no Ray executor (``vllm/v1/executor/ray_utils.py``,
``initialize_ray_cluster``: "current platform cpu does not support ray"; upstream
vllm-project/vllm#21602, and the PR that would add it, #25386, was closed unmerged), and
Ray Serve LLM runs CPU engines with the multiprocessing executor. vLLM's multiprocessing
executor does span nodes (``nnodes``/``node_rank``/``master_addr``, the ``--headless``
worker nodes of ``vllm serve``), so a CPU replica whose placement group covers several nodes
runs node 0's ranks in the replica, as always, and each further node's ranks in a
:class:`NodeRanks` actor pinned to that node's first bundle. This module is the one place
where CPU and GPU replicas start their ranks differently; the bundles, strategy and rank
order are the same (:mod:`llmplat.engine.placement`).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from llmplat.engine.placement import PlacementPlan, Rank, rank_core_lists
from llmplat.settings import export_values

log = logging.getLogger(__name__)

CORES_LABEL = "llmplat.io/cores"
"""Node label of a local multi-node cluster: the host cores this node's engines bind to
(several local nodes share one machine; on a real cluster each node has its own)."""
NODE_LABEL = "llmplat.io/node"
"""Node label with the node's name in a local multi-node cluster (head, worker-1, …)."""
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


@dataclass(frozen=True)
class PlacedRank:
    """A rank and the Ray node that holds it."""

    rank: Rank
    node_id: str
    node_name: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank.rank,
            "stage": self.rank.stage,
            "shard": self.rank.shard,
            "node_id": self.node_id,
            "node": self.node_name,
        }


def node_names(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Node id -> a name to show: the local cluster's node label, else the node's address."""
    out = {}
    for n in nodes:
        labels = n.get("Labels") or {}
        out[n["NodeID"]] = labels.get(NODE_LABEL) or n.get("NodeManagerAddress", "?")
    return out


def placed_by_bundle(
    plan: PlacementPlan, bundle_nodes: list[str], names: dict[str, str]
) -> list[PlacedRank]:
    """Rank i on the node of bundle i, wherever Ray put it (no node-group check)."""
    return [
        PlacedRank(
            r, bundle_nodes[r.rank], names.get(bundle_nodes[r.rank], bundle_nodes[r.rank][:8])
        )
        for r in plan.ranks()
    ]


def parse_cores(label: str) -> list[int]:
    """'0', '2-3' or '0,2-3' as a list of core ids."""
    cores: list[int] = []
    for part in label.split(","):
        lo, _, hi = part.strip().partition("-")
        cores.extend(range(int(lo), int(hi or lo) + 1))
    return cores


def node_binding(labels: dict[str, str], local_ranks: int) -> str | None:
    """The thread binding of ``local_ranks`` ranks on a node that names its cores, or None
    (keep the binding the engine's environment carries)."""
    cores = labels.get(CORES_LABEL)
    if not cores:
        return None
    return rank_core_lists(parse_cores(cores), local_ranks)


def free_port(host: str = "") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def headless_kwargs(engine_kwargs: dict[str, Any], node_rank: int) -> dict[str, Any]:
    return {**engine_kwargs, "node_rank": node_rank}


class NodeRanks:
    """The ranks of one further node of a CPU replica (vLLM's headless worker node).

    A Ray actor in that node's first bundle; :meth:`run` returns only when the workers stop,
    so the replica learns of a lost node from the ``run`` call failing."""

    def __init__(self, env: dict[str, str]) -> None:
        export_values(env)  # before vLLM starts this node's worker processes

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, engine_kwargs: dict[str, Any]) -> None:
        import vllm

        from llmplat.compat import MultiprocExecutor, UsageContext

        args = vllm.AsyncEngineArgs(**engine_kwargs)
        config = args.create_engine_config(
            usage_context=UsageContext.OPENAI_API_SERVER, headless=True
        )
        executor = MultiprocExecutor(config, monitor_workers=False)
        executor.start_worker_monitor(inline=True)
