"""A Ray cluster of several nodes on one machine: try a multi-node layout before buying GPUs.

The head is the node ``ray.init`` starts in the ``llmplat serve`` process; each further node
is a worker raylet (``ray start --address … --block``, a child process of the platform) with
its own share of the cores and two labels: its name and the cores its engines bind to
(:mod:`llmplat.engine.multinode`). They join with the head's token (the same owner-only
file) and stop with the platform: a raylet whose ``ray start --block`` parent is terminated
takes its workers down with it.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmplat.engine.multinode import CORES_LABEL, NODE_LABEL
from llmplat.settings import child_environment

log = logging.getLogger(__name__)

WORKER_OBJECT_STORE_BYTES = 512 * 1024 * 1024
"""Object store of a local worker node: serving passes small messages, never tensors."""
STOP_GRACE_S = 15.0


class LocalClusterError(RuntimeError):
    """The local nodes could not be planned or started; the message says why."""


@dataclass(frozen=True)
class LocalNode:
    name: str
    cores: tuple[int, ...]

    @property
    def num_cpus(self) -> int:
        return len(self.cores)

    def labels(self) -> dict[str, str]:
        return {NODE_LABEL: self.name, CORES_LABEL: ",".join(str(c) for c in self.cores)}


def plan_local_nodes(nodes: int, cores: int) -> list[LocalNode]:
    """Split ``cores`` into ``nodes`` contiguous shares, the head's first."""
    if nodes > cores:
        raise LocalClusterError(
            f"{nodes} local nodes need at least {nodes} cores (one each); this machine has "
            f"{cores} (LLMPLAT_LOCAL__NODES)"
        )
    bounds = [i * cores // nodes for i in range(nodes + 1)]
    return [
        LocalNode("head" if i == 0 else f"worker-{i}", tuple(range(bounds[i], bounds[i + 1])))
        for i in range(nodes)
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raylet_command(node: LocalNode, gcs_address: str, temp_dir: Path) -> list[str]:
    """``ray start`` of one worker node. Every port is a free one, so that two platforms
    (or two nodes) on one machine never ask for the same fixed default."""
    return [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--address",
        gcs_address,
        "--num-cpus",
        str(node.num_cpus),
        "--num-gpus",
        "0",
        "--labels",
        json.dumps(node.labels()),
        "--object-store-memory",
        str(WORKER_OBJECT_STORE_BYTES),
        "--temp-dir",
        str(temp_dir),
        "--dashboard-agent-listen-port",
        str(_free_port()),
        "--metrics-export-port",
        str(_free_port()),
        "--disable-usage-stats",
        "--block",
    ]


class WorkerRaylets:
    """The worker nodes of a local cluster: started after the head, stopped before it."""

    def __init__(self, nodes: list[LocalNode], gcs_address: str, temp_dir: Path) -> None:
        self.nodes = nodes
        self._gcs = gcs_address
        self._temp_dir = temp_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, timeout_s: float, say: Callable[[str], None]) -> None:
        for node in self.nodes:
            self.start_node(node)
        say(f"waiting for {len(self.nodes)} worker node(s) to join")
        self.wait_joined(timeout_s)

    def start_node(self, node: LocalNode) -> None:
        log_path = self._temp_dir / f"llmplat-{node.name}.log"
        with open(log_path, "ab") as out:
            self._procs[node.name] = subprocess.Popen(
                raylet_command(node, self._gcs, self._temp_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_environment({}),
            )

    def wait_joined(self, timeout_s: float) -> None:
        import ray

        names = {n.name for n in self.nodes}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = {(n.get("Labels") or {}).get(NODE_LABEL) for n in ray.nodes() if n.get("Alive")}
            if names <= alive:
                return
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise LocalClusterError(
                        f"worker node {name} exited with {proc.returncode} "
                        f"(log: {self._temp_dir / f'llmplat-{name}.log'})"
                    )
            time.sleep(0.5)
        raise LocalClusterError(
            f"worker nodes {sorted(names - alive)} did not join within {timeout_s:.0f} s"
        )

    def pid(self, name: str) -> int:
        return self._procs[name].pid

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker node %s did not stop in %.0f s; killing it", name, STOP_GRACE_S)
                proc.kill()
                proc.wait()
        self._procs.clear()
