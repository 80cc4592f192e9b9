"""The GPU table users extend in config."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmplat.planner.gpus import GpuTableError, load_gpu_table, lookup_gpu

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_shipped_table_has_memory_and_interconnect() -> None:
    table = load_gpu_table(CONFIGS)
    h100 = table["h100-80gb"]
    assert h100.memory_mib == 81559 and h100.interconnect == "nvlink"
    assert table["l40s-48gb"].interconnect == "pcie"
    assert {g.accelerator_type for g in table.values()} >= {"H100", "L40S", "A100"}


def test_extra_files_add_and_override(tmp_path: Path) -> None:
    extra = tmp_path / "gpus.yaml"
    extra.write_text(
        "gpus:\n"
        "  b200-180gb: {memory_mib: 183359, interconnect: nvlink, interconnect_gb_per_s: 1800,"
        " accelerator_type: B200, max_num_batched_tokens: 16384}\n"
        "  h100-80gb: {memory_mib: 80000, interconnect: nvlink, interconnect_gb_per_s: 900,"
        " accelerator_type: H100}\n"
    )
    table = load_gpu_table(CONFIGS, [extra])
    assert table["b200-180gb"].memory_mib == 183359
    assert table["h100-80gb"].memory_mib == 80000


def test_unknown_gpu_lists_the_known_ones() -> None:
    with pytest.raises(GpuTableError, match="unknown GPU type 'h800'; known: .*h100-80gb"):
        lookup_gpu(load_gpu_table(CONFIGS), "h800")


def test_bad_entry_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "gpus.yaml"
    bad.write_text(
        "gpus:\n  x1: {memory_mib: 10, interconnect: nvlink, interconnect_gb_per_s: 1, accelerator_type: X}\n"
    )
    with pytest.raises(GpuTableError, match=r"gpus\.x1\.memory_mib"):
        load_gpu_table(CONFIGS, [bad])
