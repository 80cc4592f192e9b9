"""The dashboards and alert rules in deploy/ only use metrics and labels the platform exports.

Every PromQL expression (dashboard targets, template-variable queries, recording rules, alerts)
is parsed with ``promql-parser`` (Rust bindings of the PromQL parser, which also type-checks
function arguments). Each selector must name a metric the platform exports
(``exported_metric_names()``) or a recording rule defined in rules.yaml; labels matched,
grouped by, joined on, and shown in legends or alert annotations must exist on what the
expression returns. The rules file is schema-checked like Prometheus' rule-file loader does,
and the engine names in the catalog are checked against the installed vLLM and Ray sources.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser as pq
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmplat.autoscaling.report import DecisionEvent, ScaleReport
from llmplat.gateway.state import RequestRecord
from llmplat.observability import catalog
from llmplat.observability.catalog import Kind, exported_metric_names, gateway_metric_names
from llmplat.observability.metrics import GatewayMetrics
from llmplat.observability.record import Usage

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules.yaml"
DASHBOARD_FILES = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
DASHBOARD_NAMES = ("capacity.json", "overview.json", "teams.json")

# Grafana's built-in interval variables, replaced by a duration before parsing.
GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1d"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


# --------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """Duplicate keys are an error (Prometheus' YAML decoder refuses them too)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(dupes)}", node.start_mark
        )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_rules(text: str | None = None) -> dict[str, Any]:
    return yaml.load(RULES_FILE.read_text() if text is None else text, Loader=_StrictLoader)


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARD_FILES}


# --------------------------------------------------------------------------- label facts

Labels = frozenset[str]
SCALAR = "scalar"  # the "labels" of a scalar expression


