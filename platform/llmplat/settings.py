"""The one place that reads the environment.

Every variable is prefixed ``LLMPLAT_``; nested fields use ``__`` (for example
``LLMPLAT_GATEWAY__MAX_REQUEST_BYTES``). Any variable may instead be given as a file:
``LLMPLAT_ADMIN_TOKEN_FILE=/run/secrets/admin-token`` reads the value from that file, so
secrets can be mounted into the one container that needs them instead of living in an
environment every child process inherits. Build a :class:`Settings` in an app factory or
the CLI, never at import time, and pass it down.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEV_KEY_PREFIX = "llmp_dev_"
ADMIN_TOKEN_PREFIX = "llmp_admin_"
_MAX_RAY_TEMP_LEN = 40
ENV_PREFIX = "LLMPLAT_"
FILE_SUFFIX = "_FILE"
MIN_ADMIN_TOKEN_CHARS = 32


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "llmplat"


def _default_config_dir() -> Path:
    """`configs/` of the working directory, else of the source checkout this package is in."""
    cwd_configs = Path.cwd() / "configs"
    if (cwd_configs / "models").is_dir():
        return cwd_configs
    return Path(__file__).resolve().parents[2] / "configs"


def _default_loadtests_dir() -> Path:
    """`loadtests/` of the working directory, else of the source checkout this package is in."""
    cwd_dir = Path.cwd() / "loadtests"
    if (cwd_dir / "scenarios").is_dir():
        return cwd_dir
    return Path(__file__).resolve().parents[2] / "loadtests"


class InputBounds(BaseModel):
    """Bounds on request inputs whose cost is not their token count: what the engine
    compiles (JSON schemas, regular expressions, grammars, choices) and what it checks at
    every generated token (stop strings, bad words, logit bias, allowed token ids). A request
    over one is refused with a 400 ``input_too_complex`` before admission (no engine call, no
    quota). JSON-schema bounds count every schema of a request together (``response_format``,
    ``tools[].function.parameters``, ``structured_outputs.json``, structural tags): with
    ``tool_choice: required`` the engine compiles all tools as one schema. The defaults are
    above what ordinary clients send (docs/api.md, "Input bounds"); a team's ``input_bounds``
    overrides any of them."""

    schema_bytes: int = Field(
        131072,
        ge=1,
        description="Bytes of a request's JSON schemas together, as compact JSON (UTF-8).",
    )
    schema_depth: int = Field(
        32,
        ge=1,
        description="Nesting depth of one JSON schema: objects and arrays inside each other "
        "(one nested object property is two levels: its schema and its 'properties').",
    )
    schema_nodes: int = Field(
        4096,
        ge=1,
        description="Subschemas (JSON objects in schema position: properties, items, anyOf "
        "branches, $defs entries, ...) of a request's schemas together.",
    )
    schema_properties: int = Field(
        1024,
        ge=1,
        description="Object properties (names under 'properties' and 'patternProperties') of "
        "a request's schemas together.",
    )
    schema_enum_values: int = Field(
        2048, ge=1, description="Values of every 'enum' of a request's schemas together."
    )
    schema_patterns: int = Field(
        128,
        ge=0,
        description="Regular expressions in a request's schemas together: 'pattern' values "
        "and 'patternProperties' names (the engine compiles each into an automaton).",
    )
    schema_pattern_chars: int = Field(
        1024, ge=1, description="Characters of one 'pattern' (or 'patternProperties' name)."
    )
    regex_chars: int = Field(
        4096,
        ge=1,
        description="Characters of structured_outputs.regex (and of its whitespace_pattern).",
    )
    grammar_chars: int = Field(65536, ge=1, description="Characters of structured_outputs.grammar.")
    choice_count: int = Field(1024, ge=1, description="Entries of structured_outputs.choice.")
    choice_chars: int = Field(
        32768, ge=1, description="Characters of structured_outputs.choice's entries together."
    )
    stop_count: int = Field(
        4,
        ge=1,
        description="Stop strings of a request ('stop'); 4 is also the most the OpenAI "
        "request models accept.",
    )
    stop_chars: int = Field(
        4096, ge=1, description="Characters of a request's stop strings together."
    )
    bad_words_count: int = Field(256, ge=1, description="Entries of 'bad_words'.")
    bad_words_chars: int = Field(
        16384, ge=1, description="Characters of a request's bad words together."
    )
    logit_bias_entries: int = Field(1024, ge=1, description="Entries of 'logit_bias'.")
    token_ids: int = Field(
        8192,
        ge=1,
        description="Entries of 'allowed_token_ids', and of 'stop_token_ids' (each list).",
    )
    grammar_compiles: int = Field(
        1,
        ge=1,
        description="New grammars (a JSON schema, regex, grammar or choice list not compiled "
        "yet) a team may have compiling at once on one gateway replica; more is a 429. The "
        "engine compiles them in a small thread pool shared by every team, first come first "
        "served; specs already compiled are cache hits and not counted.",
    )
    prompts: int = Field(
        128,
        ge=1,
        description="Prompts of one completions request (a list of prompts): each is a "
        "sequence the engine runs at once, times 'n'.",
    )


class GatewaySettings(BaseModel):
    """Limits and tuning of the gateway ingress."""

    replicas: int = Field(1, ge=1, description="Gateway replicas (no engine, no GPU each).")
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body accepted; larger is a 413."
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a request body may take to arrive; a slower sender gets a 408 "
        "and its connection is closed.",
    )
    max_buffered_body_bytes: int = Field(
        256 << 20,
        ge=1024,
        description="Request body bytes one gateway replica holds at once, for requests not "
        "yet admitted (arriving, parsed, tokenized); past it new bodies get a 503 with "
        "Retry-After instead of growing the replica's memory.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Upper bound on one request, streaming included: a stream still running "
        "then ends with a 'timeout' error event and is billed what it generated.",
    )
    max_messages: int = Field(
        1024, ge=1, description="Most messages one chat request may carry (more is a 400)."
    )
    ready_timeout_s: float = Field(
        5.0, gt=0, description="How long /readyz waits for each model to answer."
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=0,
        description="Failed authentications (bad API key or admin token) one client address "
        "may make per minute; beyond that its failed attempts get 429. Valid keys are always "
        "served. 0 disables the throttle.",
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description='Networks (CIDRs, e.g. ["10.0.0.0/8"]) of the proxies in front of the '
        "gateway whose X-Forwarded-For is believed. The client address (failed-login throttle, "
        "audit log) is the TCP peer, or, when the peer is in one of these networks, the "
        "right-most X-Forwarded-For entry outside them. Empty: no forwarded header is trusted.",
    )
    direct_ingress: bool = Field(
        True,
        description="Gateway replicas serve HTTP themselves (ports port..port+replicas-1) "
        "instead of behind the Serve proxy: one hop less per token (docs: Benchmarks). "
        "The proxy then listens on an internal port only.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Each gateway replica also serves its Prometheus metrics on this port of "
        "its node, so a scraper reads every replica (in a cluster, one replica per gateway "
        "pod: see ray_resource). Unset: metrics only at GET /metrics of the endpoint.",
    )
    ray_resource: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="Ray custom resource each gateway replica takes one unit of. The Helm chart's "
        "gateway pods offer one unit each, which puts exactly one gateway replica on every "
        "gateway pod and none on GPU nodes.",
    )
    input_bounds: InputBounds = Field(
        default_factory=InputBounds,
        description="Bounds on inputs whose cost is not their token count "
        "(LLMPLAT_GATEWAY__INPUT_BOUNDS__SCHEMA_BYTES, ...); teams may override each.",
    )

    @model_validator(mode="after")
    def _budget_holds_a_whole_body(self) -> GatewaySettings:
        if self.max_buffered_body_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_buffered_body_bytes ({self.max_buffered_body_bytes}) is below "
                f"max_request_bytes ({self.max_request_bytes}): a body of the largest accepted "
                "size could never be buffered"
            )
        return self


class KeyStoreSettings(BaseModel):
    """Where teams and API keys live."""

    backend: Literal["file", "kubernetes"] = Field(
        "file", description="'file': YAML under home; 'kubernetes': Secrets in a namespace."
    )
    path: Path | None = Field(None, description="File store path; default <home>/teams.yaml.")
    namespace: str = Field("llmplat", description="Namespace of the Kubernetes store's Secrets.")
    max_staleness_s: float = Field(
        60.0,
        gt=0,
        description="Kubernetes store: when the gateway's view of the keys has not been "
        "confirmed by the API server for this long (watch failing), team keys are refused "
        "with 503 'key_store_stale' instead of trusting a view in which revoked keys may "
        "still be valid.",
    )
    kubeconfig: Path | None = Field(
        default_factory=lambda: (
            Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None
        ),
        description="Kubeconfig outside a pod (default: $KUBECONFIG, else ~/.kube/config).",
    )


class QuotaSettings(BaseModel):
    """Where quota counters live and what happens when that store is down."""

    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="'memory' is exact for one gateway replica; several replicas need 'redis'.",
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://[:password@]host:port/db (a secret: it may hold a password)."
    )
    on_store_error: Literal["closed", "open"] = Field(
        "closed",
        description="'closed' refuses requests with 503 while Redis is unreachable; "
        "'open' admits them unmetered.",
    )
    key_prefix: str = Field("llmplat:quota", description="Prefix of every Redis key.")
    lease_s: float = Field(
        900.0, gt=0, description="In-flight slots of a gateway that died free after this."
    )

    def check(self) -> None:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError(
                "LLMPLAT_QUOTAS__BACKEND=redis needs LLMPLAT_QUOTAS__REDIS_URL "
                "(or LLMPLAT_QUOTAS__REDIS_URL_FILE)"
            )


class AuditSettings(BaseModel):
    """The audit log: one JSON line per request, never prompt or completion text."""

    sink: str | None = Field(
        None,
        description="A file path, '-' for stdout, 'none' to disable; default <home>/audit.log.",
    )


class CpuEngineSettings(BaseModel):
    """vLLM-CPU knobs that depend on the host rather than the model."""

    omp_threads_bind: str = Field(
        "auto",
        description="VLLM_CPU_OMP_THREADS_BIND: 'auto' (every core but the reserved ones), "
        "'nobind' or a core list like '0-6'.",
    )
    reserved_cpus: int = Field(
        1,
        ge=0,
        description="VLLM_CPU_NUM_OF_RESERVED_CPU: cores 'auto' leaves to vLLM's scheduler "
        "process and the rest of the platform (vLLM's minimum is 1).",
    )
    cores: int | None = Field(
        None,
        ge=1,
        description="Cores of each host an engine runs on, for 'auto'; default: this "
        "machine's. The chart sets it to the model pod's CPU limit, since the process that "
        "builds the engines' environment runs in another pod.",
    )
    autogroup_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="`llmplat serve` with CPU engines runs in a session of its own whose "
        "autogroup (Linux's per-session CPU share) gets this nice value, so clients in other "
        "sessions are not kept off the cores by the engine (llmplat.local.session); 0 leaves the "
        "session as it is.",
    )


class LocalClusterSettings(BaseModel):
    """The Ray cluster ``llmplat serve`` starts when no ``ray_address`` is given."""

    nodes: int = Field(
        1,
        ge=1,
        description="Ray nodes to run on this machine: the head plus nodes-1 worker raylets, "
        "each with its own share of the cores (and engines bound to them), so a layout that "
        "spans several nodes (pipeline stages on different nodes) can be tried on one machine.",
    )
    node_start_timeout_s: float = Field(
        60.0, gt=0, description="How long worker raylets may take to join the head."
    )


class LoadTestSettings(BaseModel):
    """`llmplat loadtest`: where its files are and which existing keys it uses."""

    dir: Path = Field(
        default_factory=_default_loadtests_dir,
        description="Folder with locustfile.py and scenarios/; default ./loadtests, else the "
        "source checkout's loadtests/.",
    )
    keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Existing API key per scenario team (LLMPLAT_LOADTEST__KEYS__CHAT=...); "
        "teams without one are created through the admin API.",
    )
    run_spec: Path | None = Field(
        None, description="Set by the runner for its Locust process: the run's plan (no secrets)."
    )


class FileVariablesSource(PydanticBaseSettingsSource):
    """``LLMPLAT_<NAME>_FILE=<path>``: the value of ``LLMPLAT_<NAME>`` read from a file (one
    trailing newline removed). Setting both forms of one variable is an error."""

    def __init__(self, settings_cls: type[BaseSettings], env: dict[str, str]) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is assembled in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        upper = {k.upper(): v for k, v in self._env.items()}
        for name, path in upper.items():
            if not (name.startswith(ENV_PREFIX) and name.endswith(FILE_SUFFIX)):
                continue
            plain = name[: -len(FILE_SUFFIX)]
            if plain in upper:
                raise ValueError(f"set {plain} or {name}, not both")
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"{name}: cannot read {path}: {exc.strerror}") from None
            text = text[:-1] if text.endswith("\n") else text
            parts = plain[len(ENV_PREFIX) :].lower().split("__")
            target = values
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = text
        return values


class Settings(BaseSettings):
    """Process-wide settings of llmplat (environment variables ``LLMPLAT_*``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # a refused value may be a secret
    )

    home: Path = Field(
        default_factory=_default_home,
        description="Data directory: built models, Ray temp dir, compile caches, stores.",
    )
    config_dir: Path = Field(
        default_factory=_default_config_dir,
        description="Folder with models/*.yaml profiles and platform configs.",
    )
    config: Path | None = Field(
        None,
        description="Platform config YAML, or the name of one in <config_dir> ('autoscale' "
        "for <config_dir>/autoscale.yaml); default <config_dir>/local.yaml.",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP endpoint binds to.")
    engine_metrics_port: int = Field(
        8079,
        ge=1,
        le=65535,
        description="Port of Ray's Prometheus exporter on the local node: vLLM engine "
        "metrics (ray_vllm_*) and Ray Serve's (ray_serve_*). Gateway metrics are at /metrics.",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP endpoint.")
    mode: Literal["dev", "production"] = Field(
        "dev", description="dev generates missing secrets; production requires them."
    )
    dev_api_key: SecretStr | None = Field(
        None, description="The dev team's key; generated and printed when unset in dev mode."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the /admin/ API, at least 32 characters; generated in "
        "dev mode, the admin API is off in production without it.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    keystore: KeyStoreSettings = Field(default_factory=KeyStoreSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    cpu: CpuEngineSettings = Field(default_factory=CpuEngineSettings)
    local: LocalClusterSettings = Field(default_factory=LocalClusterSettings)
    loadtest: LoadTestSettings = Field(default_factory=LoadTestSettings)
    teams_file: Path | None = Field(
        None,
        description="YAML file declaring teams (`teams: [...]`, the fields of `llmplat teams "
        "create`). When the platform starts from a Ray Serve config (a cluster), each listed "
        "team is created or updated to match; teams not listed are left alone. The Helm chart "
        "mounts its teams ConfigMap here.",
    )
    ray_address: str | None = Field(
        None, description="Connect to this Ray cluster instead of starting a local one."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs the local Ray node advertises (default: all)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = dict(os.environ)
        if isinstance(env_settings, EnvSettingsSource):
            env = dict(env_settings.env_vars)
        return (init_settings, env_settings, FileVariablesSource(settings_cls, env))

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @model_validator(mode="after")
    def _secrets_required_outside_dev(self) -> Settings:
        if self.mode == "production" and self.dev_api_key is not None:
            raise ValueError("LLMPLAT_DEV_API_KEY is a dev-mode setting; unset it in production")
        if self.quotas.backend == "memory" and self.gateway.replicas > 1:
            raise ValueError(
                f"{self.gateway.replicas} gateway replicas with in-process quotas would admit "
                f"{self.gateway.replicas}x every limit; set LLMPLAT_QUOTAS__BACKEND=redis"
            )
        return self

    def check_quota_store(self) -> None:
        """Raise ValueError when the quota store cannot be opened from these settings.

        Not a validator: on a cluster, only the gateway's pods hold the Redis URL (a
        mounted file); other pods build settings without it."""
        self.quotas.check()

    @property
    def keystore_path(self) -> Path:
        return self.keystore.path or self.home / "teams.yaml"

    @property
    def audit_sink(self) -> str | None:
        sink = self.audit.sink
        if sink is None:
            return str(self.home / "audit.log")
        return None if sink == "none" else sink

    def resolved_config(self) -> Path:
        if self.config is None:
            return self.config_dir / "local.yaml"
        if self.config.exists() or len(self.config.parts) > 1:
            return self.config
        named = self.config_dir / f"{self.config.name.removesuffix('.yaml')}.yaml"
        return named if named.exists() else self.config

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's temp dir: under home when short enough, else a short per-home path.

        Ray puts AF_UNIX sockets ~65 bytes below it and the kernel allows 107.
        """
        candidate = self.home / "ray"
        if len(str(candidate)) <= _MAX_RAY_TEMP_LEN:
            return candidate
        digest = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"llmplat-ray-{digest}"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def with_dev_key(self) -> Settings:
        """Return settings whose dev key and admin token are set, generating them in dev mode."""
        if self.mode != "dev":
            return self
        update: dict[str, SecretStr] = {}
        if self.dev_api_key is None:
            update["dev_api_key"] = SecretStr(DEV_KEY_PREFIX + secrets.token_urlsafe(32))
        if self.admin_token is None:
            update["admin_token"] = SecretStr(ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32))
        return self.model_copy(update=update) if update else self


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a child process: this process's, plus ``extra``."""
    return {**os.environ, **extra}


def export_values(values: dict[str, str]) -> None:
    """Put ``values`` into this process's environment, replacing what is there: for
    variables this platform owns (its Ray token file), read by processes started from here."""
    os.environ.update(values)


def export_defaults(defaults: dict[str, str]) -> None:
    """Put ``defaults`` into this process's environment where the user has not set them.

    For variables that processes started from here (Ray's daemons, Serve's replicas) read
    when they start; a value the user exported wins.
    """
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
