"""`llmplat plan`: which sharding layouts of a model fit a GPU fleet, and why the others don't."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llmplat.cli.base import Subcommands
from llmplat.cli.output import note, print_json
from llmplat.planner import (
    Fleet,
    GeometryError,
    GpuTableError,
    assess,
    engine_choices,
    load_gpu_table,
    load_target,
    lookup_gpu,
    plan,
    profile_layout,
)
from llmplat.planner.gpus import GIB
from llmplat.planner.layouts import EngineChoices
from llmplat.planner.report import (
    assessment_json,
    fleet_summary,
    model_json,
    model_summary,
    render_table,
    render_verdict,
)
from llmplat.planner.source import PlanTarget
from llmplat.settings import Settings


def _cpu_plan(target: PlanTarget, engine: EngineChoices) -> tuple[list[str], dict[str, Any]]:
    """vLLM-CPU: one engine, its KV cache is VLLM_CPU_KVCACHE_SPACE (the profile's)."""
    assert target.profile is not None
    space = target.profile.accelerator.kv_cache_space_gib
    g = target.geometry
    tokens = space * GIB // g.kv_bytes_per_token(engine.kv)
    seq = g.kv_tokens_per_sequence(engine.max_model_len)
    line = (
        f"cpu: one vLLM-CPU engine; KV cache {space} GiB (VLLM_CPU_KVCACHE_SPACE) holds "
        f"{tokens:,} tokens = {tokens / seq:.1f} sequences of {seq:,}"
    )
    return [line], {"device": "cpu", "kv_cache_gib": space, "kv_tokens": tokens}


def run_plan(args: argparse.Namespace, settings: Settings) -> tuple[int, list[str], dict]:
    target = load_target(args.model, settings.config_dir)
    engine = engine_choices(
        target,
        dtype=args.dtype,
        kv_dtype=args.kv_dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        min_seqs=args.min_seqs,
    )
    lines = model_summary(target, engine)
    out: dict[str, Any] = {"model": model_json(target.geometry, engine)}
    hw = target.profile.hardware if target.profile else None
    gpu_name = args.gpu or (hw.gpu if hw else None)
    if gpu_name is None:
        if target.profile is not None and target.profile.accelerator.kind == "cpu":
            cpu_lines, out["cpu"] = _cpu_plan(target, engine)
            return 0, lines + cpu_lines, out
        raise GpuTableError("say which GPUs to plan for: --gpu NAME (see configs/gpus.yaml)")
    table = load_gpu_table(settings.config_dir, [Path(p) for p in args.gpus or ()])
    fleet = Fleet(
        gpu=lookup_gpu(table, gpu_name),
        gpus_per_node=args.gpus_per_node or (hw.gpus_per_node if hw else None) or 8,
        nodes=args.nodes or (hw.nodes if hw else None) or 1,
    )
    results = plan(target.geometry, fleet, engine)
    lines += [fleet_summary(fleet, engine), *render_table(results)]
    out["fleet"] = {
        "gpu": fleet.gpu.name,
        "gpus_per_node": fleet.gpus_per_node,
        "nodes": fleet.nodes,
    }
    out["layouts"] = [assessment_json(a) for a in results]
    rc = 0 if any(a.fits for a in results) else 1
    if target.profile is not None and target.profile.accelerator.kind == "gpu":
        own = assess(target.geometry, profile_layout(target.profile), fleet, engine)
        lines.append(render_verdict(own, target.profile.name))
        out["profile_layout"] = assessment_json(own)
        rc = 0 if own.fits else 1
    return rc, lines, out


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    try:
        rc, lines, data = run_plan(args, settings)
    except (GeometryError, GpuTableError, ValueError) as exc:
        note(str(exc))
        return 2
    if args.json:
        print_json(data)
    else:
        print("\n".join(lines))
    return rc


def add_plan_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "plan",
        help="which sharding layouts of a model fit a GPU fleet (and why the others don't)",
        description="Lists tensor x pipeline x expert parallel layouts of a model over a fleet "
        "of GPUs with weights per GPU, KV-cache capacity and concurrent full-length sequences, "
        "and the numbers that rule out the rest. Exit status 1 when nothing fits (or, for a "
        "profile, when its own layout does not).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="profile name or file (configs/models/), or a Hugging Face config.json / folder",
    )
    p.add_argument("--gpu", help="GPU type (configs/gpus.yaml); default: the profile's hardware")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: profile's, or 8)")
    p.add_argument("--nodes", type=int, help="nodes (default: profile's, or 1)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp8"], help="weight dtype")
    p.add_argument("--kv-dtype", choices=["bf16", "fp16", "fp8"], help="KV-cache dtype")
    p.add_argument("--max-model-len", type=int, help="context length (default: profile's)")
    p.add_argument("--gpu-memory-utilization", type=float, help="vLLM's share of GPU memory")
    p.add_argument(
        "--min-seqs",
        type=int,
        help="full-length sequences the KV cache must hold for a layout to fit (default 4)",
    )
    p.add_argument("--gpus", action="append", help="extra GPU table YAML (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)
