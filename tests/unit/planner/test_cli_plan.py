"""`llmplat plan` end to end (argument parsing, output, exit status)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmplat.cli import main

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(autouse=True)
def _config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPLAT_CONFIG_DIR", str(CONFIGS))


def test_issue_example_lists_fits_and_misfits(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "plan",
            "--model",
            "mixtral-8x22b-h100x8",
            "--gpu",
            "h100-80gb",
            "--gpus-per-node",
            "8",
            "--nodes",
            "2",
            "--dtype",
            "bf16",
            "--max-model-len",
            "65536",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "parameters  140.6 B (39.2 B active per token)" in out
    assert "weights     281.3 GB bf16" in out
    assert "0.229 MB per token (bf16)" in out
    assert "fits (" in out and "does not fit (" in out
    assert "TP8 x PP1 + EP" in out
    assert "profile mixtral-8x22b-h100x8: TP8 x PP1 + EP fits: 2 replica(s)" in out


def test_json_output_has_every_layout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "mixtral-8x22b-h100x8-fp8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["weight_dtype"] == "fp8"
    own = data["profile_layout"]
    assert own["fits"] and own["tensor_parallel"] == 4 and own["replicas_per_node"] == 2
    assert {lay["tensor_parallel"] for lay in data["layouts"]} == {1, 2, 4, 8}


def test_refuses_a_profile_whose_layout_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "--model", "mixtral-8x22b-h100x8-fp8", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "TP4 x PP1 does NOT fit: KV cache" in out


def test_a_bare_config_json_plans_too(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = CONFIGS / "architectures" / "mixtral-8x22b.json"
    rc = main(["plan", "--model", str(cfg), "--gpu", "h100-80gb", "--gpus-per-node", "4"])
    assert rc == 1  # nothing fits 4 x 80 GB in bf16 at 64K
    assert "fits: none" in capsys.readouterr().out


def test_tiny_cpu_profile_plans_its_kv_cache(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "tiny-mixtral-cpu"]) == 0
    out = capsys.readouterr().out
    assert "parameters  86.5 M" in out
    assert "KV cache 2 GiB (VLLM_CPU_KVCACHE_SPACE) holds 1,048,576 tokens" in out


def test_errors_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "mixtral-8x22b-h100x8", "--gpu", "h800"]) == 2
    assert "unknown GPU type 'h800'" in capsys.readouterr().err
    assert main(["plan", "--model", "no-such-profile"]) == 2
    assert "model profile 'no-such-profile' not found" in capsys.readouterr().err
