"""Which layouts of Mixtral 8x22B fit which GPUs, and the numbers that rule the others out."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmplat.planner import (
    EngineChoices,
    Fleet,
    Layout,
    assess,
    candidate_layouts,
    engine_choices,
    load_gpu_table,
    load_target,
    plan,
)
from llmplat.planner.gpus import GIB

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
GPUS = load_gpu_table(CONFIGS)
H100 = GPUS["h100-80gb"]


@pytest.fixture(scope="module")
def target():
    return load_target("mixtral-8x22b-h100x8", CONFIGS)


def choices(target, **changes) -> EngineChoices:
    return engine_choices(target, **changes)


def test_fits_at_tp8_on_one_node_of_eight_h100(target) -> None:
    a = assess(target.geometry, Layout(8, ep=True), Fleet(H100, 8, 1), choices(target))
    assert a.fits, a.reasons
    assert a.weights_per_gpu / 1e9 == pytest.approx(282 / 8, rel=0.02)
    assert a.replicas == 1 and a.layout.replicas_per_node(8) == 1
    # ~37 GiB of KV cache per GPU: over a million tokens, ~21 sequences of 64K
    assert a.kv_tokens_per_replica > 1_000_000
    assert 15 < a.seqs_per_replica < 30
    per_gpu_token = target.geometry.kv_bytes_per_token("bf16") // 8
    assert a.kv_tokens_per_replica * per_gpu_token <= a.kv_per_gpu


def test_does_not_fit_at_tp4_in_bf16_on_four_h100(target) -> None:
    a = assess(target.geometry, Layout(4), Fleet(H100, 4, 1), choices(target))
    assert not a.fits
    assert a.weights_per_gpu / GIB == pytest.approx(65.5, abs=0.5)
    (reason,) = a.reasons
    assert "sequences of 65,536" in reason and "needs >= 4" in reason
    # at vLLM's default utilisation it does not even hold one full-length sequence
    tight = assess(
        target.geometry, Layout(4), Fleet(H100, 4, 1), choices(target, gpu_memory_utilization=0.9)
    )
    assert tight.seqs_per_replica < 1


def test_fits_at_tp4_in_fp8_twice_per_node(target) -> None:
    a = assess(target.geometry, Layout(4), Fleet(H100, 8, 1), choices(target, dtype="fp8"))
    assert a.fits, a.reasons
    assert a.weights_per_gpu / 1e9 == pytest.approx(141 / 4, rel=0.02)
    assert a.layout.replicas_per_node(8) == 2 and a.replicas == 2


def test_weights_alone_can_exceed_the_gpu(target) -> None:
    a = assess(target.geometry, Layout(2), Fleet(H100, 8, 1), choices(target))
    (reason,) = a.reasons
    assert "weights 131.0 GiB" in reason and "exceed the 73.3 GiB" in reason
    assert a.kv_tokens_per_replica == 0


def test_l40s_needs_two_nodes_per_replica_tp4_pp2() -> None:
    t = load_target("mixtral-8x22b-l40s-2node", CONFIGS)
    fleet = Fleet(GPUS["l40s-48gb"], 4, 2)
    a = assess(t.geometry, Layout(4, 2), fleet, choices(t))
    assert a.fits, a.reasons
    assert a.layout.nodes_per_replica(4) == 2 and a.layout.replicas_per_node(4) == 0
    assert a.replicas == 1
    assert "tensor parallel over PCIe" in a.notes[0]
    one_node = assess(t.geometry, Layout(4, 2), Fleet(GPUS["l40s-48gb"], 4, 1), choices(t))
    assert "a replica spans 2 nodes; the fleet has 1" in one_node.reasons


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        (Layout(5), "TP 5 does not divide the 48 attention heads"),
        (Layout(16, ep=True), "8 experts cannot spread over 16 GPUs"),
        (Layout(1, ep=True), "expert parallel needs TP >= 2"),
        (Layout(1, 64), "PP 64 exceeds the 56 layers"),
        (Layout(16), "TP 16 exceeds the 8 GPUs of a node"),
    ],
)
def test_impossible_shapes_name_the_rule(target, layout: Layout, reason: str) -> None:
    a = assess(target.geometry, layout, Fleet(H100, 8, 8), choices(target))
    assert any(reason in r for r in a.reasons), a.reasons


def test_context_beyond_the_model_is_refused(target) -> None:
    a = assess(target.geometry, Layout(8), Fleet(H100, 8, 1), choices(target, max_model_len=131072))
    assert "max_model_len 131072 exceeds the model's 65536 positions" in a.reasons


def test_candidates_tile_the_nodes_and_plan_lists_fits_first(target) -> None:
    fleet = Fleet(H100, 8, 2)
    layouts = candidate_layouts(target.geometry, fleet)
    for lay in layouts:
        n = lay.gpus_per_replica
        assert (n <= 8 and 8 % n == 0) or (n % 8 == 0 and n // 8 <= 2)
    assert Layout(8, ep=True) in layouts and Layout(8, 2) in layouts
    results = plan(target.geometry, fleet, choices(target))
    fits = [a.fits for a in results]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)
    assert results[0].layout == Layout(8)  # the fewest GPUs, widest TP first


def test_more_memory_share_means_more_kv_cache(target) -> None:
    low = assess(
        target.geometry, Layout(8), Fleet(H100, 8, 1), choices(target, gpu_memory_utilization=0.8)
    )
    high = assess(
        target.geometry, Layout(8), Fleet(H100, 8, 1), choices(target, gpu_memory_utilization=0.95)
    )
    assert high.kv_tokens_per_replica > low.kv_tokens_per_replica
    assert high.weights_per_gpu == low.weights_per_gpu


def test_expert_parallel_places_whole_experts(target) -> None:
    g = target.geometry
    six = assess(g, Layout(6, ep=True), Fleet(H100, 6, 1), choices(target))
    # 8 experts over 6 ranks: some rank holds 2 whole experts of every layer
    assert (
        six.weights_per_gpu
        > assess(g, Layout(8, ep=True), Fleet(H100, 8, 1), choices(target)).weights_per_gpu * 1.4
    )
