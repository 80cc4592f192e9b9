"""Gateway metrics, per team and model, in one class over an injected registry.

Names are prefixed ``llmplat_`` and in base units (seconds, tokens); ``_total`` only on
counters. Labels are bounded: team (teams are created by admins), model (configured models
only; anything else is ``unknown``), endpoint, status code, quota reason. Never a key id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from llmplat.autoscaling.report import ScaleReport
    from llmplat.observability.record import RequestRecord

REPLICA_STATES = ("running", "desired", "min", "max")

UNAUTHENTICATED = "unauthenticated"
UNKNOWN_MODEL = "unknown"

# LLM latencies span milliseconds (a cached short prompt) to minutes (long generations).
LATENCY_BUCKETS = (
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0
)  # fmt: skip
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 3.2, 6.4, 12.8, 25.6, 60.0)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
ADMISSION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class GatewayMetrics:
    """Every gateway series. Tests pass their own registry and read it back."""

    def __init__(self, registry: CollectorRegistry, models: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self._models = frozenset(models)
        team_model = ["team", "model"]
        self.requests = Counter(
            "llmplat_requests",
            "Generation requests by outcome (HTTP status).",
            [*team_model, "endpoint", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "llmplat_request_duration_seconds",
            "Time from request arrival to the last byte of the response.",
            [*team_model, "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "llmplat_time_to_first_token_seconds",
            "Time from request arrival to the first generated token (streams).",
            team_model,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "llmplat_inter_token_latency_seconds",
            "Mean time between generated tokens of a stream, one observation per stream.",
            team_model,
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "llmplat_prompt_tokens",
            "Prompt tokens billed (equal to the usage returned to clients).",
            team_model,
            registry=registry,
        )
        self.completion_tokens = Counter(
            "llmplat_completion_tokens",
            "Completion tokens billed (equal to the usage returned to clients).",
            team_model,
            registry=registry,
        )
        self.quota_rejections = Counter(
            "llmplat_quota_rejections",
            "Requests refused with 429 by quota reason.",
            ["team", "reason"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "llmplat_requests_in_flight",
            "Generation requests being served by this gateway replica.",
            team_model,
            registry=registry,
        )
        self.admission_wait = Histogram(
            "llmplat_admission_wait_seconds",
            "Time spent authenticating, counting the prompt and reserving quota.",
            ["team"],
            buckets=ADMISSION_BUCKETS,
            registry=registry,
        )
        self.quota_store_errors = Counter(
            "llmplat_quota_store_errors",
            "Quota store (Redis) operations that failed.",
            ["operation"],
            registry=registry,
        )

        self.model_replicas = Gauge(
            "llmplat_model_replicas",
            "Model replicas by state: running (serving), desired (the autoscaler's target), "
            "min and max (the profile's bounds). From the autoscaler's latest report.",
            ["model", "state"],
            registry=registry,
        )
        self.model_waiting = Gauge(
            "llmplat_model_waiting_requests",
            "Requests waiting for a batch slot in the model's engines or at its handles.",
            ["model"],
            registry=registry,
        )
        self.model_kv_cache = Gauge(
            "llmplat_model_kv_cache_usage_ratio",
            "Mean KV-cache use of the model's replicas (0..1), as the autoscaler sees it.",
            ["model"],
            registry=registry,
        )
        self.scale_decision_time = Gauge(
            "llmplat_autoscaling_last_decision_timestamp_seconds",
            "Unix time of the model's last change of desired replicas.",
            ["model"],
            registry=registry,
        )
        self.scale_decision = Gauge(
            "llmplat_autoscaling_last_decision",
            "The model's last change of desired replicas: 1 on the series with its "
            "direction and reason, the new replica count in llmplat_model_replicas.",
            ["model", "direction", "reason"],
            registry=registry,
        )
        self.cold_start_rejections = Counter(
            "llmplat_model_starting_rejections",
            "Requests answered 503 model_starting: a model scaled to zero did not start "
            "within the profile's scale_from_zero_wait_s.",
            ["model"],
            registry=registry,
        )
        self.upstream_retries = Counter(
            "llmplat_upstream_retries",
            "Requests sent again to another replica because theirs went away before the "
            "first byte.",
            ["model"],
            registry=registry,
        )
        self._decision_shown: dict[str, tuple[str, str, str]] = {}
        """The labels of each model's last decision series (one per model is on show)."""

    def model_starting(self, model: str) -> None:
        self.cold_start_rejections.labels(self.model_label(model)).inc()

    def retried(self, model: str) -> None:
        self.upstream_retries.labels(self.model_label(model)).inc()

    def scale_report(self, report: ScaleReport) -> None:
        """Export the autoscaler's latest view of one model."""
        model = self.model_label(report.model_id)
        for state, value in zip(
            REPLICA_STATES,
            (report.running, report.desired, report.min_replicas, report.max_replicas),
            strict=True,
        ):
            self.model_replicas.labels(model, state).set(value)
        self.model_waiting.labels(model).set(report.waiting)
        self.model_kv_cache.labels(model).set(report.kv_cache_usage)
        last = report.last_decision
        if last is not None:
            self.scale_decision_time.labels(model).set(last.at)
            direction = "up" if last.to_replicas > last.from_replicas else "down"
            shown = (model, direction, last.reason)
            previous = self._decision_shown.get(model)
            if previous is not None and previous != shown:
                self.scale_decision.remove(*previous)
            self.scale_decision.labels(*shown).set(1)
            self._decision_shown[model] = shown

    def model_label(self, model: str | None) -> str:
        return model if model in self._models else UNKNOWN_MODEL

    def started(self, team: str, model: str) -> None:
        self.in_flight.labels(team, self.model_label(model)).inc()

    def ended(self, team: str, model: str) -> None:
        self.in_flight.labels(team, self.model_label(model)).dec()

    def admitted(self, team: str, seconds: float) -> None:
        self.admission_wait.labels(team).observe(seconds)

    def rejected(self, team: str, reason: str) -> None:
        self.quota_rejections.labels(team, reason).inc()

    def store_error(self, operation: str) -> None:
        self.quota_store_errors.labels(operation).inc()

    def record(self, rec: RequestRecord) -> None:
        """Everything known once a request is over (called exactly once per request)."""
        team = rec.team or UNAUTHENTICATED
        model = self.model_label(rec.model)
        self.requests.labels(team, model, rec.endpoint, str(rec.status)).inc()
        self.request_duration.labels(team, model, rec.endpoint).observe(rec.ended - rec.started)
        if rec.usage is not None:
            self.prompt_tokens.labels(team, model).inc(rec.usage.prompt_tokens)
            self.completion_tokens.labels(team, model).inc(rec.usage.completion_tokens)
        if rec.first_token_s is not None:
            self.ttft.labels(team, model).observe(rec.first_token_s)
        if rec.inter_token_s is not None:
            self.itl.labels(team, model).observe(rec.inter_token_s)
