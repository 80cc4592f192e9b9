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
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmplat.engine.multinode import CORES_LABEL, NODE_LABEL, free_port
from llmplat.settings import child_environment

log = logging.getLogger(__name__)

WORKER_OBJECT_STORE_BYTES = 512 * 1024 * 1024
"""Object store of a local worker node: serving passes small messages, never tensors."""
STOP_GRACE_S = 15.0
WATCH_INTERVAL_S = 2.0
LOCAL_HEAD_RESOURCE = "llmplat_local_head"
"""Custom resource of a local multi-node cluster's head: the gateway replicas take it, so they
stay on the node the platform's process runs (as the chart keeps them on gateway pods)."""


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
        str(free_port("127.0.0.1")),
        "--metrics-export-port",
        str(free_port("127.0.0.1")),
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
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts: dict[str, int] = {}

    def start(self, timeout_s: float, say: Callable[[str], None]) -> None:
        for node in self.nodes:
            self.start_node(node)
        say(f"waiting for {len(self.nodes)} worker node(s) to join")
        self.wait_joined(timeout_s)
        self._watcher = threading.Thread(target=self._watch, name="local-nodes", daemon=True)
        self._watcher.start()

    def _alive_names(self) -> set[str]:
        import ray

        return {(n.get("Labels") or {}).get(NODE_LABEL, "") for n in ray.nodes() if n.get("Alive")}

    def _watch(self) -> None:
        """Start a worker node again when it died (its raylet was killed, say), as a
        cluster's operator brings a lost node back: the replicas that lost ranks are
        placed again once it has joined."""
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                alive = self._alive_names()
            except Exception as exc:  # Ray is going away: the platform is stopping
                log.debug("node watch: %s", exc)
                continue
            for node in self.nodes:
                if node.name in alive or self._stopping.is_set():
                    continue
                log.warning("local node %s died; starting it again", node.name)
                self._stop_proc(node.name, self._procs[node.name])
                self.restarts[node.name] = self.restarts.get(node.name, 0) + 1
                self.start_node(node)
                try:
                    self.wait_joined_names({node.name}, 60.0)
                except LocalClusterError as exc:
                    log.error("local node %s did not come back: %s", node.name, exc)

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
        self.wait_joined_names({n.name for n in self.nodes}, timeout_s)

    def wait_joined_names(self, names: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        alive: set[str] = set()
        while time.monotonic() < deadline:
            alive = self._alive_names()
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
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self._procs.items():
            self._stop_proc(name, proc)
        self._procs.clear()

    @staticmethod
    def _stop_proc(name: str, proc: subprocess.Popen[bytes]) -> None:
        """``ray start --block`` stops its raylet and the node's workers on SIGTERM."""
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("worker node %s did not stop in %.0f s; killing it", name, STOP_GRACE_S)
            proc.kill()
            proc.wait()
