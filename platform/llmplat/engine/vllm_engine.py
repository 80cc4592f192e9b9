"""Ray Serve LLM's vLLM engine, reporting its scheduler signals to the autoscaler.

vLLM calls every stat logger of its ``StatLoggerManager`` with the scheduler's stats after
each step; one more logger keeps the latest queue length, running count and KV-cache use,
and the first-token latencies, in a :class:`SignalRecorder` the replica reads when Serve
asks for autoscaling stats.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llmplat.autoscaling.signals import EngineSignals, SignalRecorder
from llmplat.compat import VLLMEngine, normalize_vllm_engine_kwargs
from llmplat.engine import parser_cache
from llmplat.engine.multinode import (
    BIND_ENV,
    NodeRanks,
    PlacedRank,
    free_port,
    headless_kwargs,
    node_binding,
    node_names,
    placed_by_bundle,
)
from llmplat.engine.placement import PlacementError, plan_from_llm_config
from llmplat.settings import export_values

log = logging.getLogger(__name__)

RANK_METRIC = "llmplat_engine_rank_info"
NODE_PING_S = 5.0
"""How long a further node of a replica may take to answer the health check's ping."""


class SignalStatLogger:
    """A vLLM stat logger (the ``record``/``log`` interface) feeding a recorder."""

    def __init__(self, recorder: SignalRecorder) -> None:
        self._recorder = recorder

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._recorder.observe(
                waiting=scheduler_stats.num_waiting_reqs,
                running=scheduler_stats.num_running_reqs,
                kv_cache_usage=scheduler_stats.kv_cache_usage,
            )
        if iteration_stats is not None and iteration_stats.time_to_first_tokens_iter:
            self._recorder.first_tokens(iteration_stats.time_to_first_tokens_iter)

    def log(self) -> None:
        return None

    def log_engine_initialized(self) -> None:
        return None

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        return None


