"""Rendered chart fixtures: the defaults and every values file of deploy/values/."""

from __future__ import annotations

from typing import Any

import pytest

from support import chart
from support.chart_cases import CASES, EVERYTHING_ON


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Case → objects, with the case's values only."""
    return {case: chart.render(*files) for case, files in CASES.items()}


@pytest.fixture(scope="session")
def rendered_all_on() -> dict[str, list[dict[str, Any]]]:
    """Case → objects, every optional object on."""
    return {case: chart.render(*files, overrides=EVERYTHING_ON) for case, files in CASES.items()}
