"""One JSON line per request, never text or secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path

import openai
import pytest

from llmplat.auth.admin import KeyAdmin
from llmplat.observability.audit import AuditLog
from llmplat.settings import Settings
from support import MODEL, auth

PROMPT = "the secret plan is tangerine"


async def test_one_line_per_request_without_text_or_secrets(
    http, key_store, gateway, audit_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = KeyAdmin(key_store)
    admin.create_team({"name": "audited"})
    issued = admin.create_key("audited")
    authenticator = gateway.state.gateway.authenticator
    for _ in range(100):  # the replica's store watch picks the new key up
        if issued.record.key_id in authenticator.registry.keys:
            break
        await asyncio.sleep(0.05)
    client = openai.AsyncOpenAI(
        api_key=issued.plaintext, base_url="http://gw/v1", http_client=http, max_retries=0
    )
    answer = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=3
    )
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="nope", prompt=PROMPT)
    await http.post("/v1/completions", json={"model": MODEL}, headers=auth("llmp_bad_" + "z" * 40))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=4, stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.completions.create(
        model=MODEL, prompt=f"def {PROMPT.split()[-1]}():", suffix=PROMPT, max_tokens=2
    )

    lines: list[dict] = []
    for _ in range(100):  # the sink writes from a background thread
        text = audit_path.read_text() if audit_path.exists() else ""
        lines = [json.loads(x) for x in text.splitlines()]
        lines = [x for x in lines if x["kind"] == "request"]
        if len(lines) >= 5:
            break
        await asyncio.sleep(0.02)
    assert [(x["team"], x["status"], x["stream"]) for x in lines] == [
        ("audited", 200, False),
        ("audited", 404, False),
        (None, 401, False),
        ("audited", 200, True),
        ("audited", 200, False),
    ]
    ok = lines[0]
    assert ok["key_id"] == issued.record.key_id and ok["model"] == MODEL
    assert ok["prompt_tokens"] > 0 and ok["completion_tokens"] == 3
    assert ok["latency_ms"] > 0 and ok["client"] == "127.0.0.1"
    streamed_line = lines[3]
    assert streamed_line["completion_tokens"] == 4 and streamed
    assert 0 < streamed_line["ttft_ms"] <= streamed_line["latency_ms"]
    assert lines[4]["endpoint"] == "completions" and lines[4]["prompt_tokens"] > 10  # FIM
    assert ok["bytes"] == len(answer.content) > 0  # the body the client received
    assert set(ok) == {
        "time", "kind", "request_id", "team", "key_id", "model", "endpoint", "stream", "status",
        "error_code", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "client",
        "bytes",
    }  # fmt: skip
    assert lines[1]["error_code"] == "model_not_found"
    everything = audit_path.read_text() + caplog.text
    assert "tangerine" not in everything
    secret = issued.plaintext.split("_", 2)[2]
    assert secret not in everything and issued.plaintext not in everything


def test_audit_file_is_owner_only(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    old.write_text("")
    old.chmod(0o644)  # as an older version left it
    for path in (tmp_path / "new" / "audit.log", old):
        log = AuditLog(path)
        log.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("sink", ["-", "none"])
async def test_audit_sink_setting_stdout_or_none(
    sink: str, replica, monkeypatch, capfd, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`LLMPLAT_AUDIT__SINK=-` writes the lines to stdout, `none` nowhere (no file either)."""
    home = tmp_path_factory.mktemp("home")
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)  # a sink taken as a relative path would land here
    monkeypatch.setenv("LLMPLAT_HOME", str(home))
    monkeypatch.setenv("LLMPLAT_AUDIT__SINK", sink)
    async with replica(audit_sink=Settings().audit_sink) as (_, h):
        capfd.readouterr()
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2}
        assert (await h.post("/v1/completions", json=body, headers=auth())).status_code == 200
    out = capfd.readouterr().out  # the app's shutdown flushed the writer
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    if sink == "-":
        assert [(x["team"], x["model"], x["status"]) for x in lines] == [("dev", MODEL, 200)]
    else:
        assert lines == []
    assert "tangerine" not in out
    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []  # no file anywhere
