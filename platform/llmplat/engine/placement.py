"""Where the ranks of one engine replica go: placement-group bundles, strategy, nodes.

One function, :func:`placement_plan`, turns a profile into the placement of one replica; the
model deployment (``LLMConfig.placement_group_config``), the engine that starts its ranks
(:mod:`llmplat.engine.multinode`) and the Helm values (``llmplat deploy values``) all read it,
so a layout tried on a local multi-node cluster is the layout the chart deploys.

Ranks follow vLLM's order: rank = stage x tensor_parallel_size + shard. A tensor-parallel
group never leaves a node (its all-reduce runs every layer); pipeline stages may, so a replica
spans ``nodes`` nodes of ``ranks_per_node`` consecutive ranks each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmplat.config.profiles import ModelProfile

CPU_BUNDLE_MIN = 0.001
"""Ray rejects an all-zero bundle: a CPU rank that reserves no core asks for this much."""


class PlacementError(RuntimeError):
    """The nodes a placement group landed on do not fit the profile's layout."""


@dataclass(frozen=True)
class Rank:
    """One vLLM worker of a replica: its pipeline stage, tensor shard and node."""

    rank: int
    stage: int
    shard: int
    node: int
    """Index of the replica's node (0 = the node of the replica's first bundle)."""


@dataclass(frozen=True)
class PlacementPlan:
    tensor_parallel: int
    pipeline_parallel: int
    nodes: int
    """Nodes one replica spans."""
    bundle: dict[str, float]
    """Resources of each rank's bundle."""
    strategy: str

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nodes

    @property
    def bundles(self) -> list[dict[str, float]]:
        return [dict(self.bundle) for _ in range(self.world_size)]

    def ranks(self) -> list[Rank]:
        tp = self.tensor_parallel
        return [
            Rank(rank=r, stage=r // tp, shard=r % tp, node=r // self.ranks_per_node)
            for r in range(self.world_size)
        ]

    def placement_group_config(self) -> dict[str, object]:
        """Ray Serve LLM's ``placement_group_config``: one bundle per rank."""
        return {"bundle_per_worker": dict(self.bundle), "strategy": self.strategy}

    def node_groups(self, bundle_nodes: Sequence[str]) -> list[str]:
        """The node id of each of the replica's nodes, from the node of each bundle (Ray's
        ``placement_group_table``); raises when the bundles do not fall into ``nodes`` runs
        of ``ranks_per_node`` consecutive ranks on distinct nodes."""
        if len(bundle_nodes) != self.world_size:
            raise PlacementError(f"{len(bundle_nodes)} bundles placed for {self.world_size} ranks")
        per = self.ranks_per_node
        groups = [bundle_nodes[i * per : (i + 1) * per] for i in range(self.nodes)]
        nodes = [g[0] for g in groups]
        if any(len(set(g)) != 1 for g in groups) or len(set(nodes)) != self.nodes:
            raise PlacementError(
                f"TP {self.tensor_parallel} x PP {self.pipeline_parallel} over {self.nodes} "
                f"node(s) needs ranks {per} to a node, in order; the placement group put "
                f"them on {_short(bundle_nodes)} (strategy {self.strategy})"
            )
        return nodes


def _short(node_ids: Sequence[str]) -> str:
    return "[" + ", ".join(n[:8] for n in node_ids) + "]"


def nodes_per_replica(profile: ModelProfile, gpus_per_node: int | None = None) -> int:
    """Nodes one replica of the profile spans: its ranks over the ranks a node holds
    (``gpus_per_node``, default ``hardware.gpus_per_node``; on CPU, ``hardware.nodes`` names
    the spread directly)."""
    eng, hw = profile.engine, profile.hardware
    world = eng.tensor_parallel_size * eng.pipeline_parallel_size
    if profile.accelerator.kind == "cpu":
        return hw.nodes or 1
    per_node = gpus_per_node or hw.gpus_per_node
    if per_node:
        return max(1, math.ceil(world / per_node))
    return 1


def placement_plan(profile: ModelProfile, gpus_per_node: int | None = None) -> PlacementPlan:
    """The placement of one replica of ``profile`` (on nodes of ``gpus_per_node`` GPUs when
    the fleet differs from the profile's ``hardware``)."""
    eng, acc = profile.engine, profile.accelerator
    bundle: dict[str, float] = {"CPU": acc.cpus_per_worker}
    if acc.kind == "gpu":
        bundle["GPU"] = 1
    elif bundle["CPU"] == 0:
        bundle["CPU"] = CPU_BUNDLE_MIN
    return PlacementPlan(
        tensor_parallel=eng.tensor_parallel_size,
        pipeline_parallel=eng.pipeline_parallel_size,
        nodes=nodes_per_replica(profile, gpus_per_node),
        bundle=bundle,
        strategy=profile.serving.placement.strategy,
    )


def rank_core_lists(cores: Sequence[int], ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` local workers over ``cores``: disjoint,
    contiguous core lists joined with ``|`` (vLLM's per-rank syntax); with fewer cores than
    ranks, ranks share cores round-robin rather than fail."""
    if not cores:
        raise ValueError("no cores to bind to")
    if ranks <= len(cores):
        per = len(cores) // ranks
        lists = [cores[i * per : (i + 1) * per] for i in range(ranks)]
    else:
        lists = [[cores[i % len(cores)]] for i in range(ranks)]
    return "|".join(",".join(str(c) for c in group) for group in lists)


NODES_KEY = "llmplat_nodes"
"""``LLMConfig.experimental_configs`` entry: the nodes one replica spans (from the plan)."""


def plan_from_llm_config(llm_config: Any) -> PlacementPlan:
    """The plan an ``LLMConfig`` was built from (inside the replica, which has no profile)."""
    kwargs = llm_config.engine_kwargs
    pg = llm_config.placement_group_config or {}
    return PlacementPlan(
        tensor_parallel=int(kwargs.get("tensor_parallel_size", 1)),
        pipeline_parallel=int(kwargs.get("pipeline_parallel_size", 1)),
        nodes=int((llm_config.experimental_configs or {}).get(NODES_KEY, 1)),
        bundle=dict(pg.get("bundle_per_worker") or {"CPU": CPU_BUNDLE_MIN}),
        strategy=str(pg.get("strategy", "PACK")),
    )
