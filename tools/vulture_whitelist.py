"""Names vulture cannot see used: hooks that Ray Serve, vLLM, pydantic-settings, Locust and
the standard library call by name. `make lint` reads this file with the code (pyproject's
[tool.vulture]); add a name here only when a framework calls it."""

# Ray Serve LLM's engine protocol (ray.serve.llm LLMServer calls these on its engine), kept
# by the shared fake engine and vLLM's stat logger interface.
routing_stats  # LLMEngine
resolve_lora  # LLMEngine
reset_prefix_cache  # LLMEngine
embeddings  # LLMEngine
transcriptions  # LLMEngine
lora_model  # LLMEngine.resolve_lora's parameter
raw_request_info  # LLMEngine's request methods' parameter
mm_cache_stats  # vLLM StatLoggerBase.record
engine_idx  # vLLM StatLoggerBase.record
log_engine_initialized  # vLLM StatLoggerBase
record_sleep_state  # vLLM StatLoggerBase
is_awake  # vLLM StatLoggerBase.record_sleep_state
level  # vLLM StatLoggerBase.record_sleep_state
_default_engine_cls  # ray.serve.llm LLMServer
_batch_output_stream  # ray.serve.llm LLMServer

# pydantic-settings source protocol
get_field_value  # PydanticBaseSettingsSource
dotenv_settings  # BaseSettings.settings_customise_sources
file_secret_settings  # BaseSettings.settings_customise_sources

# Locust user classes
abstract  # locust User
on_start  # locust User
wait_time  # locust User

# http.server handlers of the tests' stand-in servers
do_GET  # BaseHTTPRequestHandler
log_message  # BaseHTTPRequestHandler

# Python, uvicorn, vLLM and kmock read these by name
__getattr__  # module attribute hook (llmplat.compat's lazy names)
__dir__  # module attribute hook (llmplat.compat)
engine_dead  # vLLM's engine-core client flag, set on a lost node
should_exit  # uvicorn.Server
_serve_watch  # kmock KubernetesEmulator's watch handler, overridden
PhasedShape  # Locust picks up the LoadTestShape class of a locustfile
retries  # urllib3 Retry on the kubernetes client's configuration
pre_tokenizer  # tokenizers.Tokenizer
chat_template  # a tokenizer's template, replaced in a test

# Fields of records that are written out whole (JSON reports, config.json, status)
observed_generation  # k8s.status.ServiceSummary
error_codes  # loadtest.results.Stats
rms_norm_eps  # models.tiny's config.json
budget_per_gpu  # planner.layouts.Sizing
