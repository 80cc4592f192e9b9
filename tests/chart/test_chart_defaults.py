"""The chart's values that become llmplat settings (``LLMPLAT_*`` in the env ConfigMap).

Where values.yaml repeats a default of ``llmplat.settings``, the two must agree: a change to
either side alone fails here. Where the chart deliberately differs (a cluster is not a
laptop), the difference is named with its reason. Every value the env ConfigMap reads is in
one of the two maps, so a new repetition cannot slip in unlisted.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

import pytest
import yaml
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from llmplat.settings import GatewaySettings, QuotaSettings, Settings
from support import chart

REPEATED: dict[str, tuple[type[BaseModel], str, str]] = {
    # chart value: (settings model, its field, the variable the chart sets from the value)
    "gateway.maxRequestBytes": (
        GatewaySettings,
        "max_request_bytes",
        "LLMPLAT_GATEWAY__MAX_REQUEST_BYTES",
    ),
    "gateway.requestTimeoutSeconds": (
        GatewaySettings,
        "request_timeout_s",
        "LLMPLAT_GATEWAY__REQUEST_TIMEOUT_S",
    ),
    "quotas.onStoreError": (QuotaSettings, "on_store_error", "LLMPLAT_QUOTAS__ON_STORE_ERROR"),
    "settings.logLevel": (Settings, "log_level", "LLMPLAT_LOG_LEVEL"),
}
"""Chart values whose default is the settings' default."""

OVERRIDDEN: dict[str, tuple[type[BaseModel], str, str, str]] = {
    # chart value: (settings model, its field, the variable, why the chart's default differs)
    "gateway.replicas": (
        GatewaySettings,
        "replicas",
        "LLMPLAT_GATEWAY__REPLICAS",
        "two gateway pods: the endpoint survives the loss of one",
    ),
    "gateway.metricsPort": (
        GatewaySettings,
        "metrics_port",
        "LLMPLAT_GATEWAY__METRICS_PORT",
        "each gateway pod is its own scrape target (PodMonitor)",
    ),
    "settings.mode": (
        Settings,
        "mode",
        "LLMPLAT_MODE",
        "a cluster runs in production mode: no generated secrets",
    ),
}
"""Chart values that set a setting to something other than its default, on purpose."""

WHEN_SET: dict[str, tuple[type[BaseModel], str, str, str]] = {
    # chart value: (settings model, its field, the variable, what leaving it empty means)
    # trusted_proxies comes with the gateway's X-Forwarded-For change (issue 27): until
    # GatewaySettings has the field, the tests below check the chart's side only.
    "gateway.trustedProxies": (
        GatewaySettings,
        "trusted_proxies",
        "LLMPLAT_GATEWAY__TRUSTED_PROXIES",
        "empty: the variable is left out and the setting's default (no trusted proxy) applies",
    ),
}
"""Chart values rendered into their variable only when set (the settings' default otherwise)."""

MAPPED: dict[str, tuple[type[BaseModel], str, str]] = {
    **REPEATED,
    **{key: (model, name, var) for key, (model, name, var, _) in OVERRIDDEN.items()},
}

_VALUE_LINE = re.compile(r"^\s*(LLMPLAT_\w+):\s*\{\{-?\s*\.Values\.([\w.]+)", re.MULTILINE)


def _chart_values() -> dict[str, Any]:
    return yaml.safe_load((chart.CHART / "values.yaml").read_text())


def _chart_value(key: str) -> Any:
    value: Any = _chart_values()
    for part in key.split("."):
        value = value[part]
    return value


def _schema(key: str) -> dict[str, Any]:
    node: dict[str, Any] = json.loads((chart.CHART / "values.schema.json").read_text())
    for part in key.split("."):
        node = node["properties"][part]
    return node


def _field(model: type[BaseModel], name: str) -> FieldInfo:
    return model.model_fields[name]


def _default(model: type[BaseModel], name: str) -> Any:
    return _field(model, name).get_default(call_default_factory=True)


def _parsed(model: type[BaseModel], name: str, text: Any) -> Any:
    """``text`` as the settings read it (an environment variable's string, or a YAML value)."""
    return TypeAdapter(_field(model, name).annotation).validate_python(text)


