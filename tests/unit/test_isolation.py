"""The test run's own LLMPLAT_HOME (tests/conftest.py): nothing reaches the user's home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmplat.settings import Settings
from support.platform import platform_home

USER_HOME = Path.home() / ".local" / "share" / "llmplat"


def test_the_run_has_a_temporary_home_of_its_own() -> None:
    home = Path(os.environ["LLMPLAT_HOME"])
    assert home.is_dir() and home.name.startswith("llmplat-test-home-")
    assert Settings().home == home != USER_HOME
    for path in (Settings().models_dir, Settings().keystore_path, Path(Settings().audit_sink)):
        assert home in path.parents, path


def test_platform_homes_share_the_runs_model_cache(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """What the integration platforms do: their models/ is the run's, not the user's."""
    home = platform_home(tmp_path_factory, "isolation")
    assert (home / "models").resolve() == Settings().models_dir.resolve()
    assert Path(os.environ["LLMPLAT_HOME"]) in (home / "models").resolve().parents
