"""KubernetesKeyStore against an in-memory Kubernetes API (kmock's emulator on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from llmplat.auth.keys import mint_key
from llmplat.auth.kube_store import KubernetesKeyStore
from llmplat.auth.store import ConflictError, NotFoundError, StoreError
from llmplat.config.teams import ApiKeyRecord, Registry, Team
from llmplat.settings import Settings
from support.kube_emulator import EmulatorHandle, running_kube_emulator, write_kubeconfig

NS = "llmplat"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kube() -> Iterator[EmulatorHandle]:
    with running_kube_emulator() as handle:
        yield handle


@pytest.fixture
def store(kube: EmulatorHandle) -> KubernetesKeyStore:
    return KubernetesKeyStore(NS, kube.core_v1())


def key_for(team: str, key_id: str | None = None, **fields: object) -> ApiKeyRecord:
    new = mint_key(key_id)
    return ApiKeyRecord(key_id=new.key_id, team=team, secret_sha256=new.secret_sha256, **fields)


def decoded(secret: dict) -> dict:
    return json.loads(base64.b64decode(secret["data"]["record.json"]))


OURS = {"app.kubernetes.io/managed-by": "llmplat"}


def raw_secret(name: str, labels: dict[str, str], record: bytes | None) -> dict:
    """A Secret as the API server stores it; ``record`` None: no ``record.json`` at all."""
    data = {} if record is None else {"record.json": base64.b64encode(record).decode()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "data": data,
    }


def create_raw(kube: EmulatorHandle, raw: dict) -> None:
    """Create ``raw`` through the API (so watchers see an ADDED event)."""
    meta = raw["metadata"]
    kube.core_v1().create_namespaced_secret(
        NS,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=meta["name"], labels=meta["labels"]),
            data=raw["data"],
        ),
    )


class Watcher:
    """Runs ``store.watch`` in a thread and records every snapshot."""

    def __init__(self, store: KubernetesKeyStore) -> None:
        self.store = store
        self.stop = threading.Event()
        self.snapshots: list[Registry] = []
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.store.watch(self._on_change, self.stop)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _on_change(self, registry: Registry) -> None:
        with self.changed:
            self.snapshots.append(registry)
            self.changed.notify_all()

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def wait_for(self, predicate, timeout: float = 5.0) -> Registry:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for snapshot in reversed(self.snapshots):
                    if predicate(snapshot):
                        return snapshot
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching snapshot in {timeout}s: {self.snapshots}")
                self.changed.wait(left)


# Round trips, conflicts and missing records are the store contract's
# (test_store_contract.py runs it on this store too); here only what is Kubernetes' own.


def test_errors_name_the_namespace(store: KubernetesKeyStore) -> None:
    store.put_team(Team(name="ide"), create=True)
    with pytest.raises(ConflictError, match=f"team 'ide' already exists.*namespace '{NS}'"):
        store.put_team(Team(name="ide"), create=True)
    with pytest.raises(NotFoundError, match=f"no team 'ci'.*namespace '{NS}'"):
        store.put_team(Team(name="ci"), create=False)


def test_key_for_missing_team_leaves_no_secret(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    with pytest.raises(NotFoundError, match="no team 'ghost'"):
        store.put_key(key_for("ghost"), create=True)
    assert kube.objects(NS) == {}


def test_names_labels_and_data(kube: EmulatorHandle, store: KubernetesKeyStore) -> None:
    store.put_team(Team(name="ci-main"), create=True)
    new = mint_key()
    key = ApiKeyRecord(key_id=new.key_id, team="ci-main", secret_sha256=new.secret_sha256)
    store.put_key(key, create=True)

    api = kube.core_v1()
    team_secret = api.read_namespaced_secret("llmplat-team-ci-main", NS)
    assert team_secret.metadata.labels == {
        "app.kubernetes.io/managed-by": "llmplat",
        "llmplat.io/kind": "team",
    }
    key_secret = api.read_namespaced_secret(f"llmplat-key-{new.key_id}", NS)
    assert key_secret.metadata.labels == {
        "app.kubernetes.io/managed-by": "llmplat",
        "llmplat.io/kind": "key",
        "llmplat.io/team": "ci-main",
    }
    assert key_secret.type == "Opaque"
    assert set(key_secret.data) == {"record.json"}

    raw = kube.objects(NS)
    assert set(raw) == {"llmplat-team-ci-main", f"llmplat-key-{new.key_id}"}
    assert {(r["apiVersion"], r["kind"]) for r in raw.values()} == {("v1", "Secret")}
    record = decoded(raw[f"llmplat-key-{new.key_id}"])
    assert record == json.loads(key.model_dump_json())
    assert record["secret_sha256"] == new.secret_sha256
    assert decoded(raw["llmplat-team-ci-main"])["name"] == "ci-main"

    # The plaintext key (or its secret part) never reached the API server, in any form.
    secret_part = new.plaintext.split("_", 2)[2]  # the secret itself may contain "_"
    for body in kube.request_bodies():
        text = body.decode()
        for form in (new.plaintext, secret_part, base64.b64encode(secret_part.encode()).decode()):
            assert form not in text
        for data in (json.loads(text).get("data") or {}).values() if text else ():
            assert secret_part not in base64.b64decode(data).decode()


def test_delete_team_deletes_its_keys(kube: EmulatorHandle, store: KubernetesKeyStore) -> None:
    for team in ("ide", "ci"):
        store.put_team(Team(name=team), create=True)
    ide_keys = [key_for("ide") for _ in range(3)]
    ci_key = key_for("ci")
    for key in [*ide_keys, ci_key]:
        store.put_key(key, create=True)

    store.delete_team("ide")

    registry = store.load()
    assert set(registry.teams) == {"ci"}
    assert registry.keys == {ci_key.key_id: ci_key}
    assert set(kube.objects(NS)) == {"llmplat-team-ci", f"llmplat-key-{ci_key.key_id}"}
    with pytest.raises(NotFoundError):
        store.delete_team("ide")


def test_delete_team_says_what_could_not_be_deleted(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    store.put_team(Team(name="ide"), create=True)
    store.put_key(key_for("ide"), create=True)
    kube.fail(f"delete /api/v1/namespaces/{NS}/secrets/llmplat-team-ide", 403, "no delete")
    with pytest.raises(StoreError) as err:
        store.delete_team("ide")
    assert str(err.value).startswith(
        f"deleting team 'ide' in namespace '{NS}': access denied (HTTP 403: no delete)."
    )


def test_load_ignores_other_secrets_and_namespaces(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    api = kube.core_v1()
    api.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="db-password"), string_data={})
    )
    other = KubernetesKeyStore("elsewhere", api)
    other.put_team(Team(name="other"), create=True)
    store.put_team(Team(name="ide"), create=True)
    assert set(store.load().teams) == {"ide"}
    assert set(other.load().teams) == {"other"}


def test_a_corrupt_secret_is_reported_by_name(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    store.put_team(Team(name="ide"), create=True)
    kube.put_object(
        NS, raw_secret("llmplat-key-bad0", {**OURS, "llmplat.io/kind": "key"}, b'{"not": "s3cr3t"}')
    )
    with pytest.raises(StoreError) as err:
        store.load()
    assert str(err.value) == (
        f"Secret 'llmplat-key-bad0' in namespace '{NS}' is not a valid llmplat key "
        "(not a valid ApiKeyRecord record); fix or delete it"
    )
    assert "s3cr3t" not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            raw_secret("llmplat-team-a", {**OURS, "llmplat.io/kind": "team"}, None),
            "is not a valid llmplat team (no 'record.json' data)",
        ),
        (
            {
                **raw_secret("llmplat-team-a", {**OURS, "llmplat.io/kind": "team"}, None),
                "data": {"record.json": "not base64!"},
            },
            "is not a valid llmplat team (not a valid Team record)",
        ),
        (
            raw_secret(
                "llmplat-team-a",
                {**OURS, "llmplat.io/kind": "team"},
                Team(name="b").model_dump_json().encode(),
            ),
            "holds the record of 'llmplat-team-b'",
        ),
    ],
    ids=["no-data", "not-base64", "someone-elses-record"],
)
def test_unreadable_secrets_say_why(
    kube: EmulatorHandle, store: KubernetesKeyStore, raw: dict, reason: str
) -> None:
    kube.put_object(NS, raw)
    with pytest.raises(StoreError) as err:
        store.load()
    assert str(err.value) == (
        f"Secret 'llmplat-team-a' in namespace '{NS}' {reason}; fix or delete it"
    )


@pytest.mark.parametrize("selectors", [True, False], ids=["server-filters", "server-ignores"])
def test_secrets_of_ours_in_name_or_label_only_are_not_records(selectors: bool) -> None:
    """The kind label and the name prefix must agree and the Secret must be managed by
    llmplat; anything else is someone else's Secret, neither loaded nor an error, also from a
    server that ignores label selectors."""

    teams = {name: Team(name=name) for name in "vwxz"}

    def record(name: str) -> bytes:
        return teams[name].model_dump_json().encode()

    with running_kube_emulator(honor_label_selectors=selectors) as kube:
        for raw in (
            raw_secret("llmplat-team-w", {"llmplat.io/kind": "team"}, record("w")),
            raw_secret("llmplat-team-v", {**OURS}, record("v")),
            raw_secret("llmplat-team-x", {**OURS, "llmplat.io/kind": "team"}, record("x")),
            raw_secret("team-x", {**OURS, "llmplat.io/kind": "team"}, record("x")),
            raw_secret("llmplat-key-x", {**OURS, "llmplat.io/kind": "team"}, record("x")),
            raw_secret(
                "llmplat-team-y",
                {**OURS, "llmplat.io/kind": "key"},
                key_for("y").model_dump_json().encode(),
            ),
            raw_secret("llmplat-team-z", {**OURS, "llmplat.io/kind": "retired"}, record("z")),
        ):
            kube.put_object(NS, raw)
        assert KubernetesKeyStore(NS, kube.core_v1()).load() == Registry(teams={"x": teams["x"]})


def test_delete_team_with_a_server_ignoring_label_selectors() -> None:
    """The list of a team's keys may come back unfiltered: only that team's keys go."""
    with running_kube_emulator(honor_label_selectors=False) as kube:
        store = KubernetesKeyStore(NS, kube.core_v1())
        for team in ("ide", "ci"):
            store.put_team(Team(name=team), create=True)
        ide_key, ci_key = key_for("ide"), key_for("ci")
        for key in (ide_key, ci_key):
            store.put_key(key, create=True)
        kube.put_object(NS, raw_secret("db-password", {}, b"hunter2"))
        store.delete_team("ide")
        assert set(kube.objects(NS)) == {
            "llmplat-team-ci",
            f"llmplat-key-{ci_key.key_id}",
            "db-password",
        }


def test_api_errors_name_the_namespace(kube: EmulatorHandle) -> None:
    kube.fail_namespace("locked", 403, 'secrets is forbidden: User "gw" cannot list')
    store = KubernetesKeyStore("locked", kube.core_v1())
    with pytest.raises(StoreError, match="namespace 'locked': access denied.*HTTP 403") as err:
        store.load()
    assert not isinstance(err.value, NotFoundError | ConflictError)
    with pytest.raises(StoreError, match="namespace 'locked'"):
        store.put_team(Team(name="ide"), create=True)


def test_unreachable_api_is_a_store_error() -> None:
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard: nothing listens
    cfg.retries = 0
    store = KubernetesKeyStore(NS, client.CoreV1Api(client.ApiClient(cfg)))
    with pytest.raises(StoreError) as err:
        store.load()
    assert str(err.value).startswith(
        f"listing llmplat Secrets in namespace '{NS}': cannot reach the Kubernetes API at "
        "http://127.0.0.1:9: MaxRetryError: "
    )


def test_api_error_quotes_the_status_message_only_and_briefly(kube: EmulatorHandle) -> None:
    kube.fail_namespace("busy", 500, "etcd is " + "very " * 100 + "slow")
    with pytest.raises(StoreError) as err:
        KubernetesKeyStore("busy", kube.core_v1()).load()
    quoted = ("etcd is " + "very " * 100)[:300]
    assert str(err.value) == (
        f"listing llmplat Secrets in namespace 'busy' failed (HTTP 500: {quoted})"
    )


def test_from_environment_uses_the_kubeconfig(
    kube: EmulatorHandle, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    store = KubernetesKeyStore.from_environment(NS, str(Settings().keystore.kubeconfig))
    assert store.namespace == NS
    store.put_team(Team(name="ide"), create=True)
    assert set(KubernetesKeyStore(NS, kube.core_v1()).load().teams) == {"ide"}


def test_in_a_pod_the_service_account_wins_over_a_kubeconfig(
    kube: EmulatorHandle, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a gateway pod gets: the API server from the service environment and the mounted
    service account token (never a kubeconfig that happens to be set)."""
    from kubernetes.config import incluster_config

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-t0ken")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", kube.url)))

    store = KubernetesKeyStore.from_environment(NS, str(Settings().keystore.kubeconfig))
    cfg = store.api.api_client.configuration
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ssl_ca_cert == str(ca)
    assert cfg.api_key == {"BearerToken": "bearer sa-t0ken"}


