"""deploy/ci/llm_check.py, the example CI step, against a live gateway with a CI team's key."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from llmplat.auth.admin import KeyAdmin
from llmplat.auth.file_store import FileKeyStore
from support import MODEL
from support.waiting import eventually

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "ci" / "llm_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("llm_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def ci_key(gateway, key_store: FileKeyStore, **team_fields) -> str:
    admin = KeyAdmin(key_store)
    admin.create_team({"name": "ci", "priority_class": "batch", **team_fields})
    issued = admin.create_key("ci", name="github-actions")
    registry = gateway.state.gateway.authenticator
    for _ in range(100):  # the gateway follows the key store
        if issued.record.key_id in registry.registry.keys:
            return issued.plaintext
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never saw the new key")


async def test_ci_step_answers_with_the_ci_teams_key(
    gateway, key_store, live_url, records, monkeypatch, capsys
) -> None:
    key = await ci_key(gateway, key_store)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{live_url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", key)
    script = load_script()
    argv = ["--model", MODEL, "--system", "Review.", "--max-tokens", "8", "what changed?"]
    assert await asyncio.to_thread(script.main, argv) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "billed to the CI team" in err
    # The record is written once the answer has been handed over, so it may follow the reply.
    await eventually(lambda: len(records) > 0, what="the request's record")
    assert [r.team for r in records] == ["ci"] and records[0].status == 200


async def test_ci_step_fails_with_the_gateways_message(
    gateway, key_store, live_url, monkeypatch, capsys
) -> None:
    key = await ci_key(gateway, key_store, models=["some-other-model"])
    monkeypatch.setenv("OPENAI_BASE_URL", f"{live_url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", key)
    script = load_script()
    assert await asyncio.to_thread(script.main, ["--model", MODEL, "--retries", "0", "hi"]) == 1
    assert "llmplat answered 403" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["github-actions.yml"])
def test_pipeline_example_calls_the_step_with_the_ci_key(name: str) -> None:
    import yaml

    workflow = yaml.safe_load((SCRIPT.parent / name).read_text())
    (job,) = workflow["jobs"].values()
    step = next(s for s in job["steps"] if "llm_check.py" in s.get("run", ""))
    assert step["env"]["OPENAI_API_KEY"] == "${{ secrets.LLMPLAT_CI_KEY }}"
    assert "--model mixtral-8x22b-instruct" in step["run"]
