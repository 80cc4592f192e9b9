"""The images the chart runs: pinned, non-root as the chart expects, what KubeRay needs."""

from __future__ import annotations

import re

import pytest
import yaml

from support import chart

DOCKER = chart.REPO / "deploy" / "docker"


@pytest.mark.parametrize(("flavour", "extra"), [("gpu", "gpu"), ("cpu", "cpu")])
def test_dockerfile(flavour: str, extra: str) -> None:
    text = (DOCKER / f"Dockerfile.{flavour}").read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{values['podSecurityContext']['runAsGroup']}$", text, re.M)
    assert f'"/src[{extra}]"' in text  # the engine build comes from pyproject's extras
    assert re.search(r"install .*\bbash\b.*\bwget\b", text)  # KubeRay's command and probes
    assert "ENV LLMPLAT_CONFIG_DIR=/opt/llmplat/configs" in text
    assert "LLMPLAT_HOME=/var/lib/llmplat" in text  # the chart's emptyDir home


def test_build_context_carries_only_the_package() -> None:
    ignore = (chart.REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!platform/"]
    assert "!configs/" in ignore