def test_without_an_api_the_clients_default_configuration_is_used() -> None:
    api = KubernetesKeyStore(NS).api
    assert isinstance(api, client.CoreV1Api)
    assert api.api_client.configuration.host == client.Configuration.get_default_copy().host


def test_from_environment_without_any_config(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(StoreError, match="no Kubernetes configuration"):
        KubernetesKeyStore.from_environment(NS, str(Settings().keystore.kubeconfig))


def test_watch_delivers_a_revocation_and_stops_promptly(kube: EmulatorHandle) -> None:
    admin = KubernetesKeyStore(NS, kube.core_v1())
    admin.put_team(Team(name="ide"), create=True)
    key = key_for("ide")
    admin.put_key(key, create=True)

    gateway = KubernetesKeyStore(NS, kube.core_v1())
    with Watcher(gateway) as w:
        first = w.wait_for(lambda r: key.key_id in r.keys)
        assert w.snapshots[0] == first and not first.keys[key.key_id].revoked
        time.sleep(1.2)  # let the watch settle into a later stream

        revoked_at = time.monotonic()
        other = KubernetesKeyStore(NS, kube.core_v1())  # e.g. the CLI
        other.put_key(key.model_copy(update={"revoked": True}), create=False)
        w.wait_for(lambda r: r.keys[key.key_id].revoked, timeout=15)
        assert time.monotonic() - revoked_at < 2.0  # docs/teams-and-quotas.md: within a second or two

        stop_at = time.monotonic()
        w.stop.set()
        w.thread.join(timeout=5)
        assert not w.thread.is_alive()
        assert time.monotonic() - stop_at < 3
    assert w.error is None


def test_watch_without_server_side_timeouts() -> None:
    """A server that ignores timeoutSeconds: the client's read timeout still ends each
    stream, so stop works and no change is lost across reconnects."""
    with running_kube_emulator(honor_watch_timeout=False) as kube:
        store = KubernetesKeyStore(NS, kube.core_v1())
        store.put_team(Team(name="ide"), create=True)
        with Watcher(store) as w:
            w.wait_for(lambda r: "ide" in r.teams)
            time.sleep(2.5)  # past one client-side read timeout
            store.put_team(Team(name="ci"), create=True)
            w.wait_for(lambda r: set(r.teams) == {"ci", "ide"}, timeout=5)
            stop_at = time.monotonic()
            w.stop.set()
            w.thread.join(timeout=5)
            assert time.monotonic() - stop_at < 3
        assert w.error is None


def test_watch_keeps_trying_when_denied(
    kube: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    kube.fail_namespace("locked", 403, "secrets is forbidden")
    store = KubernetesKeyStore("locked", kube.core_v1(), retry_s=0.2)
    with Watcher(store) as w:
        time.sleep(1.0)
        stop_at = time.monotonic()
    assert time.monotonic() - stop_at < 3
    assert w.snapshots == [] and w.error is None
    denied = [r for r in caplog.records if "namespace 'locked': access denied" in r.getMessage()]
    # 1 s at retry_s 0.2: the first try and about four more, each logged.
    assert len(denied) >= 3, [r.getMessage() for r in caplog.records]


def test_watch_follows_creates_and_team_deletion(kube: EmulatorHandle) -> None:
    store = KubernetesKeyStore(NS, kube.core_v1())
    with Watcher(store) as w:
        w.wait_for(lambda r: r == Registry())
        store.put_team(Team(name="ide"), create=True)
        key = key_for("ide")
        store.put_key(key, create=True)
        w.wait_for(lambda r: key.key_id in r.keys and "ide" in r.teams)
        store.delete_team("ide")
        w.wait_for(lambda r: r == Registry())
    assert w.error is None
    # Only real changes are reported: no duplicate consecutive snapshots.
    assert all(a != b for a, b in zip(w.snapshots, w.snapshots[1:], strict=False))


def test_watch_drops_a_secret_relabelled_out_of_the_store(kube: EmulatorHandle) -> None:
    """Someone re-labels a key's Secret (still managed by llmplat, no longer a key): the key
    leaves every gateway's view, as if deleted."""
    store = KubernetesKeyStore(NS, kube.core_v1())
    store.put_team(Team(name="ide"), create=True)
    key = key_for("ide")
    store.put_key(key, create=True)
    with Watcher(store) as w:
        w.wait_for(lambda r: key.key_id in r.keys)
        kube.core_v1().patch_namespaced_secret(
            f"llmplat-key-{key.key_id}",
            NS,
            {"metadata": {"labels": {"llmplat.io/kind": "retired"}}},
        )
        w.wait_for(lambda r: key.key_id not in r.keys and "ide" in r.teams, timeout=5)
    assert w.error is None


def test_watch_relists_after_410_gone(
    kube: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmplat.auth.kube_store")
    store = KubernetesKeyStore(NS, kube.core_v1())
    store.put_team(Team(name="ide"), create=True)
    with Watcher(store) as w:
        w.wait_for(lambda r: "ide" in r.teams)
        # A change the watch cannot see as an event, then history compacted past it:
        # only a re-list (after 410 Gone) can bring it in.
        team = Team(name="hidden").model_dump_json().encode()
        kube.put_object(
            NS, raw_secret("llmplat-team-hidden", {**OURS, "llmplat.io/kind": "team"}, team)
        )
        kube.expire()
        w.wait_for(lambda r: "hidden" in r.teams, timeout=5)
    assert w.error is None
    # What an operator reads in the gateway's log: the expiry and the re-list, as such.
    assert "key store watch expired (410 Gone); re-listing" in caplog.messages


def test_watch_survives_a_corrupt_secret(
    kube: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    store = KubernetesKeyStore(NS, kube.core_v1())
    broken = raw_secret("llmplat-team-broken", {**OURS, "llmplat.io/kind": "team"}, b"{}")
    why = (
        f"Secret 'llmplat-team-broken' in namespace '{NS}' is not a valid llmplat team "
        "(not a valid Team record); fix or delete it"
    )
    with Watcher(store) as w:
        w.wait_for(lambda r: r == Registry())
        create_raw(kube, broken)
        store.put_team(Team(name="ide"), create=True)
        w.wait_for(lambda r: set(r.teams) == {"ide"})
    assert w.error is None
    assert f"key store: ignoring change: {why}" in caplog.messages
    # A watch that starts with the broken Secret in the list skips it and takes the rest.
    with Watcher(KubernetesKeyStore(NS, kube.core_v1())) as w:
        w.wait_for(lambda r: set(r.teams) == {"ide"})
    assert w.error is None
    assert f"key store: skipping {why}" in caplog.messages


def test_on_change_errors_end_the_watch(kube: EmulatorHandle) -> None:
    store = KubernetesKeyStore(NS, kube.core_v1())

    def boom(registry: Registry) -> None:
        raise RuntimeError("gateway broke")

    with pytest.raises(RuntimeError, match="gateway broke"):
        store.watch(boom, threading.Event())


def test_view_is_confirmed_while_the_watch_works_and_ages_when_it_fails(
    kube: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    store = KubernetesKeyStore(NS, kube.core_v1(), retry_s=0.2)
    assert store.confirmed_at is None
    with Watcher(store) as w:
        w.wait_for(lambda r: r == Registry())
        for _ in range(3):  # confirmed again and again while nothing changes
            time.sleep(1.0)
            assert store.confirmed_at is not None
            assert time.monotonic() - store.confirmed_at < 2.5
        kube.fail_namespace(NS, 503, "etcd unavailable")
        time.sleep(4.0)
        assert store.confirmed_at is not None
        assert time.monotonic() - store.confirmed_at > 2.0
    # What an operator reads in the gateway's log: the watch, then each re-list, failing.
    failed = f"in namespace '{NS}' failed (HTTP 503: etcd unavailable)"
    assert f"key store watch: watching Secrets {failed}" in caplog.messages
    assert f"key store not reloaded: listing llmplat Secrets {failed}" in caplog.messages


def test_watch_says_when_the_api_server_is_gone(caplog: pytest.LogCaptureFixture) -> None:
    with running_kube_emulator() as kube:
        store = KubernetesKeyStore(NS, kube.core_v1(), retry_s=0.2)
        with Watcher(store) as w:
            w.wait_for(lambda r: r == Registry())
            kube.stop()
            time.sleep(3.0)
    unreachable = f"in namespace '{NS}': cannot reach the Kubernetes API at {kube.url}: "
    messages = caplog.messages
    assert any(m.startswith(f"key store watch: watching Secrets {unreachable}") for m in messages)
    assert any(
        m.startswith(f"key store not reloaded: listing llmplat Secrets {unreachable}")
        for m in messages
    ), messages


def test_delete_team_names_the_key_secret_it_could_not_delete(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    store.put_team(Team(name="ide"), create=True)
    key = key_for("ide")
    store.put_key(key, create=True)
    secret = f"llmplat-key-{key.key_id}"
    kube.fail(f"delete /api/v1/namespaces/{NS}/secrets/{secret}", 403, "no delete")
    with pytest.raises(StoreError) as err:
        store.delete_team("ide")
    assert str(err.value).startswith(
        f"deleting key Secret '{secret}' in namespace '{NS}': access denied (HTTP 403: no delete)."
    )
    assert "ide" in store.load().teams  # keys first: the team (and the way to retry) remains


def test_delete_team_skips_a_key_secret_already_gone(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    """A key deleted meanwhile (404 on delete) is not an error; the team still goes."""
    store.put_team(Team(name="ide"), create=True)
    key = key_for("ide")
    store.put_key(key, create=True)
    kube.fail(f"delete /api/v1/namespaces/{NS}/secrets/llmplat-key-{key.key_id}", 404, "gone")
    store.delete_team("ide")
    assert "ide" not in store.load().teams


def test_delete_team_whose_secret_vanished_meanwhile_is_not_found(
    kube: EmulatorHandle, store: KubernetesKeyStore
) -> None:
    store.put_team(Team(name="ide"), create=True)
    kube.fail(f"delete /api/v1/namespaces/{NS}/secrets/llmplat-team-ide", 404, "gone")
    with pytest.raises(NotFoundError) as err:
        store.delete_team("ide")
    assert str(err.value) == f"no team 'ide' (in namespace '{NS}')"


def test_api_error_without_reason_or_body(store: KubernetesKeyStore) -> None:
    from kubernetes.client.exceptions import ApiException

    error = store._api_error(ApiException(status=500), "listing llmplat Secrets")
    assert str(error) == f"listing llmplat Secrets in namespace '{NS}' failed (HTTP 500: )"


def test_watch_events_return_their_resource_version(store: KubernetesKeyStore) -> None:
    """The watch resumes from the last event's resourceVersion, bookmarks included."""
    emitted: list[dict] = []
    bookmark = {"type": "BOOKMARK", "raw_object": {"metadata": {"resourceVersion": "41"}}}
    assert store._apply(bookmark, {}, emitted.append) == "41"
    gone = {"type": "DELETED", "raw_object": {"metadata": {"name": "x", "resourceVersion": "42"}}}
    assert store._apply(gone, {}, emitted.append) == "42"
    assert emitted == []


def test_a_relist_that_changes_nothing_reports_nothing(
    kube: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """on_change hears of changes only: a re-list (410 Gone) finding the same Secrets is
    silent, so the gateway does not rebuild its view for nothing."""
    caplog.set_level(logging.INFO, logger="llmplat.auth.kube_store")
    store = KubernetesKeyStore(NS, kube.core_v1())
    store.put_team(Team(name="ide"), create=True)
    with Watcher(store) as w:
        w.wait_for(lambda r: "ide" in r.teams)
        kube.expire()
        deadline = time.monotonic() + 10
        while "key store watch expired (410 Gone); re-listing" not in caplog.messages:
            assert time.monotonic() < deadline, "no re-list"
            time.sleep(0.05)
        store.put_team(Team(name="ci"), create=True)
        w.wait_for(lambda r: "ci" in r.teams)
    assert w.error is None
    assert [sorted(s.teams) for s in w.snapshots] == [["ide"], ["ci", "ide"]]


def test_a_quiet_stream_that_times_out_still_confirms_the_view() -> None:
    """A server that ignores timeoutSeconds: the client's read timeout ends a quiet stream,
    and the view counts as confirmed then too (the server answered)."""
    with running_kube_emulator(honor_watch_timeout=False) as kube:
        store = KubernetesKeyStore(NS, kube.core_v1())
        store.put_team(Team(name="ide"), create=True)
        with Watcher(store) as w:
            w.wait_for(lambda r: "ide" in r.teams)
            time.sleep(2.5)  # past one client-side read timeout, no event meanwhile
            assert store.confirmed_at is not None
            assert time.monotonic() - store.confirmed_at < 2.5
        assert w.error is None