def _drive_gateway() -> CollectorRegistry:
    """A registry holding every gateway series, filled through GatewayMetrics' own methods."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, models=("m",))
    metrics.started("t", "m")
    metrics.admitted("t", 0.001)
    metrics.rejected("t", "tokens_per_minute")
    metrics.store_error("reserve")
    rec = RequestRecord(endpoint="chat", started=0.0, team="t", model="m", status=200, ended=1.0)
    rec.usage, rec.first_token_s, rec.inter_token_s = Usage(3, 4), 0.2, 0.02
    metrics.record(rec)
    metrics.model_starting("m")
    metrics.retried("m")
    decision = DecisionEvent(at=1.0, from_replicas=1, to_replicas=2, reason="queue")
    metrics.scale_report(
        ScaleReport(
            model_id="m", running=1, desired=2, min_replicas=1, max_replicas=2, wanted=2,
            reason="queue", pressure=2.0, waiting=4, kv_cache_usage=0.5, ttft_s=0.1,
            last_decision=decision, at=1.0,
        )
    )  # fmt: skip
    return registry


def _gateway_samples() -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    text = generate_latest(_drive_gateway()).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    return out


GATEWAY_SAMPLES = _gateway_samples()
SCRAPE = frozenset(catalog.SCRAPE_LABELS)


def _exported_labels() -> dict[str, Labels]:
    labels = {name: frozenset().union(*rows) | SCRAPE for name, rows in GATEWAY_SAMPLES.items()}
    for spec in catalog.CATALOG:
        ambient = SCRAPE | (
            frozenset(catalog.RAY_GLOBAL_LABELS) if spec.name.startswith("ray_") else set()
        )
        for sample in spec.samples():
            extra = {"le"} if sample.endswith("_bucket") else set()
            labels[sample] = frozenset(spec.labels) | ambient | extra
    return labels


EXPORTED_LABELS = _exported_labels()
# le bounds of every gateway histogram, as the exposition writes them
BUCKET_BOUNDS = {
    name: {row["le"] for row in rows}
    for name, rows in GATEWAY_SAMPLES.items()
    if name.endswith("_bucket")
}


# --------------------------------------------------------------------------- PromQL analysis


@dataclass
class Analysis:
    """The problems found in one expression, and the labels of what it returns."""

    errors: list[str] = field(default_factory=list)
    labels: Labels | str | None = None  # None: not known


def _labels_of_selector(
    vs: pq.VectorSelector, known: dict[str, Labels | None], a: Analysis
) -> Labels | None:
    name = vs.name
    matchers = list(vs.matchers.matchers)
    if name is None:
        eq = [m.value for m in matchers if m.name == "__name__" and m.op == pq.MatchOp.Equal]
        if not eq:
            a.errors.append(f"selector {vs.prettify()} names no metric")
            return None
        name = eq[0]
    if name not in known:
        a.errors.append(f"unknown metric {name!r}")
        return None
    have = known[name]
    for m in matchers:
        if have is not None and m.name != "__name__" and m.name not in have:
            a.errors.append(f"{name} has no label {m.name!r} (has {sorted(have)})")
        if m.name == "le" and name in BUCKET_BOUNDS and m.op == pq.MatchOp.Equal:
            if m.value not in BUCKET_BOUNDS[name]:
                a.errors.append(
                    f'{name}{{le="{m.value}"}} is not a bucket bound ({sorted(BUCKET_BOUNDS[name], key=float)})'
                )
    return have


def _check_subset(what: str, wanted: list[str], have: Labels | str | None, a: Analysis) -> None:
    if isinstance(have, frozenset):
        missing = sorted(set(wanted) - have)
        if missing:
            a.errors.append(f"{what} {missing} not among the labels {sorted(have)}")


def _infer(e: Any, known: dict[str, Labels | None], a: Analysis) -> Labels | str | None:
    """Output labels of ``e`` (``SCALAR`` for scalars, None when unknown), checking as it goes."""
    if isinstance(e, pq.NumberLiteral | pq.StringLiteral):
        return SCALAR
    if isinstance(e, pq.VectorSelector):
        return _labels_of_selector(e, known, a)
    if isinstance(e, pq.MatrixSelector):
        return _labels_of_selector(e.vector_selector, known, a)
    if isinstance(e, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
        return _infer(e.expr, known, a)
    if isinstance(e, pq.AggregateExpr):
        inner = _infer(e.expr, known, a)
        if e.param is not None:
            _infer(e.param, known, a)
        op, mod = str(e.op), e.modifier
        if mod is not None and mod.type == pq.AggModifierType.By:
            _check_subset(f"{op} by", list(mod.labels), inner, a)
        if op in ("topk", "bottomk", "limitk", "limit_ratio"):
            return inner
        extra = {e.param.val} if isinstance(e.param, pq.StringLiteral) else set()
        if mod is None:
            return frozenset(extra)
        if mod.type == pq.AggModifierType.By:
            return frozenset(mod.labels) | extra
        return None if not isinstance(inner, frozenset) else (inner - set(mod.labels)) | extra
    if isinstance(e, pq.Call):
        name = e.func.name
        args = [_infer(arg, known, a) for arg in e.args]
        vectors = [x for x in args if x != SCALAR]
        if name in ("time", "scalar", "pi"):
            return SCALAR
        if name == "vector":
            return frozenset()
        if name.startswith("absent"):
            return None
        if name == "histogram_quantile":
            _check_subset("histogram_quantile needs", ["le"], args[1], a)
            return args[1] - {"le"} if isinstance(args[1], frozenset) else None
        if name in ("label_replace", "label_join"):
            dst = e.args[1].val if isinstance(e.args[1], pq.StringLiteral) else None
            return args[0] | {dst} if isinstance(args[0], frozenset) and dst else None
        return vectors[0] if vectors else SCALAR
    if isinstance(e, pq.BinaryExpr):
        lhs, rhs = _infer(e.lhs, known, a), _infer(e.rhs, known, a)
        if lhs == SCALAR and rhs == SCALAR:
            return SCALAR
        if lhs == SCALAR or rhs == SCALAR:
            return rhs if lhs == SCALAR else lhs
        op, mod = str(e.op), e.modifier
        matching = mod.matching if mod is not None else None
        if matching is not None:
            for side, have in (("left", lhs), ("right", rhs)):
                _check_subset(f"{op} on/ignoring ({side} side)", list(matching.labels), have, a)
        if op in ("and", "unless"):
            return lhs
        if op == "or":
            return lhs | rhs if isinstance(lhs, frozenset) and isinstance(rhs, frozenset) else None
        card = mod.card if mod is not None else pq.VectorMatchCardinality.OneToOne
        group = list(mod.group_labels or []) if mod is not None else []
        if card == pq.VectorMatchCardinality.ManyToOne:
            _check_subset("group_left", group, rhs, a)
            return lhs | set(group) if isinstance(lhs, frozenset) else None
        if card == pq.VectorMatchCardinality.OneToMany:
            _check_subset("group_right", group, lhs, a)
            return rhs | set(group) if isinstance(rhs, frozenset) else None
        if matching is not None and matching.type == pq.LabelModifierType.Include:
            return frozenset(matching.labels)
        if matching is not None and isinstance(lhs, frozenset):
            return lhs - set(matching.labels)
        return lhs
    a.errors.append(f"unhandled expression node {type(e).__name__}")
    return None


def analyse(expr: str, known: dict[str, Labels | None]) -> Analysis:
    a = Analysis()
    try:
        tree = pq.parse(expr)
    except ValueError as exc:
        a.errors.append(f"does not parse: {exc}")
        return a
    a.labels = _infer(tree, known, a)
    return a


# --------------------------------------------------------------------------- rules


DURATION = r"^(?!$)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$"
LABEL_MAP = {
    "type": "object",
    "propertyNames": {"pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
    "additionalProperties": {"type": "string"},
}
RULES_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["groups"],
    "properties": {"groups": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/group"}}},
    "$defs": {
        "duration": {"type": "string", "pattern": DURATION},
        "group": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "rules"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": {"$ref": "#/$defs/duration"},
                "query_offset": {"$ref": "#/$defs/duration"},
                "limit": {"type": "integer", "minimum": 0},
                "labels": LABEL_MAP,
                "rules": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}},
            },
        },
        "rule": {
            "if": {"type": "object", "required": ["alert"]},
            "then": {"$ref": "#/$defs/alerting"},
            "else": {"$ref": "#/$defs/recording"},
        },
        "recording": {
            "type": "object",
            "additionalProperties": False,
            "required": ["record", "expr"],
            "properties": {
                "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                "expr": {"type": "string", "minLength": 1},
                "labels": LABEL_MAP,
            },
        },
        "alerting": {
            "type": "object",
            "additionalProperties": False,
            "required": ["alert", "expr", "for", "labels", "annotations"],
            "properties": {
                "alert": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
                "expr": {"type": "string", "minLength": 1},
                "for": {"$ref": "#/$defs/duration"},
                "keep_firing_for": {"$ref": "#/$defs/duration"},
                "labels": {
                    **LABEL_MAP,
                    "required": ["severity"],
                    "properties": {"severity": {"enum": ["critical", "warning", "info"]}},
                },
                "annotations": {
                    "type": "object",
                    "required": ["summary", "description"],
                    "properties": {
                        "summary": {"type": "string", "minLength": 10},
                        "description": {"type": "string", "minLength": 40},
                    },
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    },
}


def iter_rules(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield group["name"], rule


def check_rules(doc: dict[str, Any]) -> tuple[list[str], dict[str, Labels | None]]:
    """Every problem in a rules document, and the labels of the series each record produces."""
    errors = [
        f"schema: {e.message} at {list(e.absolute_path)}" for e in _validator().iter_errors(doc)
    ]
    if errors:
        return errors, {}
    names = [g["name"] for g in doc["groups"]]
    errors += [f"group {n!r} defined twice" for n in {n for n in names if names.count(n) > 1}]
    known: dict[str, Labels | None] = dict(EXPORTED_LABELS)
    recorded = {r["record"] for _, r in iter_rules(doc) if "record" in r}
    known.update({name: None for name in recorded})  # filled in below, in evaluation order
    alerts: list[str] = []
    for group, rule in iter_rules(doc):
        what = f"{group}/{rule.get('record') or rule.get('alert')}"
        a = analyse(rule["expr"], known)
        errors += [f"{what}: {err}" for err in a.errors]
        if "record" in rule:
            if rule["record"] in exported_metric_names():
                errors.append(f"{what}: recording rule shadows an exported metric")
            if isinstance(a.labels, frozenset) and known.get(rule["record"]) is None:
                known[rule["record"]] = a.labels | set(rule.get("labels", {}))
            continue
        alerts.append(rule["alert"])
        have = a.labels | set(rule["labels"]) if isinstance(a.labels, frozenset) else None
        for key, text in rule["annotations"].items():
            if text.count("{{") != text.count("}}"):
                errors.append(f"{what}: unbalanced template braces in {key}")
            used = re.findall(r"\$labels\.(\w+)", text)
            _sink = Analysis()
            _check_subset(f"annotation {key} uses", used, have, _sink)
            errors += [f"{what}: {err}" for err in _sink.errors]
    errors += [f"alert {n!r} defined twice" for n in {n for n in alerts if alerts.count(n) > 1}]
    return errors, known


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(RULES_SCHEMA)


# --------------------------------------------------------------------------- dashboards


DASHBOARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time", "tags"],
    "properties": {
        "uid": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "type": {
                                "enum": ["datasource", "query", "custom", "interval", "constant"]
                            }
                        },
                    },
                }
            },
        },
        "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}},
    },
    "$defs": {
        "datasource": {
            "type": "object",
            "required": ["type", "uid"],
            "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string"}},
        },
        "panel": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos", "datasource", "targets"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": ["timeseries", "stat", "bargauge", "table", "gauge", "barchart"]},
                "title": {"type": "string", "minLength": 1},
                "datasource": {"$ref": "#/$defs/datasource"},
                "gridPos": {
                    "type": "object",
                    "required": ["h", "w", "x", "y"],
                    "properties": {
                        "h": {"type": "integer", "minimum": 1},
                        "w": {"type": "integer", "minimum": 1, "maximum": 24},
                        "x": {"type": "integer", "minimum": 0, "maximum": 23},
                        "y": {"type": "integer", "minimum": 0},
                    },
                },
                "targets": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["refId", "expr"],
                        "properties": {
                            "refId": {"type": "string", "minLength": 1},
                            "expr": {"type": "string", "minLength": 1},
                            "datasource": {"$ref": "#/$defs/datasource"},
                            "legendFormat": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


def to_promql(expr: str, variables: set[str], used: set[str]) -> str:
    """Replace Grafana variables: interval built-ins by a duration, the rest by a match-all."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        used.add(name)
        return ".*"

    return VARIABLE.sub(sub, expr)


