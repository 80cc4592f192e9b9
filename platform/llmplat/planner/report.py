"""Plans as text tables and as JSON."""

from __future__ import annotations

from typing import Any

from llmplat.planner.geometry import DTYPE_BYTES, ModelGeometry
from llmplat.planner.gpus import GIB
from llmplat.planner.layouts import Assessment, EngineChoices, Fleet
from llmplat.planner.source import PlanTarget

GB = 1e9
MB = 1e6


def _count(n: float) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.1f} MB"


def model_summary(target: PlanTarget, engine: EngineChoices) -> list[str]:
    g = target.geometry
    kv_token = g.kv_bytes_per_token(engine.kv)
    moe = f", {g.num_experts} experts top-{g.experts_per_token}" if g.is_moe else ""
    where = f"profile {target.profile.name}, " if target.profile else ""
    return [
        f"model {g.name} ({where}shapes from {target.shapes_from})",
        f"  parameters  {_count(g.total_params)} ({_count(g.active_params)} active per "
        f"token), {g.num_layers} layers{moe}, {g.num_kv_heads} KV heads x {g.head_dim}",
        f"  weights     {_size(g.weight_bytes(engine.weights, engine.activations))} "
        f"{engine.weights}",
        f"  KV cache    {kv_token / MB:.3f} MB per token ({engine.kv}); "
        f"{_size(kv_token * g.kv_tokens_per_sequence(engine.max_model_len))} per "
        f"{engine.max_model_len:,}-token sequence"
        + (f" (sliding window {g.sliding_window:,})" if g.sliding_window else ""),
    ]


def fleet_summary(fleet: Fleet, engine: EngineChoices) -> str:
    gpu = fleet.gpu
    budget = engine.gpu_memory_utilization * gpu.memory_bytes / GIB
    return (
        f"fleet {fleet.nodes} x {fleet.gpus_per_node} {gpu.name} ({gpu.memory_bytes / GIB:.1f} "
        f"GiB, {gpu.interconnect} {gpu.interconnect_gb_per_s:g} GB/s); vLLM may use "
        f"{engine.gpu_memory_utilization:g} = {budget:.1f} GiB per GPU; a layout fits when its "
        f"KV cache holds >= {engine.min_seqs} sequences of {engine.max_model_len:,} tokens"
    )


_HEAD = (
    f"{'layout':16} {'GPUs/rep':>8} {'nodes/rep':>9} {'rep/node':>8} {'replicas':>8} "
    f"{'weights/GPU':>11} {'KV/GPU':>9} {'KV tokens/rep':>13} {'full-ctx seqs/rep':>17}"
)


def _row(a: Assessment) -> str:
    lay, per_node = a.layout, a.fleet.gpus_per_node
    rpn = lay.replicas_per_node(per_node)
    return (
        f"{lay.label():16} {lay.gpus_per_replica:>8} {lay.nodes_per_replica(per_node):>9} "
        f"{(str(rpn) if rpn else '-'):>8} {a.replicas:>8} "
        f"{a.weights_per_gpu / GIB:>7.1f} GiB {a.kv_per_gpu / GIB:>5.1f} GiB "
        f"{a.kv_tokens_per_replica:>13,} {a.seqs_per_replica:>17.1f}"
    )


def render_table(assessments: list[Assessment]) -> list[str]:
    fits = [a for a in assessments if a.fits]
    misses = [a for a in assessments if not a.fits]
    lines = [f"fits ({len(fits)}):" if fits else "fits: none"]
    if fits:
        lines.append("  " + _HEAD)
        for a in fits:
            note = f"  ({'; '.join(a.notes)})" if a.notes else ""
            lines.append("  " + _row(a) + note)
    if misses:
        lines.append(f"does not fit ({len(misses)}):")
        for a in misses:
            lines.append(f"  {a.layout.label():16} {'; '.join(a.reasons)}")
    return lines


def render_verdict(a: Assessment, profile_name: str) -> str:
    if a.fits:
        return (
            f"profile {profile_name}: {a.layout.label()} fits: {a.replicas} replica(s) in this "
            f"fleet, {a.kv_tokens_per_replica:,} KV tokens and {a.seqs_per_replica:.1f} "
            "full-length sequences each"
        )
    return f"profile {profile_name}: {a.layout.label()} does NOT fit: {'; '.join(a.reasons)}"


def assessment_json(a: Assessment) -> dict[str, Any]:
    per_node = a.fleet.gpus_per_node
    return {
        "tensor_parallel": a.layout.tp,
        "pipeline_parallel": a.layout.pp,
        "expert_parallel": a.layout.ep,
        "gpus_per_replica": a.layout.gpus_per_replica,
        "nodes_per_replica": a.layout.nodes_per_replica(per_node),
        "replicas_per_node": a.layout.replicas_per_node(per_node),
        "replicas": a.replicas,
        "fits": a.fits,
        "reasons": list(a.reasons),
        "notes": list(a.notes),
        "weights_gib_per_gpu": round(a.weights_per_gpu / GIB, 2),
        "overhead_gib_per_gpu": round(a.overhead_per_gpu / GIB, 2),
        "kv_cache_gib_per_gpu": round(a.kv_per_gpu / GIB, 2),
        "kv_tokens_per_replica": a.kv_tokens_per_replica,
        "full_context_seqs_per_replica": round(a.seqs_per_replica, 2),
    }


def model_json(g: ModelGeometry, engine: EngineChoices) -> dict[str, Any]:
    return {
        "name": g.name,
        "parameters": g.total_params,
        "active_parameters": g.active_params,
        "weight_bytes": g.weight_bytes(engine.weights, engine.activations),
        "weight_dtype": engine.weights,
        "kv_bytes_per_token": g.kv_bytes_per_token(engine.kv),
        "kv_dtype": engine.kv,
        "kv_dtype_bytes": DTYPE_BYTES[engine.kv],
        "max_model_len": engine.max_model_len,
    }
