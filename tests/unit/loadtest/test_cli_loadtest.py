"""`llmplat loadtest` as users run it: exit codes, printed summary, keys kept secret."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from llmplat.cli import main
from support import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _llmplat(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmplat",
        "loadtest",
        *args,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode(), err.decode()


def test_bad_scenario_exits_2_naming_file_and_field(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nteams: {chat: {user: chat}}\nphases: [{name: a, users: {chat: 1}}]\n"
    )
    assert main(["loadtest", "--scenario", str(bad), "--host", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "phases.0.duration_s" in err


def test_without_keys_or_admin_token_exits_3(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.delenv("LLMPLAT_ADMIN_TOKEN", raising=False)
    args = ["loadtest", "--scenario", "smoke", "--host", "http://127.0.0.1:9"]
    assert main([*args, "--out", str(tmp_path)]) == 3
    assert "LLMPLAT_LOADTEST__KEYS__CHAT" in capsys.readouterr().err


async def test_run_passes_keeps_keys_secret_and_cleans_up(paced_url: str, tmp_path: Path):
    async with httpx.AsyncClient(base_url=paced_url, headers=ADMIN) as admin:
        await admin.post("/admin/teams", json={"name": "editors"})
        given = (await admin.post("/admin/teams/editors/keys", json={})).json()
        out = tmp_path / "out"
        rc, stdout, stderr = await _llmplat(
            "--scenario", "smoke", "--host", f"{paced_url}/v1", "--duration", "6s",
            "--users", "3", "--out", str(out),
            env={"LLMPLAT_ADMIN_TOKEN": ADMIN_TOKEN, "LLMPLAT_LOADTEST__KEYS__IDE": given["key"]},
        )  # fmt: skip
        assert rc == 0, stdout + stderr
        assert "verdict: PASS" in stdout and f"report: {out / 'report.html'}" in stdout
        assert "phase run (4 s): chat 1, ide 1, ci 1 users" in stderr  # warm-up 2 s of 6
        # the given key was used (its team is named in the report) and left alone
        assert "editors" in (out / "report.html").read_text()
        keys = (await admin.get("/admin/keys")).json()["data"]
        assert [k["revoked"] for k in keys if k["team"] == "editors"] == [False]
        # the runner's own teams and keys are gone
        teams = {t["name"] for t in (await admin.get("/admin/teams")).json()["data"]}
        assert teams == {"editors"}
        assert not [k for k in keys if k["team"] != "editors" and not k["revoked"]]
    for name in ("report.html", "summary.json", "samples.csv", "locust_stats.csv", "run.json"):
        assert (out / name).is_file(), name
    secret = given["key"].split("_", 2)[2]
    leaked = [str(p) for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked and secret not in stdout + stderr and ADMIN_TOKEN not in stdout + stderr


async def test_default_output_folder_is_relative_to_where_it_runs(
    paced_url: str, tmp_path: Path
) -> None:
    """As loadtests/README.md shows it: no --out, from the user's directory."""
    async with httpx.AsyncClient(base_url=paced_url, headers=ADMIN) as admin:
        await admin.post("/admin/teams", json={"name": "editors"})
        given = (await admin.post("/admin/teams/editors/keys", json={})).json()
    rc, stdout, stderr = await _llmplat(
        "--scenario", "smoke", "--host", f"{paced_url}/v1", "--duration", "4s", "--users", "2",
        env={"LLMPLAT_ADMIN_TOKEN": ADMIN_TOKEN, "LLMPLAT_LOADTEST__KEYS__IDE": given["key"]},
        cwd=tmp_path,
    )  # fmt: skip
    assert rc in (0, 1), stdout + stderr  # a verdict either way, not a crash (exit 3)
    (run,) = (tmp_path / "loadtest-results").iterdir()
    assert run.name.startswith("smoke-")
    for name in ("report.html", "summary.json", "run.json"):
        assert (run / name).is_file(), name
    assert f"report: {run / 'report.html'}" in stdout


async def test_failed_objective_exits_1(paced_url: str, tmp_path: Path) -> None:
    scenario = {
        "name": "too-strict",
        "teams": {"ide": {"user": "ide", "think_time_s": [0, 0.2]}},
        "phases": [{"name": "only", "duration_s": 4, "users": {"ide": 1}}],
        "objectives": {"ttft_p95_ms": {"ide": 0.5}},  # half a millisecond: impossible
    }
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(scenario))
    rc, stdout, stderr = await _llmplat(
        "--scenario", str(path), "--host", paced_url, "--out", str(tmp_path / "out"),
        env={"LLMPLAT_ADMIN_TOKEN": ADMIN_TOKEN},
    )  # fmt: skip
    assert rc == 1, stdout + stderr
    assert (
        "FAIL  ide   TTFT p95 (measured phases)" in stdout and "verdict: FAIL (1 checks)" in stdout
    )


@pytest.mark.parametrize("bad", ["chat", "=k", "chat="])
def test_key_flag_needs_team_and_key(bad: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["loadtest", "--scenario", "smoke", "--key", bad])
    assert "TEAM=KEY" in capsys.readouterr().err
