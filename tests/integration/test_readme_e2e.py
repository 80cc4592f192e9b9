"""The commands of the README and the documentation pages (docs/), run as a new user copies them.

Each runs from a directory outside the checkout, with the checkout's ``.venv/bin`` first on
``PATH`` (as after ``source .venv/bin/activate``, which the README says) and no ``LLMPLAT_*``
setting beyond those the page tells the user to set. A command a page shows that fails is a
failing test; placeholders (``<key id>``, ``[--out DIR]``) are the only edits.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support import MODEL
from support.readme import DOCS, README, VENV_BIN, block_with, shell_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900, func_only=True)]

# Where each command lives: the first request is on both the README and Getting started.
FIRST_REQUEST_PAGES = [README, DOCS / "getting-started.md"]
TEAMS = DOCS / "teams-and-quotas.md"
DEPLOYMENT = DOCS / "deployment.md"
DEVELOPMENT = DOCS / "development.md"


def _env(**settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLMPLAT_", "OPENAI_"))}
    return base | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"} | settings


def _bash(script: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"README commands failed:\n{script}\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_teams_and_keys_commands(tmp_path: Path) -> None:
    lines = shell_lines(block_with(TEAMS, "sh", "llmplat teams create ide"))
    script = []
    for line in lines:
        # `<key id>`: the id of the key the block created (a key is llmp_<key id>_<secret>).
        script.append(line.replace("<key id>", '"$KEY_ID"'))
        if line.startswith("KEY=$("):
            script.append('KEY_ID=$(printf %s "$KEY" | cut -d_ -f2)')
    home = tmp_path / "home"
    _bash("\n".join(script), tmp_path / "work", _env(LLMPLAT_HOME=str(home)))

    store = yaml.safe_load((home / "teams.yaml").read_text())
    ci, ide = store["teams"]["ci"], store["teams"]["ide"]
    assert ci["priority_class"] == "batch" and ci["models"] == [MODEL]
    assert ci["max_tokens_cap"] == 512 and ci["max_choices"] == 4
    assert ci["limits"]["tokens_per_day"] == 8_000_000
    assert ci["limits"]["concurrent_requests"] == 16
    assert ide["priority_class"] == "interactive" and ide["prefix_cache_group"] == "code"
    keys = sorted(store["keys"].values(), key=lambda k: k["created_at"])
    assert [(k["team"], k["revoked"]) for k in keys] == [("ci", True), ("ci", False)]
    assert all(k["limits"]["requests_per_minute"] == 60 and k["expires_at"] for k in keys)


def test_plan_and_deploy_values_commands(tmp_path: Path) -> None:
    lines = [
        line
        for line in shell_lines(block_with(DEPLOYMENT, "sh", "llmplat deploy values"))
        if line.startswith("llmplat ")
    ]
    # `deploy status` reads a RayService from a cluster; the chart tests cover `helm install`.
    runnable = [line for line in lines if not line.startswith("llmplat deploy status")]
    assert len(runnable) == len(lines) - 1 == 2, lines
    work = tmp_path / "work"
    out = _bash("\n".join(runnable), work, _env(LLMPLAT_HOME=str(tmp_path / "home")))
    assert "fits" in out
    layout = yaml.safe_load((work / "layout.yaml").read_text())
    assert layout["layout"]["models"], layout


def test_build_tiny_command(tmp_path: Path) -> None:
    (line,) = [
        line
        for line in shell_lines(block_with(DEVELOPMENT, "sh", "llmplat model build-tiny"))
        if line.startswith("llmplat model build-tiny")
    ]
    command = line.replace("[--out DIR]", "--out tiny")
    _bash(command, tmp_path / "work", _env(LLMPLAT_HOME=str(tmp_path / "home")))
    built = tmp_path / "work" / "tiny"
    assert (built / "config.json").is_file() and (built / "tokenizer.model.v3").is_file()


@pytest.mark.parametrize("page", FIRST_REQUEST_PAGES, ids=lambda p: p.name)
def test_curl_request(live, tmp_path: Path, page: Path) -> None:
    """The first request with curl, the two OPENAI_ variables exported as the page says."""
    block = block_with(page, "sh", "curl ")
    env = _env(OPENAI_BASE_URL=live.base_url, OPENAI_API_KEY=live.key)
    out = _bash(block, tmp_path / "work", env, timeout=120)
    answer = json.loads(out)
    assert "choices" in answer, answer  # an error body is JSON too
    assert answer["object"] == "chat.completion" and answer["model"] == MODEL, answer
    assert answer["choices"][0]["message"]["role"] == "assistant", answer
    assert answer["usage"]["completion_tokens"] > 0, answer


@pytest.mark.parametrize("page", FIRST_REQUEST_PAGES, ids=lambda p: p.name)
def test_python_snippet_with_the_openai_client(live, tmp_path: Path, page: Path) -> None:
    snippet = block_with(page, "python", "from openai import OpenAI")
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = _env(OPENAI_BASE_URL=live.base_url, OPENAI_API_KEY=live.key)
    proc = subprocess.run(
        [str(VENV_BIN / "python"), str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_status_command(live, tmp_path: Path) -> None:
    """`llmplat status` as docs/operations.md shows it: the platform's port from the
    environment (as `make serve` sets it), the admin token exported as the docs say."""
    port = live.url.rsplit(":", 1)[1]
    env = _env(LLMPLAT_PORT=port, LLMPLAT_ADMIN_TOKEN=live.admin_token)
    out = _bash("llmplat status", tmp_path / "work", env, timeout=60)
    assert out.splitlines()[0] == "platform: ready", out
    assert any(line.startswith(MODEL) for line in out.splitlines())
    assert "gateway replicas running: 1" in out.splitlines()  # from /admin/status
