"""The GPU table: memory and interconnect of each GPU type (``configs/gpus.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MIB = 1 << 20
GIB = 1 << 30


class GpuType(BaseModel):
    """One GPU model as the planner and the Helm values see it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9.-]*$", description="e.g. 'h100-80gb'.")
    description: str = ""
    memory_mib: int = Field(..., ge=1024, description="Total memory as nvidia-smi reports it.")
    interconnect: Literal["nvlink", "pcie"] = Field(
        ..., description="GPU-to-GPU link inside a node; TP over PCIe is bandwidth bound."
    )
    interconnect_gb_per_s: float = Field(..., gt=0, description="GB/s, both directions.")
    accelerator_type: str = Field(..., min_length=1, description="Ray accelerator type label.")
    product_label: str | None = Field(
        None, description="Node label nvidia.com/gpu.product of nodes with this GPU."
    )
    max_num_batched_tokens: int = Field(
        2048, ge=16, description="vLLM's default tokens per scheduler step on this GPU."
    )

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


class GpuTableError(ValueError):
    """A GPU table that cannot be read, or a GPU type it does not know."""


def _read(path: Path) -> dict[str, GpuType]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GpuTableError(f"{path}: cannot read the GPU table: {exc}") from exc
    entries = data.get("gpus") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise GpuTableError(f"{path}: expected a mapping 'gpus: {{name: {{...}}}}'")
    table = {}
    for name, fields in entries.items():
        try:
            table[name] = GpuType.model_validate({"name": name, **(fields or {})})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise GpuTableError(f"{path}: gpus.{name}.{where}: {first['msg']}") from exc
    return table


def load_gpu_table(config_dir: Path, extra: list[Path] | None = None) -> dict[str, GpuType]:
    """``<config_dir>/gpus.yaml``, then each extra file (later entries win)."""
    table: dict[str, GpuType] = {}
    default = config_dir / "gpus.yaml"
    if default.is_file():
        table |= _read(default)
    for path in extra or ():
        table |= _read(path)
    return table


def lookup_gpu(table: dict[str, GpuType], name: str) -> GpuType:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise GpuTableError(
            f"unknown GPU type {name!r}; known: {known} (add it to configs/gpus.yaml "
            "or pass --gpus FILE)"
        ) from None
