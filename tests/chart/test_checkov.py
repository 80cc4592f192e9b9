"""checkov over everything the chart renders (every layout, every optional object on): it
passes but for the checks deploy/checkov.yaml skips, and each of those is justified there and
still needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import chart

CONFIG = chart.REPO / "deploy" / "checkov.yaml"
CHECKOV = next(
    (
        str(p)
        for p in (chart.REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov",)
        if p.is_file()
    ),
    shutil.which("checkov"),
)
pytestmark = pytest.mark.skipif(
    CHECKOV is None, reason="checkov not installed (`make test` installs it in .venv/tools)"
)


def skipped_checks() -> list[str]:
    return list(yaml.safe_load(CONFIG.read_text())["skip-check"])


@pytest.fixture(scope="module")
def checkov_failures(rendered_all_on, tmp_path_factory) -> set[str]:
    """One checkov run over every rendered case, without the skips: the failed check ids."""
    folder: Path = tmp_path_factory.mktemp("rendered")
    for case, docs in rendered_all_on.items():
        (folder / f"{case}.yaml").write_text(yaml.safe_dump_all(docs))
    env = os.environ | {"BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    run = subprocess.run(
        [CHECKOV, "-d", str(folder), "--framework", "kubernetes", "--skip-download",
         "--output", "json", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report: Any = json.loads(run.stdout)
    failed = report["results"]["failed_checks"]
    assert report["summary"]["passed"] > 100  # it did look at the objects
    return {f["check_id"] for f in failed}


def test_checkov_passes_but_for_the_justified_skips(checkov_failures: set[str]) -> None:
    assert checkov_failures == set(skipped_checks())


def test_every_skip_is_justified_in_the_one_file() -> None:
    lines = CONFIG.read_text().splitlines()
    for check in skipped_checks():
        at = next(i for i, line in enumerate(lines) if re.match(rf"\s*- {check}\b", line))
        reason = []
        for line in reversed(lines[:at]):
            if not line.strip().startswith("#"):
                break
            reason.append(line)
        assert len(" ".join(reason)) > 80, f"{check} has no justification above it"
