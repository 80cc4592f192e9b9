"""One contract, every KeyStore: the file store and the Kubernetes store behave alike."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmplat.auth.file_store import FileKeyStore
from llmplat.auth.keys import mint_key
from llmplat.auth.kube_store import KubernetesKeyStore
from llmplat.auth.store import ConflictError, KeyStore, NotFoundError
from llmplat.config.teams import ApiKeyRecord, Limits, Registry, Team
from support.kube_emulator import running_kube_emulator

pytestmark = pytest.mark.timeout(60)

StoreFactory = Callable[[], KeyStore]
"""Each call opens another instance on the same backing data (a second process, say)."""


@pytest.fixture(params=["file", "kubernetes"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param == "file":
        path = tmp_path / "keys.yaml"
        yield lambda: FileKeyStore(path, poll_interval_s=0.1)
    else:
        with running_kube_emulator() as kube:
            yield lambda: KubernetesKeyStore("llmplat", kube.core_v1())


@pytest.fixture
def store(open_store: StoreFactory) -> KeyStore:
    return open_store()


def key_for(team: str, key_id: str | None = None, **fields: object) -> ApiKeyRecord:
    new = mint_key(key_id)
    return ApiKeyRecord(key_id=new.key_id, team=team, secret_sha256=new.secret_sha256, **fields)


def test_empty(store: KeyStore) -> None:
    assert store.load() == Registry()


def test_create_and_replace_teams(store: KeyStore) -> None:
    ide = Team(name="ide", limits=Limits(concurrent_requests=4))
    store.put_team(ide, create=True)
    store.put_team(Team(name="ci", priority_class="batch"), create=True)
    assert store.load().teams["ide"] == ide
    assert set(store.load().teams) == {"ci", "ide"}

    with pytest.raises(ConflictError, match="team 'ide' already exists"):
        store.put_team(Team(name="ide"), create=True)
    assert store.load().teams["ide"] == ide  # unchanged by the refused create

    capped = ide.model_copy(update={"max_tokens_cap": 256})
    store.put_team(capped, create=False)
    assert store.load().teams["ide"] == capped
    with pytest.raises(NotFoundError, match="no team 'nope'"):
        store.put_team(Team(name="nope"), create=False)
    assert "nope" not in store.load().teams


def test_create_and_replace_keys(store: KeyStore) -> None:
    store.put_team(Team(name="ide"), create=True)
    key = key_for("ide", name="laptop")
    store.put_key(key, create=True)
    assert store.load().keys == {key.key_id: key}

    with pytest.raises(ConflictError, match=f"key '{key.key_id}' already exists"):
        store.put_key(key.model_copy(update={"name": "other"}), create=True)
    assert store.load().keys[key.key_id] == key

    revoked = key.model_copy(update={"revoked": True})
    store.put_key(revoked, create=False)
    assert store.load().keys[key.key_id] == revoked
    with pytest.raises(NotFoundError, match="no key 'abcd0000'"):
        store.put_key(key_for("ide", "abcd0000"), create=False)


def test_a_key_needs_its_team(store: KeyStore) -> None:
    with pytest.raises(NotFoundError, match="no team 'ghost'"):
        store.put_key(key_for("ghost"), create=True)
    assert store.load() == Registry()


def test_delete_team_takes_its_keys(store: KeyStore) -> None:
    store.put_team(Team(name="ide"), create=True)
    store.put_team(Team(name="ci"), create=True)
    gone = [key_for("ide"), key_for("ide")]
    kept = key_for("ci")
    for key in [*gone, kept]:
        store.put_key(key, create=True)

    store.delete_team("ide")
    registry = store.load()
    assert set(registry.teams) == {"ci"}
    assert registry.keys == {kept.key_id: kept}

    with pytest.raises(NotFoundError, match="no team 'ide'"):
        store.delete_team("ide")
    store.put_team(Team(name="ide"), create=True)  # the name is free again, with no old keys
    assert set(store.load().keys) == {kept.key_id}


def test_writes_are_seen_by_another_instance(open_store: StoreFactory) -> None:
    writer, reader = open_store(), open_store()
    writer.put_team(Team(name="ide"), create=True)
    assert set(reader.load().teams) == {"ide"}
    with pytest.raises(ConflictError):
        reader.put_team(Team(name="ide"), create=True)


def test_watch_reports_at_start_then_changes_then_stops(open_store: StoreFactory) -> None:
    admin, gateway = open_store(), open_store()
    admin.put_team(Team(name="ide"), create=True)
    key = key_for("ide")
    admin.put_key(key, create=True)

    snapshots: list[Registry] = []
    changed = threading.Condition()
    stop = threading.Event()

    def on_change(registry: Registry) -> None:
        with changed:
            snapshots.append(registry)
            changed.notify_all()

    def wait_for(predicate: Callable[[Registry], bool], timeout: float = 15.0) -> float:
        start = time.monotonic()
        with changed:
            ok = changed.wait_for(lambda: bool(snapshots) and predicate(snapshots[-1]), timeout)
        assert ok, f"not seen within {timeout}s: {snapshots[-1:] or 'no snapshot'}"
        return time.monotonic() - start

    thread = threading.Thread(target=gateway.watch, args=(on_change, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda r: key.key_id in r.keys and not r.keys[key.key_id].revoked)
        assert snapshots[0].keys == {key.key_id: key}  # the first call is the full snapshot

        admin.put_key(key.model_copy(update={"revoked": True}), create=False)
        # docs/teams-and-quotas.md: a revocation reaches every replica within a second or two (the wait
        # itself allows 15 s, so a slow watch fails here, not in the helper).
        assert wait_for(lambda r: r.keys[key.key_id].revoked) < 2.0

        admin.delete_team("ide")
        wait_for(lambda r: r == Registry())
    finally:
        stopped_at = time.monotonic()
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 3
