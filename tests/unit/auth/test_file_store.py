"""The file key store as the README promises it: owner-only, replaced atomically, and locked,
so CLI processes can write at once while a gateway reads."""

from __future__ import annotations

import multiprocessing
import os
import stat
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


def _write_keys(path: str, team: str, count: int) -> None:
    """One CLI process: opens its own store and adds keys one write at a time."""
    store = FileKeyStore(Path(path))
    for _ in range(count):
        store.put_key(_new_key(team), create=True)


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
    ctx = multiprocessing.get_context("fork")
    writers = [
        ctx.Process(target=_write_keys, args=(str(path), f"w{i}", KEYS_EACH))
        for i in range(WRITERS)
    ]
    for w in writers:
        w.start()
    seen: list[int] = []
    torn: list[str] = []
    while any(w.is_alive() for w in writers):
        try:
            seen.append(len(store.load().keys))
        except StoreError as exc:
            torn.append(str(exc))
    for w in writers:
        w.join()
        assert w.exitcode == 0
    final = store.load()
    assert not torn
    assert len(seen) > 10  # the reader really read while the writers wrote
    assert seen == sorted(seen)  # never a key fewer than an earlier read
    assert {t: sum(k.team == t for k in final.keys.values()) for t in final.teams} == {
        f"w{i}": KEYS_EACH for i in range(WRITERS)
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
