"""The file key store as docs/teams-and-quotas.md promises it: owner-only, replaced atomically, and locked,
so CLI processes can write at once while a gateway reads."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmplat.auth.file_store import FileKeyStore
from llmplat.auth.keys import mint_key
from llmplat.auth.store import StoreError
from llmplat.config.teams import ApiKeyRecord, Team

pytestmark = pytest.mark.timeout(120)

WRITERS = 4
KEYS_EACH = 30


def _new_key(team: str) -> ApiKeyRecord:
    minted = mint_key()
    return ApiKeyRecord(key_id=minted.key_id, team=team, secret_sha256=minted.secret_sha256)


WRITER = """
import sys
from pathlib import Path
from llmplat.auth.file_store import FileKeyStore
from llmplat.auth.keys import mint_key
from llmplat.config.teams import ApiKeyRecord

path, team, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = FileKeyStore(path)
for _ in range(count):
    minted = mint_key()
    key = ApiKeyRecord(key_id=minted.key_id, team=team, secret_sha256=minted.secret_sha256)
    store.put_key(key, create=True)
"""
"""One CLI process: opens its own store and adds keys one write at a time."""


def test_the_file_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "teams.yaml"
    old = os.umask(0)
    try:
        store = FileKeyStore(path)
        store.put_team(Team(name="ci"), create=True)
        store.put_key(_new_key("ci"), create=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Nothing left behind by the atomic replace (no temp files with key hashes in them).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teams.yaml", "teams.yaml.lock"]


def test_concurrent_writers_lose_nothing_and_a_reader_never_sees_a_torn_file(
    tmp_path: Path,
) -> None:
    """Writers in separate processes; the reader is this process, loading as a gateway does.
    Without the lock two writers would read the same file and one's key would be lost;
    written in place, the reader would see a truncated file or fewer keys than before."""
    path = tmp_path / "teams.yaml"
    store = FileKeyStore(path)
    for i in range(WRITERS):
        store.put_team(Team(name=f"w{i}"), create=True)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{i}", str(KEYS_EACH)],
            stderr=subprocess.PIPE,
        )
        for i in range(WRITERS)
    ]
    seen: list[int] = []
    torn: list[str] = []
    while any(w.poll() is None for w in writers):
        try:
            seen.append(len(store.load().keys))
        except StoreError as exc:
            torn.append(str(exc))
    for w in writers:
        assert w.wait() == 0, w.stderr.read().decode() if w.stderr else ""
    final = store.load()
    assert not torn
    assert len(seen) > 10  # the reader really read while the writers wrote
    assert seen == sorted(seen)  # never a key fewer than an earlier read
    assert {t: sum(k.team == t for k in final.keys.values()) for t in final.teams} == {
        f"w{i}": KEYS_EACH for i in range(WRITERS)
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
