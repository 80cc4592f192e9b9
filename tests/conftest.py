"""Shared test setup: keep every test's data under a temporary LLMPLAT_HOME unless told.

- ``LLMPLAT_HOME`` points at a fresh directory for the whole run (set before collection,
  removed at the end), so nothing a test does reaches the user's ``~/.local/share/llmplat``:
  not the key store, the audit log, Ray's temp dir, nor the tiny model, which the
  integration platforms build once per run into ``$LLMPLAT_HOME/models`` (offline, a small
  part of one platform start; see ``support.platform.platform_home``). A test that needs a
  home of its own sets it (``monkeypatch.setenv``, or ``Settings(home=...)``).
- Hypothesis profiles: ``dev`` (the default: random examples, the example database) and
  ``ci`` (derandomized: the same examples on every run, no deadline: a shared 2-core CI
  machine's timing is not a property of the code; pytest-timeout bounds a hang). The
  profile is ``$HYPOTHESIS_PROFILE`` (``.ci/run`` sets ``ci``), or ``--hypothesis-profile``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("dev")
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_HOME = pytest.StashKey[tuple[Path, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="llmplat-test-home-"))
    config.stash[_HOME] = (home, os.environ.get("LLMPLAT_HOME"))
    os.environ["LLMPLAT_HOME"] = str(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    home, before = config.stash.get(_HOME, (None, None))
    if home is None:
        return
    if before is None:
        os.environ.pop("LLMPLAT_HOME", None)
    else:
        os.environ["LLMPLAT_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)
