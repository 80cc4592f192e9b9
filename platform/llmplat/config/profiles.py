"""Typed model profiles: one YAML file in ``configs/models/`` per model and hardware layout.

A profile says what to serve (weights, served name), how vLLM runs it (parallelism, context,
batching, caching, dtype) and how Ray Serve places and scales it. The same profile drives
``llmplat serve`` locally and the Helm chart's RayService.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DRAIN_MARGIN_S = 10.0
"""The gateway outlasts the models' drain by this much when the platform stops (and an
upgrade's old cluster lives this much longer), so the streams the models finish still
reach their clients."""

BUILTIN_PREFIX = "builtin:"
"""A ``source`` with this prefix names a model llmplat builds offline (``builtin:tiny-mixtral``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSpec(_Strict):
    """vLLM engine arguments that llmplat manages. Anything else goes in ``extra``."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weight and activation dtype."
    )
    quantization: Literal["fp8", "awq", "gptq", "compressed-tensors"] | None = Field(
        None, description="Weight quantization; fp8 halves Mixtral 8x22B's weight memory."
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="KV-cache dtype; 'auto' follows dtype."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs each layer is split over.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Stages the layers are split into.")
    enable_expert_parallel: bool = Field(
        False, description="Shard MoE experts over the TP group instead of splitting each expert."
    )
    max_model_len: int = Field(..., ge=16, description="Context length (prompt + completion).")
    max_num_seqs: int = Field(64, ge=1, description="Sequences batched together (continuous).")
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens per scheduler step; vLLM picks one when unset."
    )
    tokenizer_mode: Literal["auto", "hf", "mistral", "slow"] = Field(
        "auto",
        description="How vLLM tokenizes and renders chats: 'mistral' uses mistral_common, "
        "Mistral's reference encoder (tool calls and results included), as the gateway does "
        "when it counts a prompt; needs tokenizer.model.v3 or tekken.json with the weights.",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of shared prefixes.")
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        "priority", description="'priority' lets team priority classes order the queue."
    )
    enforce_eager: bool = Field(
        False, description="Skip graph compilation: faster start, slower decode."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory vLLM may use."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further vLLM engine kwargs, passed through unchanged."
    )

    @model_validator(mode="after")
    def _extra_does_not_shadow(self) -> EngineSpec:
        managed = set(type(self).model_fields) - {"extra"}
        clash = sorted(managed & set(self.extra))
        if clash:
            raise ValueError(f"extra must not repeat managed fields: {', '.join(clash)}")
        return self

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class AcceleratorSpec(_Strict):
    """Where the engine runs."""

    kind: Literal["cpu", "gpu"] = Field("gpu", description="cpu runs vLLM-CPU; gpu needs CUDA.")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type label, e.g. 'H100' or 'L40S' (GPU only)."
    )
    kv_cache_space_gib: int = Field(
        2, ge=1, description="KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE); ignored on GPU."
    )
    cpus_per_worker: float = Field(
        1, ge=0, description="CPUs reserved in each placement-group bundle."
    )

    @model_validator(mode="after")
    def _cpu_has_no_accelerator_type(self) -> AcceleratorSpec:
        if self.kind == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type applies to kind 'gpu' only")
        return self


class PlacementSpec(_Strict):
    """The Ray placement group of one replica (one vLLM engine)."""

    strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK",
        description="STRICT_PACK keeps a TP group on one node; PACK lets PP stages span nodes.",
    )


class AutoscalingSpec(_Strict):
    """Ray Serve replica autoscaling of the model deployment (data parallelism).

    With ``min_replicas == max_replicas`` the size is fixed and nothing is polled. Otherwise
    ``policy: engine_signals`` (the default) scales on each engine's queue, KV-cache use and
    time to first token against the targets below (:mod:`llmplat.autoscaling.policy`);
    ``ongoing_requests`` is Ray Serve's default policy on ``target_ongoing_requests``.
    """

    min_replicas: int = Field(
        1, ge=0, description="0 lets an idle model release its GPUs (scale to zero)."
    )
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    policy: Literal["engine_signals", "ongoing_requests"] = Field(
        "engine_signals", description="What the autoscaler reads (see the class docstring)."
    )
    target_ongoing_requests: int = Field(
        32,
        ge=1,
        description="Requests per replica Serve's default policy aims for; the engine-signal "
        "policy uses it only before a new replica has reported its signals.",
    )
    target_waiting_requests: float = Field(
        2.0,
        gt=0,
        description="Requests waiting for a batch slot per replica before adding one: a queue "
        "means every slot is taken, and each waiting request adds a whole generation to "
        "someone's latency.",
    )
    target_kv_cache_usage: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Mean KV-cache use per replica before adding one: past ~90 % vLLM "
        "preempts running sequences.",
    )
    target_ttft_s: float | None = Field(
        None,
        gt=0,
        description="Mean time to first token before adding a replica (off when unset: TTFT "
        "depends on prompt lengths, so set it per workload).",
    )
    scale_down_below: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Remove a replica only if the rest would run at or below this share of "
        "the targets (and of their batch slots): the gap to 1 is what keeps a steady load "
        "from flapping between two sizes.",
    )
    upscale_delay_s: float = Field(
        15.0, ge=0, description="Pressure must last this long before a replica is added."
    )
    downscale_delay_s: float = Field(
        300.0,
        ge=0,
        description="Low load must last this long before a replica is removed (a GPU replica "
        "takes minutes to start again).",
    )
    scale_to_zero_delay_s: float | None = Field(
        None,
        ge=0,
        description="Idle time before the last replica stops (min_replicas 0); default: "
        "downscale_delay_s.",
    )
    look_back_period_s: float = Field(
        15.0, gt=0, description="Window the signals are averaged over."
    )
    scale_from_zero_wait_s: float = Field(
        120.0,
        gt=0,
        description="How long the gateway holds a request while a model scaled to zero "
        "starts; after it the request is answered 503 model_starting with Retry-After.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    @property
    def fixed(self) -> bool:
        return self.min_replicas == self.max_replicas


class ServingSpec(_Strict):
    """Ray Serve options of the model deployment."""

    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica accepts before Serve queues them."
    )
    stream_batching_interval_ms: float = Field(
        50.0,
        ge=0,
        description="How long LLMServer gathers stream chunks into one message to the gateway "
        "after the first chunk (which is sent at once). Larger saves CPU per token; smaller "
        "makes streams smoother.",
    )
    drain_grace_s: float = Field(
        120.0,
        ge=0,
        description="A replica being stopped (scale-down, upgrade, platform stop) takes no "
        "new requests and gets this long to finish the ones it has.",
    )


class StructuredOutputsSpec(_Strict):
    """How vLLM constrains output to a JSON schema, a regex or a grammar
    (``response_format``, named or required ``tool_choice``, ``structured_outputs``)."""

    backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] = Field(
        "auto", description="Grammar engine; 'auto' lets vLLM choose per request."
    )
    disable_any_whitespace: bool = Field(
        False,
        description="Generated JSON has no free whitespace between tokens: compact output, and "
        "a model cannot spend max_tokens on blank space (needs backend xgrammar or guidance).",
    )

    @model_validator(mode="after")
    def _whitespace_backend(self) -> StructuredOutputsSpec:
        if self.disable_any_whitespace and self.backend not in ("xgrammar", "guidance"):
            raise ValueError(
                "disable_any_whitespace needs backend 'xgrammar' or 'guidance' "
                f"(not {self.backend!r})"
            )
        return self


class ToolsSpec(_Strict):
    """Tool calling and structured outputs of the OpenAI chat API."""

    tool_call_parser: str | None = Field(
        None,
        description="vLLM's parser of the model's tool-call format ('mistral' for Mistral "
        "models). Without one, tool_choice 'auto' is refused; named and 'required' tool "
        "choices still work (they are decoded against the function's schema).",
    )
    auto_tool_choice: bool = Field(
        True,
        description="With a parser: tool_choice 'auto' (the model decides whether to call a "
        "tool) is served, and is what a request with tools but no tool_choice gets.",
    )
    structured_outputs: StructuredOutputsSpec = Field(default_factory=StructuredOutputsSpec)


class HardwareSpec(_Strict):
    """The fleet a profile was laid out for (the planner checks it; on CPU, ``nodes`` is how
    many nodes one replica's ranks are spread over)."""

    gpu: str | None = Field(None, description="GPU type, e.g. 'h100-80gb'.")
    gpus_per_node: int | None = Field(None, ge=1)
    nodes: int | None = Field(
        None,
        ge=1,
        description="Nodes of the fleet; for kind 'cpu' the nodes one replica spans (its "
        "pipeline stages, whole tensor-parallel groups on each).",
    )


class ModelProfile(_Strict):
    """One servable model with its engine and serving layout."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Profile name.")
    model_id: str = Field(
        ..., min_length=1, description="Name clients pass as `model` in requests."
    )
    source: str = Field(
        ...,
        min_length=1,
        description="Local path or volume with HF-format weights, or 'builtin:tiny-mixtral'.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer path when not with the weights.")
    hf_config: str | None = Field(
        None,
        description="Hugging Face config.json with the model's shapes, read by the capacity "
        "planner when the weights are not at hand (a path relative to the profile file); "
        "default: <source>/config.json.",
    )
    description: str = ""
    accelerator: AcceleratorSpec = Field(default_factory=AcceleratorSpec)
    engine: EngineSpec
    serving: ServingSpec = Field(default_factory=ServingSpec)
    tools: ToolsSpec = Field(default_factory=ToolsSpec)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)

    @model_validator(mode="after")
    def _consistent(self) -> ModelProfile:
        eng = self.engine
        if self.accelerator.kind == "cpu":
            if eng.pipeline_parallel_size > 1 and eng.enforce_eager:
                # vLLM-CPU's CPUModelRunner.warming_up_model skips the warm-up run in eager
                # mode, and only that run allocates a later stage's buffer of activations
                # from the stage before: the first request then fails
                # (gpu_model_runner.sync_and_gather_intermediate_tensors asserts).
                raise ValueError(
                    "pipeline parallelism on kind 'cpu' needs enforce_eager: false "
                    "(vLLM-CPU allocates a later stage's input buffer only when it compiles)"
                )
            if eng.enable_expert_parallel:
                # vLLM-CPU's CPUUnquantizedExperts.apply (fused_moe/experts/cpu_moe.py) ignores
                # the expert map and hands global expert ids to cpu_fused_moe, which indexes
                # a rank's local experts with them and segfaults on the first forward pass
                # (docs/multi-node.md, expert parallelism).
                raise ValueError(
                    "enable_expert_parallel needs kind 'gpu': vLLM-CPU's fused-MoE kernel "
                    "crashes with it (it is handed global expert ids for a rank's local "
                    "experts); plan and validate it here, run it on GPUs"
                )
            if eng.quantization == "fp8":
                raise ValueError("fp8 quantization needs kind 'gpu'")
        if eng.enable_expert_parallel and eng.tensor_parallel_size < 2:
            raise ValueError("enable_expert_parallel needs tensor_parallel_size >= 2")
        hw = self.hardware
        world = eng.tensor_parallel_size * eng.pipeline_parallel_size
        if (
            self.accelerator.kind == "cpu"
            and hw.nodes
            and (world % hw.nodes or (world // hw.nodes) % eng.tensor_parallel_size)
        ):
            raise ValueError(
                f"TP {eng.tensor_parallel_size} x PP {eng.pipeline_parallel_size} cannot be "
                f"spread over hardware.nodes {hw.nodes}: each node must hold whole "
                "tensor-parallel groups (pipeline stages may span nodes, TP groups may not)"
            )
        if hw.gpus_per_node and eng.tensor_parallel_size > hw.gpus_per_node:
            raise ValueError(
                f"tensor_parallel_size {eng.tensor_parallel_size} exceeds gpus_per_node "
                f"{hw.gpus_per_node}: a TP group must stay inside one node"
            )
        return self

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(BUILTIN_PREFIX)


def drain_seconds(profiles: Iterable[ModelProfile]) -> float:
    """How long stopping a platform (or an upgrade's old cluster) lets requests in flight
    finish: the longest model drain plus a margin."""
    return max(p.serving.drain_grace_s for p in profiles) + DRAIN_MARGIN_S
