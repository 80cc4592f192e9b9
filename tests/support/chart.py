"""The Helm chart rendered offline (Helm's Go library through helm-python-sdk), and the
validators its output goes through: Kubernetes' OpenAPI schemas (kubernetes-validate) and the
KubeRay CRDs (jsonschema).

Also the generator of the kustomize overlays: ``python -m support.chart`` (``make manifests``)
renders the chart with each values file of ``deploy/values/`` and writes the objects shared by
every layout to ``deploy/kustomize/base`` and the rest to each overlay.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llmplat"
VALUES_DIR = REPO / "deploy" / "values"
KUSTOMIZE = REPO / "deploy" / "kustomize"
CRDS = REPO.parent / "shared" / "crds"
"""KubeRay's CRDs: outside the repository (``../shared/crds``), never copied into it."""
RELEASE = NAMESPACE = "llmplat"

OVERLAYS = {"dev-cpu": "dev-cpu.yaml", "h100x8": "h100x8.yaml", "l40s-2node": "l40s-2node.yaml"}
"""kustomize overlay → the values file it is rendered from."""
KUSTOMIZE_VALUES = {
    # No generated secrets in files meant for git: the Secrets are made beside them.
    "adminToken": {"existingSecret": "llmplat-admin"},
    "redis": {"existingSecret": "llmplat-redis"},
    "rayAuth": {"existingSecret": "llmplat-ray-token"},
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values files: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_values(*files: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        values = deep_merge(values, yaml.safe_load(path.read_text()) or {})
    return deep_merge(values, overrides or {})


@functools.cache
def _chart() -> Any:
    import helm_python as helm

    return helm.Chart.load(str(CHART))


def render_raw(values: dict[str, Any], *, name: str = RELEASE, namespace: str = NAMESPACE) -> dict:
    """Template path → rendered text (raises helm_python.HelmRenderError on `fail`)."""
    return _chart().render(values, name=name, namespace=namespace, is_install=True)


def render(
    *files: Path,
    overrides: dict[str, Any] | None = None,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Every object the chart renders with these values files (in order) and overrides."""
    values = load_values(*files, overrides=overrides)
    rendered = render_raw(values, name=name, namespace=namespace)
    docs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return docs


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def values_files() -> list[Path]:
    return sorted(VALUES_DIR.glob("*.yaml"))


# --- validation -------------------------------------------------------------------------


def validate_builtin(doc: dict[str, Any], version: str) -> None:
    """Strict OpenAPI validation of a built-in kind (unknown fields are errors)."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def is_builtin(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    return "." not in group or group.endswith(".k8s.io")


def _close(schema: Any) -> Any:
    """Treat objects without x-kubernetes-preserve-unknown-fields as closed, the way the API
    server prunes unknown fields: an unknown field in our output is a bug."""
    if isinstance(schema, dict):
        schema = {k: _close(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> Any:
    """A jsonschema validator for a KubeRay kind (RayService, RayCluster) from ../shared/crds."""
    import jsonschema

    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _close(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["kind"])
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def serve_config_of(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


# --- kustomize generation ---------------------------------------------------------------

_HEADER = (
    "# Generated by `make manifests` from helm/llmplat and deploy/values/{source}: do not edit\n"
    "# by hand. Create the Secrets llmplat-admin (admin-token), llmplat-ray-token (auth_token)\n"
    "# and llmplat-redis (password, redis-url: redis://llmplat:<password>@llmplat-redis...) in\n"
    "# the namespace first (see deploy/README.md).\n"
)


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def is_monitoring(doc: dict[str, Any]) -> bool:
    """PodMonitors, PrometheusRules (the Prometheus Operator's CRDs) and dashboard ConfigMaps."""
    labels = doc["metadata"].get("labels") or {}
    return doc["kind"] in ("PodMonitor", "PrometheusRule") or (
        doc["kind"] == "ConfigMap" and "grafana_dashboard" in labels
    )


def kustomize_documents() -> dict[str, list[dict[str, Any]]]:
    """'base' → objects identical in every layout; 'monitoring' → the monitoring objects (a
    kustomize component, for clusters with the Prometheus Operator); overlay → the rest."""
    rendered = {
        overlay: render(VALUES_DIR / source, overrides=KUSTOMIZE_VALUES)
        for overlay, source in OVERLAYS.items()
    }
    by_key = {o: {_key(d): d for d in docs if not is_monitoring(d)} for o, docs in rendered.items()}
    monitoring = {}
    for docs in rendered.values():
        for d in filter(is_monitoring, docs):
            assert monitoring.setdefault(_key(d), d) == d, f"{_key(d)} differs between layouts"
    first = next(iter(by_key.values()))
    shared = [k for k, d in first.items() if all(other.get(k) == d for other in by_key.values())]
    out = {"base": [first[k] for k in shared], "monitoring": list(monitoring.values())}
    for overlay, docs in by_key.items():
        out[overlay] = [d for k, d in docs.items() if k not in shared]
    return out


def kustomize_folder(part: str) -> Path:
    if part in ("base",):
        return KUSTOMIZE / part
    if part == "monitoring":
        return KUSTOMIZE / "components" / part
    return KUSTOMIZE / "overlays" / part


def _dump(docs: list[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)


def write_kustomize() -> list[Path]:
    written = []
    for part, docs in kustomize_documents().items():
        folder = kustomize_folder(part)
        folder.mkdir(parents=True, exist_ok=True)
        source = OVERLAYS.get(part, "*.yaml (objects every layout shares)")
        path = folder / "llmplat.yaml"
        path.write_text(_HEADER.format(source=source) + _dump(docs))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if argv[1:] != ["write-kustomize"]:
        print("usage: python -m support.chart write-kustomize", file=sys.stderr)
        return 2
    for path in write_kustomize():
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