def check_dashboard(board: dict[str, Any], known: dict[str, Labels | None]) -> list[str]:
    errors = [
        f"schema: {e.message} at {list(e.absolute_path)}"
        for e in jsonschema.Draft202012Validator(DASHBOARD_SCHEMA).iter_errors(board)
    ]
    if errors:
        return errors
    variables = {v["name"]: v for v in board["templating"]["list"]}
    datasource_vars = {n for n, v in variables.items() if v["type"] == "datasource"}
    used: set[str] = set()

    def check_ds(where: str, ds: dict[str, Any]) -> None:
        m = VARIABLE.fullmatch(ds["uid"])
        if m is None or (m.group(1) or m.group(2)) not in datasource_vars:
            errors.append(f"{where}: datasource uid {ds['uid']!r} is not a datasource variable")

    for name, var in variables.items():
        if var["type"] != "query":
            continue
        check_ds(f"variable {name}", var["datasource"])
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        if m is None:
            errors.append(
                f"variable {name}: expected label_values(<selector>, <label>), got {query!r}"
            )
            continue
        a = analyse(to_promql(m.group(1), set(variables), used), known)
        _check_subset("label_values of", [m.group(2)], a.labels, a)
        errors += [f"variable {name}: {err}" for err in a.errors]

    ids = [p["id"] for p in board["panels"]]
    errors += [f"panel id {i} used twice" for i in {i for i in ids if ids.count(i) > 1}]
    boxes = []
    for panel in board["panels"]:
        where = f"panel {panel['id']} {panel['title']!r}"
        check_ds(where, panel["datasource"])
        g = panel["gridPos"]
        if g["x"] + g["w"] > 24:
            errors.append(f"{where}: wider than the 24-column grid")
        for other, og in boxes:
            if (
                g["x"] < og["x"] + og["w"]
                and og["x"] < g["x"] + g["w"]
                and g["y"] < og["y"] + og["h"]
                and og["y"] < g["y"] + g["h"]
            ):
                errors.append(f"{where}: overlaps panel {other}")
        boxes.append((panel["id"], g))
        refs = [t["refId"] for t in panel["targets"]]
        if len(set(refs)) != len(refs):
            errors.append(f"{where}: duplicate refId")
        for t in panel["targets"]:
            if "datasource" in t:
                check_ds(f"{where} {t['refId']}", t["datasource"])
            a = analyse(to_promql(t["expr"], set(variables), used), known)
            legend = re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", ""))
            _check_subset("legend uses", legend, a.labels, a)
            errors += [f"{where} {t['refId']}: {err}" for err in a.errors]
    errors += [f"variable ${n} is used but not defined" for n in sorted(used - set(variables))]
    return errors


