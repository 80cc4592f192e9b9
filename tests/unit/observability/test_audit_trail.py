"""The audit trail of access: every admin API call and CLI teams/keys command leaves one
``admin`` line, every refused credential one ``auth_failure`` line; never a secret."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from llmplat.auth.keys import parse_key
from llmplat.cli import main
from llmplat.cli.admin import os_user
from support import ADMIN_TOKEN, DEV_KEY, MODEL, auth
from support.audit import audit_lines, wait_audit_lines

ADMIN = auth(ADMIN_TOKEN)
ADMIN_FIELDS = {
    "time", "kind", "request_id", "actor", "client", "action", "team", "key_id", "new_key_id",
    "ok", "status", "error_code",
}  # fmt: skip
FAILURE_FIELDS = {"time", "kind", "request_id", "route", "client", "reason", "key_id", "status"}


async def test_every_admin_api_call_leaves_one_line(http: httpx.AsyncClient, audit_path) -> None:
    calls = [
        ("post", "/admin/teams", {"name": "red"}, 201),
        ("post", "/admin/teams", {"name": "red"}, 409),
        ("get", "/admin/teams", None, 200),
        ("get", "/admin/teams/red", None, 200),
        ("patch", "/admin/teams/red", {"limits": {"tokens_per_day": 10}}, 200),
        ("get", "/admin/teams/red/usage", None, 200),
        ("post", "/admin/teams/red/keys", {"name": "ci"}, 201),
        ("get", "/admin/keys", None, 200),
        ("get", "/admin/status", None, 404),
    ]
    secrets: list[str] = []
    for method, path, body, status in calls:
        r = await http.request(method, path, json=body, headers=ADMIN)
        assert r.status_code == status, (path, r.text)
        if "key" in r.json():
            secrets.append(r.json()["key"])
    key_id = parse_key(secrets[0])[0]
    rotated = await http.post(f"/admin/keys/{key_id}/rotate", headers=ADMIN)
    new_id = rotated.json()["key_id"]
    secrets.append(rotated.json()["key"])
    assert (await http.post(f"/admin/keys/{new_id}/revoke", headers=ADMIN)).status_code == 200
    assert (await http.delete("/admin/teams/red", headers=ADMIN)).status_code == 200

    lines = await wait_audit_lines(audit_path, "admin", 13)
    assert all(set(x) == ADMIN_FIELDS for x in lines)
    assert {(x["actor"], x["client"]) for x in lines} == {("admin-token", "127.0.0.1")}
    summary = [(x["action"], x["team"], x["key_id"], x["new_key_id"], x["status"]) for x in lines]
    assert summary == [
        ("team.create", "red", None, None, 201),
        ("team.create", "red", None, None, 409),
        ("team.list", None, None, None, 200),
        ("team.get", "red", None, None, 200),
        ("team.update", "red", None, None, 200),
        ("team.usage", "red", None, None, 200),
        ("key.create", "red", key_id, None, 201),
        ("key.list", None, None, None, 200),
        ("status.read", None, None, None, 404),
        ("key.rotate", "red", key_id, new_id, 201),
        ("key.revoke", "red", new_id, None, 200),
        ("team.delete", "red", None, None, 200),
    ]
    assert [(x["ok"], x["error_code"]) for x in lines[:2]] == [(True, None), (False, "conflict")]
    assert audit_lines(audit_path, "auth_failure") == []  # the admin token was right each time
    text = audit_path.read_text()
    for secret in [ADMIN_TOKEN, *secrets, *(s.split("_", 2)[2] for s in secrets)]:
        assert secret not in text


ROUTES = [
    ("get", "/v1/models"),
    ("get", f"/v1/models/{MODEL}"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
    ("get", "/v1/usage"),
    ("get", "/v1/teams/dev/usage"),
    ("get", "/admin/teams"),
    ("post", "/admin/teams"),
    ("get", "/admin/teams/dev"),
    ("patch", "/admin/teams/dev"),
    ("delete", "/admin/teams/dev"),
    ("get", "/admin/teams/dev/usage"),
    ("get", "/admin/status"),
    ("get", "/admin/keys"),
    ("post", "/admin/teams/dev/keys"),
    ("post", "/admin/keys/abc/revoke"),
    ("post", "/admin/keys/abc/rotate"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_failed_login_on_every_route_leaves_one_line(
    http: httpx.AsyncClient, audit_path, key_store, method: str, path: str
) -> None:
    admin_route = path.startswith("/admin/")
    # A team key on /admin, a well-formed key with a wrong secret elsewhere.
    wrong = DEV_KEY if admin_route else "llmp_0a1b2c3d4e5f_" + "w" * 43
    body = {"model": MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    r = await http.request(method, path, json=body, headers=auth(wrong) | {"x-request-id": "r-1"})
    assert r.status_code == (403 if admin_route else 401), r.text
    assert (await http.request(method, path, json=body)).status_code == 401  # no credential
    lines = await wait_audit_lines(audit_path, "auth_failure", 2)
    assert len(lines) == 2 and all(set(x) == FAILURE_FIELDS for x in lines)
    route = f"{method.upper()} {path}"
    assert [(x["route"], x["client"], x["status"]) for x in lines] == [
        (route, "127.0.0.1", 403)
    ] * (admin_route) + [(route, "127.0.0.1", 401)] * (2 - admin_route)
    reasons = [x["reason"] for x in lines]
    if admin_route:
        assert reasons == ["admin_token_required", "missing_admin_token"]
    else:
        assert reasons == ["invalid_api_key", "missing_api_key"]
    assert lines[0]["request_id"] == "r-1" and lines[0]["key_id"] is None  # unknown key id
    assert audit_lines(audit_path, "admin") == []
    text = audit_path.read_text()
    assert wrong not in text and wrong.split("_")[-1] not in text


async def test_known_key_ids_are_named_and_other_teams_probes_audited(
    gateway, http: httpx.AsyncClient, audit_path
) -> None:
    created = await http.post("/admin/teams", json={"name": "blue"}, headers=ADMIN)
    assert created.status_code == 201
    key = (await http.post("/admin/teams/blue/keys", json={}, headers=ADMIN)).json()["key"]
    key_id = parse_key(key)[0]
    authenticator = gateway.state.gateway.authenticator
    for _ in range(100):  # the replica's store watch picks the key up, then its revocation
        if key_id in authenticator.registry.keys:
            break
        await asyncio.sleep(0.05)
    assert (await http.post(f"/admin/keys/{key_id}/revoke", headers=ADMIN)).status_code == 200
    for _ in range(100):
        if authenticator.registry.keys[key_id].revoked:
            break
        await asyncio.sleep(0.05)
    assert (await http.get("/v1/usage", headers=auth(key))).status_code == 401
    other = await http.get("/v1/teams/blue/usage", headers=auth())
    assert other.status_code == 403
    lines = await wait_audit_lines(audit_path, "auth_failure", 2)
    probes = [(x["reason"], x["key_id"], x["status"]) for x in lines]
    assert probes == [("revoked_api_key", key_id, 401), ("other_team", "dev", 403)]
    assert key.split("_", 2)[2] not in audit_path.read_text()


def test_every_cli_teams_and_keys_command_leaves_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    sink = tmp_path / "audit.log"

    def run(*argv: str) -> str:
        before = len(audit_lines(sink))
        main(list(argv))
        assert len(audit_lines(sink)) == before + 1, argv
        return capsys.readouterr().out.strip()

    run("teams", "create", "ci", "--rpm", "10")
    run("teams", "create", "ci")  # a conflict
    run("teams", "update", "ci", "--tpm", "500")
    run("teams", "list")
    key = run("keys", "create", "--team", "ci", "--name", "gh")
    key_id = parse_key(key)[0]
    run("keys", "list", "--team", "ci")
    new_key = run("keys", "rotate", key_id)
    new_id = parse_key(new_key)[0]
    run("keys", "revoke", new_id)
    run("keys", "revoke", "nosuchkey")
    run("teams", "delete", "ci")

    lines = audit_lines(sink)
    assert all(set(x) == ADMIN_FIELDS for x in lines)
    assert {(x["kind"], x["actor"], x["client"], x["status"]) for x in lines} == {
        ("admin", os_user(), "cli", None)
    }
    summary = [
        (x["action"], x["team"], x["key_id"], x["new_key_id"], x["ok"], x["error_code"])
        for x in lines
    ]
    assert summary == [
        ("team.create", "ci", None, None, True, None),
        ("team.create", "ci", None, None, False, "conflict"),
        ("team.update", "ci", None, None, True, None),
        ("team.list", None, None, None, True, None),
        ("key.create", "ci", key_id, None, True, None),
        ("key.list", "ci", None, None, True, None),
        ("key.rotate", "ci", key_id, new_id, True, None),
        ("key.revoke", "ci", new_id, None, True, None),
        ("key.revoke", None, "nosuchkey", None, False, "not_found"),
        ("team.delete", "ci", None, None, True, None),
    ]
    text = sink.read_text()
    for secret in (key, new_key, key.split("_", 2)[2], new_key.split("_", 2)[2]):
        assert secret not in text


def test_cli_audit_to_stderr_keeps_stdout_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    monkeypatch.setenv("LLMPLAT_AUDIT__SINK", "-")
    assert main(["teams", "create", "ci"]) == 0
    capsys.readouterr()
    assert main(["keys", "create", "--team", "ci"]) == 0
    out, err = capsys.readouterr()
    assert parse_key(out.strip()) is not None and out.count("\n") == 1
    assert '"action":"key.create"' in err and out.strip() not in err


def test_cli_that_cannot_audit_changes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LLMPLAT_HOME", str(tmp_path))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LLMPLAT_AUDIT__SINK", str(blocker / "audit.log"))
    assert main(["teams", "create", "ci"]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert (
        not (tmp_path / "teams.yaml").exists() or "ci" not in (tmp_path / "teams.yaml").read_text()
    )
