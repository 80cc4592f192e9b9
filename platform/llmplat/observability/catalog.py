"""Every metric name the platform's dashboards and alerts may use, with its labels.

Three producers besides the gateway (whose names come from ``GatewayMetrics`` itself):

- **Engine** — vLLM's own metrics. Ray Serve LLM (``log_engine_metrics=True``) records them
  through ``vllm.v1.metrics.ray_wrappers.RayPrometheusStatLogger``, which defines them in
  ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``) as ``vllm:<name>`` with labels
  ``model_name`` (the served model id) and ``engine`` (the engine index), adds a ``ReplicaId``
  tag (the Serve replica's unique id) and replaces every character outside ``[a-zA-Z0-9_]``
  with ``_``. Ray's metrics agent exports them with the ``ray_`` namespace
  (``ray/_private/telemetry/open_telemetry_metric_recorder.py``), counters with ``_total``, so
  ``vllm:num_preemptions`` is scraped as ``ray_vllm_num_preemptions_total``.
- **Ray Serve** — the controller's and replicas' own metrics (``ray/serve/_private/
  deployment_state.py``, ``replica.py``), same ``ray_`` namespace and counter rule.
- **GPU** — NVIDIA's DCGM exporter (field names used as metric names, as in its
  ``etc/default-counters.csv``; the ``DCGM_FI_PROF_*`` ones from ``dcp-metrics-included.csv``).

Ray adds ``WorkerId``, ``Component``, ``NodeAddress``, ``SessionName`` and ``Version`` to
every Ray-exported series, and Prometheus adds ``instance``/``job`` at scrape time; those are
not repeated below. ``tests/unit/observability`` checks the engine names against the
installed vLLM and Ray sources, so an upgrade that renames one fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry

from llmplat.observability.metrics import GatewayMetrics


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric family."""

    name: str
    """Family name as Prometheus stores it (without ``_total``/``_bucket``)."""
    kind: Kind
    labels: tuple[str, ...]
    """Labels set by the producer (not the ones Ray or Prometheus add to every series)."""
    upstream: str = ""
    """The name in the producer's source, where it differs (``vllm:num_requests_running``)."""

    def samples(self) -> frozenset[str]:
        """The sample names a scrape of this family yields."""
        if self.kind is Kind.HISTOGRAM:
            return frozenset(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        if self.kind is Kind.COUNTER:  # prometheus-client and Ray's exporter append _total
            return frozenset({self.name if self.name.endswith("_total") else f"{self.name}_total"})
        return frozenset({self.name})


# --- Engine: vLLM metrics through Ray (vllm/v1/metrics/loggers.py, PrometheusStatLogger) ---

RAY_NAMESPACE: Final = "ray"
VLLM_LABELS: Final = ("model_name", "engine", "ReplicaId")
RAY_GLOBAL_LABELS: Final = ("WorkerId", "Component", "NodeAddress", "SessionName", "Version")
"""Tags Ray's metrics agent adds to every ``ray_*`` series."""
SCRAPE_LABELS: Final = ("instance", "job", "namespace", "pod", "container", "service", "endpoint")
"""Target labels Prometheus (kubernetes service discovery / the Prometheus Operator) adds."""


def _vllm(upstream: str, kind: Kind, *extra_labels: str) -> MetricSpec:
    name = f"{RAY_NAMESPACE}_{upstream.replace(':', '_')}"
    return MetricSpec(name, kind, (*VLLM_LABELS, *extra_labels), upstream=upstream)


_G, _C, _H = Kind.GAUGE, Kind.COUNTER, Kind.HISTOGRAM

VLLM_NUM_REQUESTS_RUNNING: Final = _vllm("vllm:num_requests_running", _G)
VLLM_NUM_REQUESTS_WAITING: Final = _vllm("vllm:num_requests_waiting", _G)
VLLM_NUM_REQUESTS_WAITING_BY_REASON: Final = _vllm(
    "vllm:num_requests_waiting_by_reason", _G, "reason"
)
VLLM_ENGINE_SLEEP_STATE: Final = _vllm("vllm:engine_sleep_state", _G, "sleep_state")
VLLM_KV_CACHE_USAGE_PERC: Final = _vllm("vllm:kv_cache_usage_perc", _G)  # 0..1, not percent
VLLM_PREFIX_CACHE_QUERIES: Final = _vllm("vllm:prefix_cache_queries", _C)
VLLM_PREFIX_CACHE_HITS: Final = _vllm("vllm:prefix_cache_hits", _C)
VLLM_EXTERNAL_PREFIX_CACHE_QUERIES: Final = _vllm("vllm:external_prefix_cache_queries", _C)
VLLM_EXTERNAL_PREFIX_CACHE_HITS: Final = _vllm("vllm:external_prefix_cache_hits", _C)
VLLM_MM_CACHE_QUERIES: Final = _vllm("vllm:mm_cache_queries", _C)
VLLM_MM_CACHE_HITS: Final = _vllm("vllm:mm_cache_hits", _C)
VLLM_NUM_PREEMPTIONS: Final = _vllm("vllm:num_preemptions", _C)
VLLM_PROMPT_TOKENS: Final = _vllm("vllm:prompt_tokens", _C)
VLLM_PROMPT_TOKENS_BY_SOURCE: Final = _vllm("vllm:prompt_tokens_by_source", _C, "source")
VLLM_PROMPT_TOKENS_CACHED: Final = _vllm("vllm:prompt_tokens_cached", _C)
VLLM_GENERATION_TOKENS: Final = _vllm("vllm:generation_tokens", _C)
VLLM_REQUEST_SUCCESS: Final = _vllm("vllm:request_success", _C, "finished_reason")
VLLM_REQUEST_PROMPT_TOKENS: Final = _vllm("vllm:request_prompt_tokens", _H)
VLLM_REQUEST_GENERATION_TOKENS: Final = _vllm("vllm:request_generation_tokens", _H)
VLLM_ITERATION_TOKENS: Final = _vllm("vllm:iteration_tokens_total", _H)
VLLM_REQUEST_MAX_NUM_GENERATION_TOKENS: Final = _vllm("vllm:request_max_num_generation_tokens", _H)
VLLM_REQUEST_PARAMS_N: Final = _vllm("vllm:request_params_n", _H)
VLLM_REQUEST_PARAMS_MAX_TOKENS: Final = _vllm("vllm:request_params_max_tokens", _H)
VLLM_TIME_TO_FIRST_TOKEN: Final = _vllm("vllm:time_to_first_token_seconds", _H)
VLLM_INTER_TOKEN_LATENCY: Final = _vllm("vllm:inter_token_latency_seconds", _H)
VLLM_REQUEST_TIME_PER_OUTPUT_TOKEN: Final = _vllm("vllm:request_time_per_output_token_seconds", _H)
VLLM_E2E_REQUEST_LATENCY: Final = _vllm("vllm:e2e_request_latency_seconds", _H)
VLLM_REQUEST_QUEUE_TIME: Final = _vllm("vllm:request_queue_time_seconds", _H)
VLLM_REQUEST_INFERENCE_TIME: Final = _vllm("vllm:request_inference_time_seconds", _H)
VLLM_REQUEST_PREFILL_TIME: Final = _vllm("vllm:request_prefill_time_seconds", _H)
VLLM_REQUEST_DECODE_TIME: Final = _vllm("vllm:request_decode_time_seconds", _H)
VLLM_REQUEST_PREFILL_KV_COMPUTED_TOKENS: Final = _vllm(
    "vllm:request_prefill_kv_computed_tokens", _H
)

ENGINE_METRICS: Final[tuple[MetricSpec, ...]] = (
    VLLM_NUM_REQUESTS_RUNNING,
    VLLM_NUM_REQUESTS_WAITING,
    VLLM_NUM_REQUESTS_WAITING_BY_REASON,
    VLLM_ENGINE_SLEEP_STATE,
    VLLM_KV_CACHE_USAGE_PERC,
    VLLM_PREFIX_CACHE_QUERIES,
    VLLM_PREFIX_CACHE_HITS,
    VLLM_EXTERNAL_PREFIX_CACHE_QUERIES,
    VLLM_EXTERNAL_PREFIX_CACHE_HITS,
    VLLM_MM_CACHE_QUERIES,
    VLLM_MM_CACHE_HITS,
    VLLM_NUM_PREEMPTIONS,
    VLLM_PROMPT_TOKENS,
    VLLM_PROMPT_TOKENS_BY_SOURCE,
    VLLM_PROMPT_TOKENS_CACHED,
    VLLM_GENERATION_TOKENS,
    VLLM_REQUEST_SUCCESS,
    VLLM_REQUEST_PROMPT_TOKENS,
    VLLM_REQUEST_GENERATION_TOKENS,
    VLLM_ITERATION_TOKENS,
    VLLM_REQUEST_MAX_NUM_GENERATION_TOKENS,
    VLLM_REQUEST_PARAMS_N,
    VLLM_REQUEST_PARAMS_MAX_TOKENS,
    VLLM_TIME_TO_FIRST_TOKEN,
    VLLM_INTER_TOKEN_LATENCY,
    VLLM_REQUEST_TIME_PER_OUTPUT_TOKEN,
    VLLM_E2E_REQUEST_LATENCY,
    VLLM_REQUEST_QUEUE_TIME,
    VLLM_REQUEST_INFERENCE_TIME,
    VLLM_REQUEST_PREFILL_TIME,
    VLLM_REQUEST_DECODE_TIME,
    VLLM_REQUEST_PREFILL_KV_COMPUTED_TOKENS,
)

# --- Ray Serve: controller (ray/serve/_private/deployment_state.py) and replicas (replica.py) ---
# Deployments: "Gateway", and "PlatformLLMServer:<model id>" per model (ray.serve.llm's
# build_llm_deployment names them "<server class>:<model id>").

SERVE_REPLICA_LABELS: Final = ("deployment", "replica", "application")
SERVE_DEPLOYMENT_LABELS: Final = ("deployment", "application")


def _serve(upstream: str, kind: Kind, labels: tuple[str, ...]) -> MetricSpec:
    return MetricSpec(f"{RAY_NAMESPACE}_{upstream}", kind, labels, upstream=upstream)


SERVE_DEPLOYMENT_REPLICA_HEALTHY: Final = _serve(
    "serve_deployment_replica_healthy", _G, SERVE_REPLICA_LABELS
)  # 1 healthy, 0 failing its health check; one series per replica
SERVE_DEPLOYMENT_STATUS: Final = _serve(
    "serve_deployment_status", _G, SERVE_DEPLOYMENT_LABELS
)  # 0 UNKNOWN, 1 DEPLOY_FAILED, 2 UNHEALTHY, 3 UPDATING, 4 UPSCALING, 5 DOWNSCALING, 6 HEALTHY
SERVE_AUTOSCALING_TARGET_REPLICAS: Final = _serve(
    "serve_autoscaling_target_replicas", _G, SERVE_DEPLOYMENT_LABELS
)
SERVE_HEALTH_CHECK_FAILURES: Final = _serve(
    "serve_health_check_failures_total", _C, SERVE_REPLICA_LABELS
)
SERVE_DEPLOYMENT_REPLICA_STARTS: Final = _serve(
    "serve_deployment_replica_starts", _C, SERVE_REPLICA_LABELS
)
SERVE_REPLICA_PROCESSING_QUERIES: Final = _serve(
    "serve_replica_processing_queries", _G, SERVE_REPLICA_LABELS
)
SERVE_DEPLOYMENT_QUEUED_QUERIES: Final = _serve(
    "serve_deployment_queued_queries", _G, ("deployment", "application", "handle", "actor_id")
)
SERVE_DEPLOYMENT_REQUEST_COUNTER: Final = _serve(
    "serve_deployment_request_counter", _C, (*SERVE_REPLICA_LABELS, "route")
)
SERVE_DEPLOYMENT_ERROR_COUNTER: Final = _serve(
    "serve_deployment_error_counter", _C, (*SERVE_REPLICA_LABELS, "route", "exception_type")
)

SERVE_METRICS: Final[tuple[MetricSpec, ...]] = (
    SERVE_DEPLOYMENT_REPLICA_HEALTHY,
    SERVE_DEPLOYMENT_STATUS,
    SERVE_AUTOSCALING_TARGET_REPLICAS,
    SERVE_HEALTH_CHECK_FAILURES,
    SERVE_DEPLOYMENT_REPLICA_STARTS,
    SERVE_REPLICA_PROCESSING_QUERIES,
    SERVE_DEPLOYMENT_QUEUED_QUERIES,
    SERVE_DEPLOYMENT_REQUEST_COUNTER,
    SERVE_DEPLOYMENT_ERROR_COUNTER,
)

# --- GPU: NVIDIA DCGM exporter (etc/default-counters.csv, etc/dcp-metrics-included.csv) ---
# Labels: gpu (index), UUID, device, modelName, Hostname, pci_bus_id, DCGM_FI_DRIVER_VERSION,
# and with Kubernetes pod mapping on (the GPU operator's default): namespace, pod, container.

DCGM_LABELS: Final = ("gpu", "UUID", "device", "modelName", "Hostname", "namespace", "pod")


def _dcgm(field: str) -> MetricSpec:
    return MetricSpec(field, _G, DCGM_LABELS)


DCGM_GPU_UTIL: Final = _dcgm("DCGM_FI_DEV_GPU_UTIL")  # %
DCGM_MEM_COPY_UTIL: Final = _dcgm("DCGM_FI_DEV_MEM_COPY_UTIL")  # %
DCGM_FB_USED: Final = _dcgm("DCGM_FI_DEV_FB_USED")  # MiB
DCGM_FB_FREE: Final = _dcgm("DCGM_FI_DEV_FB_FREE")  # MiB
DCGM_GPU_TEMP: Final = _dcgm("DCGM_FI_DEV_GPU_TEMP")  # °C
DCGM_MEMORY_TEMP: Final = _dcgm("DCGM_FI_DEV_MEMORY_TEMP")  # °C
DCGM_POWER_USAGE: Final = _dcgm("DCGM_FI_DEV_POWER_USAGE")  # W
DCGM_SM_CLOCK: Final = _dcgm("DCGM_FI_DEV_SM_CLOCK")  # MHz
DCGM_XID_ERRORS: Final = _dcgm("DCGM_FI_DEV_XID_ERRORS")  # last XID error code
DCGM_GR_ENGINE_ACTIVE: Final = _dcgm("DCGM_FI_PROF_GR_ENGINE_ACTIVE")  # ratio 0..1
DCGM_PIPE_TENSOR_ACTIVE: Final = _dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE")  # ratio 0..1
DCGM_DRAM_ACTIVE: Final = _dcgm("DCGM_FI_PROF_DRAM_ACTIVE")  # ratio 0..1

GPU_METRICS: Final[tuple[MetricSpec, ...]] = (
    DCGM_GPU_UTIL,
    DCGM_MEM_COPY_UTIL,
    DCGM_FB_USED,
    DCGM_FB_FREE,
    DCGM_GPU_TEMP,
    DCGM_MEMORY_TEMP,
    DCGM_POWER_USAGE,
    DCGM_SM_CLOCK,
    DCGM_XID_ERRORS,
    DCGM_GR_ENGINE_ACTIVE,
    DCGM_PIPE_TENSOR_ACTIVE,
    DCGM_DRAM_ACTIVE,
)

CATALOG: Final[tuple[MetricSpec, ...]] = (*ENGINE_METRICS, *SERVE_METRICS, *GPU_METRICS)

# prometheus-client's exposition, by family type (``_created`` unless disabled).
_CLIENT_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def gateway_metric_names() -> set[str]:
    """The sample names ``GatewayMetrics`` exposes, read from a registry it fills."""
    registry = CollectorRegistry()
    GatewayMetrics(registry, models=("m",))
    return {
        f"{family.name}{suffix}"
        for family in registry.collect()
        for suffix in _CLIENT_SUFFIXES[family.type]
    }


def exported_metric_names() -> set[str]:
    """Every sample name the platform exposes: gateway, engine, Ray Serve and GPU."""
    names = gateway_metric_names()
    for spec in CATALOG:
        names |= spec.samples()
    return names
