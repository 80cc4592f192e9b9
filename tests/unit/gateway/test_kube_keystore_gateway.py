"""The gateway on the Kubernetes key store, end to end: settings as a gateway pod reads them
(``LLMPLAT_KEYSTORE__BACKEND=kubernetes``, a kubeconfig), keys made through the admin API,
stored as Secrets by a real Kubernetes client, followed by the replica's watch, and that
watch recovering after the API server restarts."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llmplat.auth.kube_store import KubernetesKeyStore
from llmplat.auth.store import KeyStore
from llmplat.config.teams import ApiKeyRecord
from llmplat.settings import Settings
from support import ADMIN_TOKEN, MODEL, auth
from support.kube_emulator import EmulatorHandle, running_kube_emulator, write_kubeconfig

pytestmark = pytest.mark.timeout(120)
NS = "llmplat-keys"
ADMIN = auth(ADMIN_TOKEN)


async def _until(status: int, http: httpx.AsyncClient, key: str, limit_s: float) -> float:
    """Seconds until ``key`` gets ``status`` from the gateway (fails past ``limit_s``)."""
    t0 = time.monotonic()
    while (r := await http.get("/v1/models", headers=auth(key))).status_code != status:
        assert time.monotonic() - t0 < limit_s, f"still {r.status_code} after {limit_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture
async def kube_gateway(
    replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, EmulatorHandle]]:
    with running_kube_emulator() as kube:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", kube.url)))
        monkeypatch.setenv("LLMPLAT_KEYSTORE__BACKEND", "kubernetes")
        monkeypatch.setenv("LLMPLAT_KEYSTORE__NAMESPACE", NS)
        async with replica(keystore=Settings().keystore) as (state, h):
            assert isinstance(state.admin.store, KubernetesKeyStore)
            yield h, kube


async def test_keys_made_through_the_admin_api_live_in_secrets_and_revoke_in_seconds(
    kube_gateway,
) -> None:
    http, kube = kube_gateway
    assert (await http.post("/admin/teams", json={"name": "ide"}, headers=ADMIN)).is_success
    made = (await http.post("/admin/teams/ide/keys", json={}, headers=ADMIN)).json()
    secrets = kube.objects(NS)
    assert any(made["key_id"] in name for name in secrets), sorted(secrets)
    stored = json.dumps(secrets) + "".join(
        base64.b64decode(v).decode() for raw in secrets.values() for v in raw["data"].values()
    )
    assert made["key_id"] in stored  # the decoded records are what was searched
    assert made["key"].split("_", 2)[2] not in stored  # only the hash is stored
    await _until(200, http, made["key"], limit_s=5)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    assert (await http.post("/v1/completions", json=body, headers=auth(made["key"]))).is_success

    revoke = await http.post(f"/admin/keys/{made['key_id']}/revoke", headers=ADMIN)
    assert revoke.json()["revoked"] is True
    took = await _until(401, http, made["key"], limit_s=10)
    assert took < 2.0  # docs/teams-and-quotas.md: a second or two


async def test_the_watch_recovers_after_an_api_server_restart(kube_gateway) -> None:
    """The API server goes away and comes back on the same address with the same objects
    (etcd survives): the replica keeps serving the keys it has, then follows changes made
    after the restart without being restarted itself."""
    http, kube = kube_gateway
    await http.post("/admin/teams", json={"name": "ci"}, headers=ADMIN)
    old = (await http.post("/admin/teams/ci/keys", json={}, headers=ADMIN)).json()
    await _until(200, http, old["key"], limit_s=5)
    saved = kube.objects(NS)
    port = int(kube.url.rsplit(":", 1)[1])

    kube.stop()  # the API server is down
    await asyncio.sleep(2.5)  # the watch fails and retries meanwhile
    assert (await http.get("/v1/models", headers=auth(old["key"]))).status_code == 200

    with running_kube_emulator(port=port) as restarted:
        for raw in saved.values():
            restarted.put_object(NS, raw)
        cli: KeyStore = KubernetesKeyStore(NS, restarted.core_v1())  # e.g. `llmplat keys`
        new_key, record = _key_for("ci")
        cli.put_key(record, create=True)
        await _until(200, http, new_key, limit_s=10)  # the watch is back
        cli.put_key(_revoked(cli, old["key_id"]), create=False)
        assert await _until(401, http, old["key"], limit_s=10) < 2.0


def _key_for(team: str) -> tuple[str, ApiKeyRecord]:
    from llmplat.auth.keys import mint_key

    minted = mint_key()
    record = ApiKeyRecord(key_id=minted.key_id, team=team, secret_sha256=minted.secret_sha256)
    return minted.plaintext, record


def _revoked(store: KeyStore, key_id: str) -> ApiKeyRecord:
    return store.load().keys[key_id].model_copy(update={"revoked": True})
