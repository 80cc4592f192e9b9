"""Sharding layouts (tensor x pipeline x expert parallel) over a GPU fleet, and whether each fits.

One replica is one vLLM engine: ``tp`` GPUs split every layer, ``pp`` stages split the
layers, expert parallelism places whole experts on the TP ranks instead of slicing each one.
A TP group stays inside a node (NVLink); pipeline stages may span nodes. The memory of a GPU
is budgeted the way vLLM does: ``gpu_memory_utilization`` x total, minus the weights of the
largest stage, minus runtime overhead (activations of one scheduler step, CUDA graphs, NCCL
and CUDA context); what remains is KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmplat.planner.geometry import DTYPE_BYTES, ModelGeometry
from llmplat.planner.gpus import GIB, GpuType

KV_BLOCK_TOKENS = 16
"""vLLM allocates KV cache in blocks of this many tokens."""


@dataclass(frozen=True)
class Fleet:
    """The GPUs a platform team has: one GPU type, ``nodes`` nodes of ``gpus_per_node``."""

    gpu: GpuType
    gpus_per_node: int
    nodes: int

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class EngineChoices:
    """What the engine is asked to do (from a profile, or the command line)."""

    max_model_len: int
    weights: str = "bf16"
    activations: str = "bf16"
    kv: str = "bf16"
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | None = None
    max_num_seqs: int = 256
    enforce_eager: bool = False
    min_seqs: int = 4
    """Full-length sequences the KV cache must hold at once for a layout to count as fitting:
    fewer would queue every user behind one long conversation."""


@dataclass(frozen=True)
class Overheads:
    """Per-GPU memory vLLM needs besides weights and KV cache (estimates, in GiB)."""

    runtime_gib: float = 1.0
    """CUDA context, cuBLAS/attention workspaces, allocator fragmentation."""
    collective_gib: float = 0.5
    """NCCL buffers, when a replica spans more than one GPU."""
    cuda_graphs_gib: float = 1.0
    """Decode CUDA graphs vLLM captures (none with enforce_eager)."""

    def activation_bytes(
        self, g: ModelGeometry, tp: int, engine: EngineChoices, gpu: GpuType
    ) -> int:
        """Peak activations of one scheduler step (vLLM's profiling run): the residual stream
        and its copies, this rank's attention projections and its top-k experts' MLP
        activations, plus fp32 logits of every sequence for sampling."""
        tokens = engine.max_num_batched_tokens or gpu.max_num_batched_tokens
        k = g.experts_per_token if g.is_moe else 1
        per_token = (
            4 * g.hidden_size
            + (g.num_heads + 2 * g.num_kv_heads) * g.head_dim // tp
            + k * 3 * g.intermediate_size // tp
        ) * DTYPE_BYTES[engine.activations]
        logits = engine.max_num_seqs * g.vocab_size * 4
        return tokens * per_token + logits

    def bytes_per_gpu(
        self, g: ModelGeometry, tp: int, gpus_per_replica: int, engine: EngineChoices, gpu: GpuType
    ) -> int:
        fixed = self.runtime_gib
        if gpus_per_replica > 1:
            fixed += self.collective_gib
        if not engine.enforce_eager:
            fixed += self.cuda_graphs_gib
        return int(fixed * GIB) + self.activation_bytes(g, tp, engine, gpu)


@dataclass(frozen=True)
class Layout:
    """How one replica is sharded and how replicas tile the fleet."""

    tp: int
    pp: int = 1
    ep: bool = False

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    def nodes_per_replica(self, gpus_per_node: int) -> int:
        return max(1, math.ceil(self.gpus_per_replica / gpus_per_node))

    def replicas_per_node(self, gpus_per_node: int) -> int:
        """Replicas that share one node (0 when a replica spans several nodes)."""
        n = self.gpus_per_replica
        return gpus_per_node // n if n <= gpus_per_node else 0

    def replicas_in(self, fleet: Fleet) -> int:
        per_node = self.replicas_per_node(fleet.gpus_per_node)
        if per_node:
            return per_node * fleet.nodes
        return fleet.nodes // self.nodes_per_replica(fleet.gpus_per_node)

    def label(self) -> str:
        return f"TP{self.tp} x PP{self.pp}" + (" + EP" if self.ep else "")


@dataclass(frozen=True)
class Assessment:
    """A layout checked against a model, an engine configuration and a fleet."""

    layout: Layout
    fleet: Fleet
    engine: EngineChoices
    weights_per_gpu: int
    overhead_per_gpu: int
    budget_per_gpu: int
    kv_per_gpu: int
    kv_tokens_per_replica: int
    tokens_per_sequence: int
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def seqs_per_replica(self) -> float:
        return self.kv_tokens_per_replica / self.tokens_per_sequence

    @property
    def replicas(self) -> int:
        return self.layout.replicas_in(self.fleet)


def _shape_reasons(g: ModelGeometry, layout: Layout) -> list[str]:
    tp, reasons = layout.tp, []
    if g.num_heads % tp:
        reasons.append(f"TP {tp} does not divide the {g.num_heads} attention heads")
    if (tp <= g.num_kv_heads and g.num_kv_heads % tp) or (
        tp > g.num_kv_heads and tp % g.num_kv_heads
    ):
        reasons.append(f"TP {tp} and the {g.num_kv_heads} KV heads do not divide one another")
    if layout.ep:
        if not g.is_moe:
            reasons.append("expert parallel needs a mixture-of-experts model")
        elif tp < 2:
            reasons.append("expert parallel needs TP >= 2 (experts spread over the TP ranks)")
        elif g.num_experts < tp:
            reasons.append(f"{g.num_experts} experts cannot spread over {tp} GPUs")
    elif g.intermediate_size % tp:
        reasons.append(f"TP {tp} does not divide the intermediate size {g.intermediate_size}")
    if layout.pp > g.num_layers:
        reasons.append(f"PP {layout.pp} exceeds the {g.num_layers} layers")
    return reasons


def stage_weight_bytes(g: ModelGeometry, layout: Layout, weights: str, activations: str) -> int:
    """Weights on one GPU of the largest pipeline stage."""
    tp, w, a = layout.tp, DTYPE_BYTES[weights], DTYPE_BYTES[activations]
    if layout.ep and g.is_moe:
        mlp = math.ceil(g.num_experts / tp) * g.expert_params * w  # whole experts per rank
    else:
        mlp = g.mlp_params * w // tp
    layer = g.attention_params * w // tp + mlp + (g.router_params + g.norm_params) * a
    ends = g.embedding_bytes(activations) + g.head_bytes(activations)
    if layout.pp > 1:  # the embedding sits on the first stage, the head on the last
        ends = max(g.embedding_bytes(activations), g.head_bytes(activations))
    return math.ceil(g.num_layers / layout.pp) * layer + ends // tp


def assess(
    g: ModelGeometry,
    layout: Layout,
    fleet: Fleet,
    engine: EngineChoices,
    overheads: Overheads | None = None,
) -> Assessment:
    """Check one layout; every reason it cannot run is named with its numbers."""
    overheads = overheads or Overheads()
    gpu = fleet.gpu
    reasons = _shape_reasons(g, layout)
    notes = []
    npr = layout.nodes_per_replica(fleet.gpus_per_node)
    if layout.tp > fleet.gpus_per_node:
        reasons.append(
            f"TP {layout.tp} exceeds the {fleet.gpus_per_node} GPUs of a node "
            "(a TP group must stay inside one node)"
        )
    elif npr > fleet.nodes:
        reasons.append(f"a replica spans {npr} nodes; the fleet has {fleet.nodes}")
    if layout.tp > 1 and gpu.interconnect == "pcie":
        notes.append(f"tensor parallel over PCIe ({gpu.interconnect_gb_per_s:g} GB/s)")
    if engine.max_model_len > g.max_position_embeddings:
        reasons.append(
            f"max_model_len {engine.max_model_len} exceeds the model's "
            f"{g.max_position_embeddings} positions"
        )
    weights = stage_weight_bytes(g, layout, engine.weights, engine.activations)
    overhead = overheads.bytes_per_gpu(g, layout.tp, layout.gpus_per_replica, engine, gpu)
    budget = int(engine.gpu_memory_utilization * gpu.memory_bytes)
    kv_free = budget - weights - overhead
    per_token = g.kv_bytes_per_token(
        engine.kv,
        layers=math.ceil(g.num_layers / layout.pp),
        kv_heads=g.kv_heads_per_gpu(layout.tp),
    )
    tokens = max(kv_free, 0) // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
    seq_tokens = g.kv_tokens_per_sequence(engine.max_model_len)
    if kv_free <= 0:
        reasons.append(
            f"weights {weights / GIB:.1f} GiB + runtime {overhead / GIB:.1f} GiB per GPU exceed "
            f"the {budget / GIB:.1f} GiB vLLM may use ({engine.gpu_memory_utilization:g} x "
            f"{gpu.memory_bytes / GIB:.1f} GiB {gpu.name})"
        )
    elif tokens < engine.min_seqs * seq_tokens:
        reasons.append(
            f"KV cache {kv_free / GIB:.1f} GiB per GPU holds {tokens:,} tokens = "
            f"{tokens / seq_tokens:.1f} sequences of {seq_tokens:,}; needs >= {engine.min_seqs}"
        )
    return Assessment(
        layout=layout,
        fleet=fleet,
        engine=engine,
        weights_per_gpu=weights,
        overhead_per_gpu=overhead,
        budget_per_gpu=budget,
        kv_per_gpu=max(kv_free, 0),
        kv_tokens_per_replica=tokens,
        tokens_per_sequence=seq_tokens,
        reasons=tuple(reasons),
        notes=tuple(notes),
    )


def candidate_layouts(g: ModelGeometry, fleet: Fleet) -> list[Layout]:
    """Every TP x PP (x EP for MoE models) whose replicas tile the fleet's nodes."""
    out = []
    per_node = fleet.gpus_per_node
    for tp in (d for d in range(1, per_node + 1) if per_node % d == 0):
        for pp in range(1, g.num_layers + 1):
            n = tp * pp
            if n > fleet.total_gpus:
                break
            if (n <= per_node and per_node % n) or (n > per_node and n % per_node):
                continue
            out.append(Layout(tp, pp))
            if g.is_moe and tp > 1:
                out.append(Layout(tp, pp, ep=True))
    return out


def plan(
    g: ModelGeometry,
    fleet: Fleet,
    engine: EngineChoices,
    overheads: Overheads | None = None,
) -> list[Assessment]:
    """Every candidate layout, fitting ones first (fewest GPUs per replica, widest TP)."""
    results = [
        assess(g, layout, fleet, engine, overheads) for layout in candidate_layouts(g, fleet)
    ]
    return sorted(
        results,
        key=lambda a: (not a.fits, a.layout.gpus_per_replica, -a.layout.tp, a.layout.ep),
    )