@pytest.mark.parametrize("key", sorted(REPEATED))
def test_repeated_chart_defaults_are_the_settings_defaults(key: str) -> None:
    model, name, _ = REPEATED[key]
    value = _chart_value(key)
    default = _default(model, name)
    assert _parsed(model, name, value) == default, (
        f"values.yaml {key}={value!r} but {model.__name__}.{name} defaults to {default!r}: "
        "change both, or move the key to OVERRIDDEN with the reason"
    )


@pytest.mark.parametrize("key", sorted(OVERRIDDEN))
def test_overridden_chart_defaults_do_differ(key: str) -> None:
    """A value listed as overridden that equals the default again belongs in REPEATED."""
    model, name, _, reason = OVERRIDDEN[key]
    assert reason
    assert _parsed(model, name, _chart_value(key)) != _default(model, name)


def test_every_value_the_env_configmap_reads_is_mapped() -> None:
    template = (chart.CHART / "templates" / "configmap.yaml").read_text()
    read = {(key, var) for var, key in _VALUE_LINE.findall(template)}
    assert read, "no `LLMPLAT_X: {{ .Values.… }}` line found: the pattern is stale"
    assert read == {(key, var) for key, (_, _, var) in MAPPED.items()} | {
        (key, var) for key, (_, _, var, _) in WHEN_SET.items()
    }


@pytest.mark.parametrize("key", sorted(WHEN_SET))
def test_values_rendered_when_set_are_left_out_by_default(key: str) -> None:
    """Empty by default, the variable absent, and the settings' default the same emptiness;
    set, the variable holds the value as JSON, which the settings read back."""
    model, name, var, reason = WHEN_SET[key]
    assert reason
    assert _chart_value(key) in ([], {}, "", None)
    assert var not in chart.find(chart.render(), "ConfigMap", "llmplat-env")["data"]
    value = ["10.0.0.0/8", "fd00::/8"]
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    env = chart.find(chart.render(overrides=nested), "ConfigMap", "llmplat-env")["data"]
    assert json.loads(env[var]) == value
    if name not in model.model_fields:
        pytest.skip(f"{model.__name__}.{name} does not exist yet: the chart's side is checked")
    assert not _default(model, name), f"{model.__name__}.{name}: the chart leaves it unset"
    assert _parsed(model, name, json.loads(env[var])) == _parsed(model, name, value)


def test_each_mapped_value_becomes_its_variable() -> None:
    """Rendered with the defaults, each variable holds its chart value, read as the settings
    read it (so the map names the right variable, and the type survives the template)."""
    env = chart.find(chart.render(), "ConfigMap", "llmplat-env")["data"]
    for key, (model, name, var) in MAPPED.items():
        assert _parsed(model, name, env[var]) == _parsed(model, name, _chart_value(key)), key


def test_the_schema_admits_no_value_the_settings_refuse() -> None:
    """A value that passes the chart's schema must not stop the pods at startup."""
    for key, (model, name, _) in MAPPED.items():
        field, schema = _field(model, name), _schema(key)
        if typing.get_origin(field.annotation) is typing.Literal:
            assert set(schema["enum"]) <= set(typing.get_args(field.annotation)), key
        for bound in field.metadata:
            if isinstance(bound, Ge):
                low = schema.get("minimum", schema.get("exclusiveMinimum"))
                assert low is not None and low >= bound.ge, key
            elif isinstance(bound, Gt):
                assert schema.get("exclusiveMinimum", -float("inf")) >= bound.gt or (
                    schema.get("minimum", -float("inf")) > bound.gt
                ), key
            elif isinstance(bound, Le):
                assert schema.get("maximum", float("inf")) <= bound.le, key


def test_redis_acl_covers_the_settings_key_prefix() -> None:
    """The bundled Redis's ACL names the quota store's keys by the settings' default prefix
    (files/redis-quota-acl.txt; the chart sets no LLMPLAT_QUOTAS__KEY_PREFIX)."""
    rule = (chart.CHART / "files" / "redis-quota-acl.txt").read_text().split()
    assert rule[0] == f"~{_default(QuotaSettings, 'key_prefix')}:*"
    template = "".join(p.read_text() for p in (chart.CHART / "templates").iterdir())
    assert "KEY_PREFIX" not in template
