"""The local multi-node cluster's plan and its worker raylets' command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmplat.local.cluster import LocalClusterError, plan_local_nodes, raylet_command


def test_cores_split_contiguously_head_first() -> None:
    nodes = plan_local_nodes(2, 2)
    assert [(n.name, n.cores) for n in nodes] == [("head", (0,)), ("worker-1", (1,))]
    nodes = plan_local_nodes(3, 8)
    assert [n.cores for n in nodes] == [(0, 1), (2, 3, 4), (5, 6, 7)]
    assert nodes[2].labels() == {"llmplat.io/node": "worker-2", "llmplat.io/cores": "5,6,7"}
    assert plan_local_nodes(1, 4)[0].num_cpus == 4


def test_more_nodes_than_cores_is_refused_naming_the_setting() -> None:
    with pytest.raises(LocalClusterError, match=r"3 local nodes need at least 3 cores.*has 2 "
                       r"\(LLMPLAT_LOCAL__NODES\)"):
        plan_local_nodes(3, 2)


def test_worker_raylet_joins_with_its_labels_and_no_fixed_port(tmp_path: Path) -> None:
    node = plan_local_nodes(2, 4)[1]
    cmd = raylet_command(node, "127.0.0.1:6379", tmp_path)
    args = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert cmd[1:4] == ["-m", "ray.scripts.scripts", "start"] and cmd[-1] == "--block"
    assert args["--address"] == "127.0.0.1:6379" and args["--num-cpus"] == "2"
    assert json.loads(args["--labels"]) == node.labels()
    assert args["--temp-dir"] == str(tmp_path)
    # Ray's fixed default (52365) would collide with the head's agent or another platform's.
    assert args["--dashboard-agent-listen-port"] != "52365"
