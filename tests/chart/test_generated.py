"""What the chart and the overlays embed stays what its source produces (`make chart`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from llmplat.k8s.values import read_block, regenerate
from support import chart

DEPLOY = chart.REPO / "deploy"
VALUES_FILES = [chart.CHART / "values.yaml", *chart.values_files()]


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dupes:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {dupes}", node.start_mark
        )
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_values_files_have_no_duplicate_keys(path: Path) -> None:
    yaml.load(path.read_text(), Loader=_StrictLoader)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_generated_block_is_what_the_profiles_produce_now(path: Path) -> None:
    block = read_block(path)
    assert block == regenerate(block, chart.REPO / "configs"), (
        f"{path} is stale: run `make chart-values`"
    )


def test_chart_files_are_copies_of_the_deploy_files() -> None:
    pairs = {
        chart.CHART / "files" / "prometheus" / "rules.yaml": DEPLOY / "prometheus" / "rules.yaml"
    }
    pairs |= {
        chart.CHART / "files" / "grafana" / p.name: p
        for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")
    }
    own = {chart.CHART / "files" / "redis-quota-acl.txt"}  # the chart's own, no copy
    copies = set((chart.CHART / "files").rglob("*.*")) - own
    assert copies == set(pairs), "run `make chart-files`"
    for copy, source in pairs.items():
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs: run `make chart-files`"


def test_kustomize_files_are_what_the_chart_renders() -> None:
    for part, docs in chart.kustomize_documents().items():
        path = chart.kustomize_folder(part) / "llmplat.yaml"
        assert list(yaml.safe_load_all(path.read_text())) == docs, (
            f"{path} is stale: run `make manifests`"
        )


def test_versions_agree_with_the_package() -> None:
    project = tomllib.loads((chart.REPO / "pyproject.toml").read_text())["project"]
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    assert meta["appVersion"] == project["version"]
    ray = next(d for d in project["dependencies"] if d.startswith("ray[serve]=="))
    assert values["rayVersion"] == ray.split("==")[1]