class SignalingVLLMEngine(VLLMEngine):
    """``VLLMEngine`` with :meth:`load_signals` for the autoscaler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parser_cache.install()
        self.signals = SignalRecorder()
        self.reporting = False
        self.placement: list[PlacedRank] = []
        """Which node holds which rank (set when the engine starts)."""
        self._node_actors: list[Any] = []
        self._node_watch: asyncio.Task[None] | None = None
        self.lost: str | None = None
        """Why the engine can no longer serve (a node of its placement group died)."""
        self._rank_gauge: Any = None
        self._rank_tags: list[dict[str, str]] = []

    def _prepare_engine_config(self, callback_ctx: Any) -> Any:
        self._place(callback_ctx.placement_group)
        return super()._prepare_engine_config(callback_ctx)

    def _place(self, pg: Any) -> None:
        """Record which node holds which rank; on CPU, bind each node's ranks to its cores
        and start the ranks of the replica's further nodes (see llmplat.engine.multinode)."""
        import ray
        from ray.util.placement_group import placement_group_table

        plan = plan_from_llm_config(self.llm_config)
        table = placement_group_table(pg)
        bundle_nodes = [table["bundles_to_node_id"][i] for i in range(plan.world_size)]
        nodes = ray.nodes()
        if self.llm_config.accelerator_config.kind != "cpu":
            # vLLM's Ray executor starts a worker in every bundle wherever Ray put it.
            self.placement = placed_by_bundle(plan, bundle_nodes, node_names(nodes))
            self._export_placement()
            return
        node_ids = plan.node_groups(bundle_nodes)
        here = ray.get_runtime_context().get_node_id()
        if node_ids[0] != here:
            raise PlacementError(
                f"the replica runs on node {here[:8]} but its first rank's bundle is on "
                f"{node_ids[0][:8]}"
            )
        self.placement = placed_by_bundle(plan, bundle_nodes, node_names(nodes))
        log.info("ranks placed: %s", [p.as_dict() for p in self.placement])
        self._export_placement()
        labels = {n["NodeID"]: n.get("Labels") or {} for n in nodes}
        # The binding the replica was configured with, unless the node names its own cores
        # (a local multi-node cluster); the engine's worker processes read it at start.
        configured = ((self.llm_config.runtime_env or {}).get("env_vars") or {}).get(
            BIND_ENV, "auto"
        )

        def binding(node_id: str) -> str:
            return node_binding(labels[node_id], plan.ranks_per_node) or configured

        export_values({BIND_ENV: binding(here)})
        if plan.nodes == 1:
            return
        engine = self.llm_config.get_engine_config()
        engine.engine_kwargs.update(
            nnodes=plan.nodes,
            node_rank=0,
            master_addr=ray.util.get_node_ip_address(),
            master_port=free_port(),
        )
        kwargs = normalize_vllm_engine_kwargs(engine.get_initialization_kwargs())
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        runs = []
        for k in range(1, plan.nodes):
            env = {BIND_ENV: binding(node_ids[k])}
            actor = (
                ray.remote(NodeRanks)
                .options(
                    num_cpus=0,
                    # run() holds one thread for the workers' lifetime; the other answers
                    # the health check's ping.
                    max_concurrency=2,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg,
                        placement_group_bundle_index=k * plan.ranks_per_node,
                    ),
                )
                .remote(env)
            )
            self._node_actors.append(actor)
            runs.append((k, actor.run.remote(headless_kwargs(kwargs, k))))
        self._node_watch = asyncio.get_running_loop().create_task(self._watch_nodes(runs))

    def _export_placement(self) -> None:
        """``llmplat_engine_rank_info`` (1 per rank, exported by Ray's metrics agent with
        Ray's ``ray_`` prefix beside vLLM's engine metrics): which node holds which rank."""
        from ray import serve
        from ray.util.metrics import Gauge

        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except RuntimeError:  # not inside a Serve replica (engine tests)
            replica = "-"
        # Kept on the engine: Ray reads a gauge's values from the object while it lives.
        self._rank_gauge = Gauge(
            RANK_METRIC,
            description="1 per engine rank: the node holding that rank (stage, shard).",
            tag_keys=("model", "replica", "rank", "stage", "shard", "node"),
        )
        self._rank_tags = [
            {
                "model": self.llm_config.model_id,
                "replica": replica,
                "rank": str(p.rank.rank),
                "stage": str(p.rank.stage),
                "shard": str(p.rank.shard),
                "node": p.node_name,
            }
            for p in self.placement
        ]
        self._record_placement()

    def _record_placement(self) -> None:
        # Set again on every health check: Ray drops the values a process records before
        # its metrics exporter has connected (the first seconds of a replica).
        for tags in self._rank_tags:
            self._rank_gauge.set(1, tags=tags)

    async def _ping_nodes(self) -> None:
        """Each further node answers within NODE_PING_S, or the engine is lost: Ray reports
        a killed node's actors dead only once it has declared the node dead, which can take
        longer than a health check period."""
        for k, actor in enumerate(self._node_actors, start=1):
            try:
                await asyncio.wait_for(
                    asyncio.wrap_future(actor.node_id.remote().future()), NODE_PING_S
                )
            except Exception as exc:
                self._lose(k, exc)
                return

    async def _watch_nodes(self, runs: list[tuple[int, Any]]) -> None:
        """A further node's ranks end only when that node (or its workers) died: the engine
        is then lost. In-flight requests fail at once instead of waiting on dead peers, and
        the health check fails, so Serve replaces the replica once the nodes are back."""
        futures = {asyncio.ensure_future(ref): k for k, ref in runs}
        done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        self._lose(futures[first], first.exception())

    def _lose(self, node: int, exc: BaseException | None) -> None:
        """Node ``node`` of the replica is gone: fail every request and every health check."""
        if self.lost:
            return
        names = sorted({p.node_name for p in self.placement if p.rank.node == node})
        self.lost = f"node {', '.join(names)} of this replica stopped" + (
            f" ({type(exc).__name__})" if exc else ""
        )
        log.error("engine lost: %s; failing its requests", self.lost)
        client = self._engine_client
        if client is not None:
            from llmplat.compat import EngineDeadError

            # Every request in flight gets the error now (shutting the engine down alone
            # leaves their streams waiting forever); new ones are refused as by a dead engine.
            client.output_processor.propagate_error(EngineDeadError())
            client.engine_core.resources.engine_dead = True
            client.shutdown()

    async def check_health(self) -> None:
        if not self.lost and self._node_actors:
            await self._ping_nodes()
        if self.lost:
            raise RuntimeError(f"engine lost: {self.lost}")
        if self._rank_gauge is not None:
            self._record_placement()
        await super().check_health()

    async def shutdown(self) -> None:
        import ray

        if self._node_watch is not None:
            self._node_watch.cancel()
        for actor in self._node_actors:
            ray.kill(actor)
        await super().shutdown()

    def _start_async_llm_engine(self, *args: Any, **kwargs: Any) -> Any:
        client = super()._start_async_llm_engine(*args, **kwargs)
        manager = getattr(client, "logger_manager", None)
        if manager is None:
            log.warning(
                "vLLM stats are off (disable_log_stats): the autoscaler sees no engine "
                "signals for this replica and counts ongoing requests instead"
            )
            return client
        manager.stat_loggers.append(SignalStatLogger(self.signals))
        self.reporting = True
        return client

    def load_signals(self) -> EngineSignals | None:
        return self.signals.snapshot() if self.reporting else None
