"""Capacity planning: model memory and KV-cache arithmetic, sharding layouts per GPU fleet."""

from llmplat.planner.geometry import GeometryError, ModelGeometry
from llmplat.planner.gpus import GpuTableError, GpuType, load_gpu_table, lookup_gpu
from llmplat.planner.layouts import (
    Assessment,
    EngineChoices,
    Fleet,
    Layout,
    Overheads,
    assess,
    candidate_layouts,
    plan,
)
from llmplat.planner.source import PlanTarget, engine_choices, load_target, profile_layout

__all__ = [
    "Assessment",
    "EngineChoices",
    "Fleet",
    "GeometryError",
    "GpuTableError",
    "GpuType",
    "Layout",
    "ModelGeometry",
    "Overheads",
    "PlanTarget",
    "assess",
    "candidate_layouts",
    "engine_choices",
    "load_gpu_table",
    "load_target",
    "lookup_gpu",
    "plan",
    "profile_layout",
]