# =========================================================================== tests


def test_gateway_names_are_the_real_exposition() -> None:
    """The name derivation in the catalog matches what prometheus-client really writes."""
    assert set(GATEWAY_SAMPLES) == gateway_metric_names()
    assert set(EXPORTED_LABELS) == exported_metric_names()
    assert "llmplat_requests_total" in exported_metric_names()
    assert "llmplat_time_to_first_token_seconds_bucket" in exported_metric_names()


def test_catalog_names_are_unique_and_exposition_safe() -> None:
    names = [s.name for s in catalog.CATALOG]
    assert len(names) == len(set(names))
    for spec in catalog.CATALOG:
        for sample in spec.samples():
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", sample), sample
    assert not gateway_metric_names() & {s for spec in catalog.CATALOG for s in spec.samples()}


def test_rules_file_is_valid_and_uses_exported_metrics() -> None:
    errors, _ = check_rules(load_rules())
    assert errors == []


def test_rules_have_the_alerts_ops_need() -> None:
    doc = load_rules()
    alerts = {r["alert"]: r for _, r in iter_rules(doc) if "alert" in r}
    assert {
        "LlmplatHighErrorRate",
        "LlmplatTTFTBudgetFastBurn",
        "LlmplatTTFTBudgetSlowBurn",
        "LlmplatKVCacheSaturated",
        "LlmplatEngineQueueGrowing",
        "LlmplatReplicaDown",
        "LlmplatQuotaStoreUnreachable",
        "LlmplatModelAtMaxReplicas",
    } <= set(alerts)
    at_max = alerts["LlmplatModelAtMaxReplicas"]["expr"]
    assert 'state="max"' in at_max and "delta(llmplat_model_waiting_requests" in at_max
    # A multi-window burn-rate alert: both a long and a short window, against the same objective.
    fast = alerts["LlmplatTTFTBudgetFastBurn"]["expr"]
    assert "ratio_rate1h" in fast and "ratio_rate5m" in fast


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_dashboard_is_valid_and_uses_exported_metrics(name: str) -> None:
    _, known = check_rules(load_rules())
    board = load_dashboards()[name]
    assert check_dashboard(board, known) == []
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "team", "model"} <= variables


def test_dashboards_have_distinct_uids_and_expected_panels() -> None:
    boards = load_dashboards()
    assert sorted(boards) == sorted(DASHBOARD_NAMES)
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    exprs = {
        n: " ".join(t["expr"] for p in b["panels"] for t in p["targets"]) for n, b in boards.items()
    }
    for needle in (
        "llmplat_time_to_first_token_seconds_bucket",
        "llmplat_inter_token_latency_seconds_bucket",
        "llmplat_quota_rejections_total",
        "llmplat_completion_tokens_total",
    ):
        assert needle in exprs["overview.json"]
    for needle in (
        "ray_vllm_kv_cache_usage_perc",
        "ray_vllm_num_requests_waiting",
        "ray_serve_deployment_replica_healthy",
        "DCGM_FI_DEV_GPU_UTIL",
        'llmplat_model_replicas{state="desired"',
        "llmplat_model_waiting_requests",
    ):
        assert needle in exprs["capacity.json"]
    assert "[1d]" in exprs["teams.json"] and "topk(" in exprs["teams.json"]


# -- the checks can fail: a typo or a wrong label in a dashboard or a rule is caught


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (
            "overview.json",
            "llmplat_requests_total",
            "llmplat_request_total",
            "unknown metric 'llmplat_request_total'",
        ),
        (
            "capacity.json",
            "ray_vllm_kv_cache_usage_perc",
            "ray_vllm_kv_cache_usage_percent",
            "unknown metric",
        ),
        ("capacity.json", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_UTILIZATION", "unknown metric"),
        (
            "capacity.json",
            "(model_name, ReplicaId)",
            "(model_name, replica_id)",
            "not among the labels",
        ),
        (
            "overview.json",
            "sum by (model, status)",
            "sum by (model, stauts)",
            "not among the labels",
        ),
        ("overview.json", "histogram_quantile(", "histogram_quantle(", "does not parse"),
        (
            "teams.json",
            'team=~"$team"',
            'team=~"$teams"',
            "variable $teams is used but not defined",
        ),
        (
            "overview.json",
            "sum by (le, model)",
            "sum by (model)",
            "histogram_quantile needs ['le']",
        ),
        (
            "teams.json",
            "sum by (team) (rate(llmplat_requests_total",
            "sum by (model) (rate(llmplat_requests_total",
            "legend uses ['team']",
        ),
    ],
)
def test_dashboard_mistakes_fail(name: str, old: str, new: str, expected: str) -> None:
    _, known = check_rules(load_rules())
    board = copy.deepcopy(load_dashboards()[name])
    hits = 0
    for panel in board["panels"]:
        for t in panel["targets"]:
            if old in t["expr"]:
                t["expr"] = t["expr"].replace(old, new)
                hits += 1
    assert hits, f"{old!r} not found in {name}"
    assert any(expected in e for e in check_dashboard(board, known))


def test_a_broken_datasource_or_variable_query_fails() -> None:
    _, known = check_rules(load_rules())
    board = copy.deepcopy(load_dashboards()["overview.json"])
    board["panels"][0]["datasource"]["uid"] = "${prometheus}"
    team = next(v for v in board["templating"]["list"] if v["name"] == "team")
    team["query"]["query"] = "label_values(llmplat_requests_total, teem)"
    board["panels"][1]["gridPos"] = dict(board["panels"][0]["gridPos"])
    errors = check_dashboard(board, known)
    assert any("is not a datasource variable" in e for e in errors)
    assert any("label_values of ['teem']" in e for e in errors)
    assert any("overlaps panel 1" in e for e in errors)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "rate(llmplat_quota_store_errors_total[5m])",
            "rate(llmplat_quota_store_error_total[5m])",
            "unknown metric",
        ),
        (
            "expr: llmplat:engine_kv_cache_usage:max > 0.9",
            "expr: llmplat:engine_kv_cache_usage:maxx > 0.9",
            "unknown metric",
        ),
        ('le="2.0"', 'le="2.5"', "is not a bucket bound"),
        (
            "{{ $labels.model_name }} replica",
            "{{ $labels.model }} replica",
            "annotation summary uses ['model']",
        ),
        ("        for: 5m\n", "", "'for' is a required property"),
        ("          severity: warning\n", "          severity: page\n", "is not one of"),
        ("  - name: llmplat.slo.ttft", "  - name: llmplat.alerts", "defined twice"),
        ("interval: 30s", "interval: 30 seconds", "does not match"),
    ],
)
def test_rule_mistakes_fail(old: str, new: str, expected: str) -> None:
    text = RULES_FILE.read_text()
    assert old in text
    errors, _ = check_rules(load_rules(text.replace(old, new, 1)))
    assert any(expected in e for e in errors), errors


def test_duplicate_yaml_keys_are_refused() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate"):
        load_rules("groups: []\ngroups: []\n")


# -- the engine and Ray Serve names in the catalog are the ones the installed sources define


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def _vllm_definitions() -> dict[str, tuple[Kind, tuple[str, ...] | None]]:
    """``vllm:<name>`` → (kind, labelnames) from PrometheusStatLogger in vllm's loggers.py."""
    tree = ast.parse((_package_dir("vllm") / "v1" / "metrics" / "loggers.py").read_text())
    logger = _class(tree, "PrometheusStatLogger")
    base = next(
        ast.literal_eval(n.value)
        for n in ast.walk(logger)
        if isinstance(n, ast.Assign) and [ast.unparse(t) for t in n.targets] == ["labelnames"]
    )

    def labels(node: ast.expr | None) -> tuple[str, ...] | None:
        if isinstance(node, ast.Name) and node.id == "labelnames":
            return tuple(base)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = labels(node.left), labels(node.right)
            return None if left is None or right is None else left + right
        try:
            return tuple(ast.literal_eval(node)) if node is not None else None
        except ValueError:
            return None

    kinds = {
        "_gauge_cls": Kind.GAUGE,
        "_counter_cls": Kind.COUNTER,
        "_histogram_cls": Kind.HISTOGRAM,
    }
    out = {}
    for call in ast.walk(logger):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        if call.func.attr not in kinds:
            continue
        kw = {k.arg: k.value for k in call.keywords}
        if isinstance(kw.get("name"), ast.Constant):
            out[kw["name"].value] = (kinds[call.func.attr], labels(kw.get("labelnames")))
    return out


def _ray_naming() -> tuple[re.Pattern[str], str, str, str]:
    """How vLLM's Ray wrappers rename and tag a metric, and Ray's export namespace."""
    vllm_dir = _package_dir("vllm")
    tree = ast.parse((vllm_dir / "v1" / "metrics" / "ray_wrappers.py").read_text())
    stat_logger = _class(tree, "RayPrometheusStatLogger")
    assigned = {
        ast.unparse(n.targets[0]): ast.unparse(n.value)
        for n in stat_logger.body
        if isinstance(n, ast.Assign)
    }
    assert assigned["_counter_cls"] == "RayCounterWrapper"
    assert assigned["_gauge_cls"] == "RayGaugeWrapper"
    assert assigned["_histogram_cls"] == "RayHistogramWrapper"
    base = _class(tree, "RayPrometheusMetric")
    sanitize = next(
        n
        for n in ast.walk(base)
        if isinstance(n, ast.FunctionDef) and n.name == "_get_sanitized_opentelemetry_name"
    )
    sub = next(
        n for n in ast.walk(sanitize) if isinstance(n, ast.Call) and ast.unparse(n.func) == "re.sub"
    )
    pattern, repl = (ast.literal_eval(arg) for arg in sub.args[:2])
    tag_keys = next(
        n for n in ast.walk(base) if isinstance(n, ast.FunctionDef) and n.name == "_get_tag_keys"
    )
    added = next(
        ast.literal_eval(n.args[0])
        for n in ast.walk(tag_keys)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "labels.append"
    )
    recorder = _package_dir("ray") / "_private" / "telemetry" / "open_telemetry_metric_recorder.py"
    namespace = next(
        ast.literal_eval(n.value)
        for n in ast.parse(recorder.read_text()).body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "NAMESPACE"
    )
    return re.compile(pattern), repl, added, namespace


def test_engine_metrics_match_the_installed_vllm() -> None:
    defined = _vllm_definitions()
    pattern, repl, replica_tag, namespace = _ray_naming()
    assert namespace == catalog.RAY_NAMESPACE
    assert "vllm:kv_cache_usage_perc" in defined  # the parse found the definitions
    for spec in catalog.ENGINE_METRICS:
        assert spec.upstream in defined, f"vLLM no longer defines {spec.upstream}"
        kind, labels = defined[spec.upstream]
        assert spec.kind == kind, spec.upstream
        assert spec.name == f"{namespace}_{pattern.sub(repl, spec.upstream)}"
        assert labels is not None and spec.labels == (*labels[:2], replica_tag, *labels[2:]), (
            spec.upstream
        )


def test_engine_sample_names_agree_with_rays_own_llm_dashboard() -> None:
    """Ray's shipped Serve LLM dashboard queries the same sample names (``_total`` on counters)."""
    panels = _package_dir("ray") / "dashboard" / "modules" / "metrics" / "dashboards"
    used = set(
        re.findall(r"\bray_vllm_\w+", (panels / "serve_llm_dashboard_panels.py").read_text())
    )
    families = {s.name: s for s in catalog.ENGINE_METRICS}
    checked = 0
    for sample in used:
        if sample in families and families[sample].kind is Kind.HISTOGRAM:
            continue  # a histogram's base name, handed to a helper that appends _bucket etc.
        family = re.sub(r"(_total|_bucket|_sum|_count)$", "", sample)
        if family in families:
            assert sample in families[family].samples(), sample
            checked += 1
    assert checked >= 5


def test_serve_metrics_are_defined_by_the_installed_ray() -> None:
    sources = "\n".join(
        p.read_text() for p in (_package_dir("ray") / "serve" / "_private").glob("*.py")
    )
    for spec in catalog.SERVE_METRICS:
        assert f'"{spec.upstream}"' in sources, f"Ray Serve no longer defines {spec.upstream}"
