"""Key format, hashing and the registry authenticator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from llmplat.auth.keys import hash_secret, mint_key, parse_key, secret_matches
from llmplat.auth.registry_auth import RegistryAuthenticator
from llmplat.config.teams import ApiKeyRecord, Limits, Registry, Team
from llmplat.gateway.errors import AuthenticationFailed


def test_minted_key_format_and_entropy() -> None:
    k = mint_key()
    prefix, key_id, secret = k.plaintext.split("_", 2)
    assert prefix == "llmp" and key_id == k.key_id and len(secret) >= 43  # 32 bytes, base64
    assert parse_key(k.plaintext) == (k.key_id, secret)
    assert k.secret_sha256 == hash_secret(secret) and secret not in k.secret_sha256
    assert mint_key().plaintext != k.plaintext


@pytest.mark.parametrize(
    "token", ["", "llmp", "llmp_", "sk-abc", "llmp_id_short", "llmp__" + "x" * 40]
)
def test_malformed_keys_do_not_parse(token: str) -> None:
    assert parse_key(token) is None


def test_secrets_need_sixteen_characters() -> None:
    assert parse_key("llmp_abc1_" + "s" * 16) == ("abc1", "s" * 16)
    assert parse_key("llmp_abc1_" + "s" * 15) is None


def test_secret_matches_is_false_for_unknown_keys() -> None:
    assert not secret_matches("x" * 43, None)
    assert secret_matches("x" * 43, hash_secret("x" * 43))


def _registry(**key_fields) -> tuple[Registry, str]:
    k = mint_key()
    team = Team(name="ci", priority_class="batch", max_tokens_cap=64, models=("m",),
                limits=Limits(requests_per_minute=5))  # fmt: skip
    rec = ApiKeyRecord(key_id=k.key_id, team="ci", secret_sha256=k.secret_sha256, **key_fields)
    return Registry(teams={"ci": team}, keys={k.key_id: rec}), k.plaintext


async def test_principal_carries_team_policy() -> None:
    reg, key = _registry(limits=Limits(concurrent_requests=2))
    p = await RegistryAuthenticator(reg).authenticate(f"Bearer {key}")
    assert (p.team, p.priority_class, p.max_tokens_cap, p.models) == ("ci", "batch", 64, {"m"})
    assert p.team_limits.requests_per_minute == 5 and p.key_limits.concurrent_requests == 2


async def test_expiry_is_checked_at_request_time() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    reg, key = _registry(expires_at=now + timedelta(seconds=10))
    clock = [now]
    auth = RegistryAuthenticator(reg, now=lambda: clock[0])
    await auth.authenticate(f"Bearer {key}")
    clock[0] = now + timedelta(seconds=10)
    with pytest.raises(AuthenticationFailed, match="expired"):
        await auth.authenticate(f"Bearer {key}")


async def test_dev_key_is_team_dev_and_any_other_token_is_refused() -> None:
    auth = RegistryAuthenticator(dev_key=SecretStr("llmp_dev_" + "d" * 40))
    assert (await auth.authenticate("Bearer llmp_dev_" + "d" * 40)).team == "dev"
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer llmp_dev_" + "e" * 40)


async def test_a_stale_remote_view_fails_closed(tmp_path) -> None:
    """A remote key store whose view has not been confirmed for longer than the bound:
    keys are refused (503) rather than trusting a view in which revoked keys still work."""
    from llmplat.auth.file_store import FileKeyStore
    from llmplat.gateway.errors import ServiceUnavailable

    reg, key = _registry()
    store = FileKeyStore(tmp_path / "teams.yaml")
    clock = [100.0]
    dev = "llmp_dev_" + "d" * 40
    auth = RegistryAuthenticator(
        reg, dev_key=SecretStr(dev), store=store, max_staleness_s=60.0, monotonic=lambda: clock[0]
    )
    assert (await auth.authenticate(f"Bearer {key}")).team  # a local store: always current
    store.confirmed_at = 50.0
    assert (await auth.authenticate(f"Bearer {key}")).team  # 50 s old: within the bound
    clock[0] = 111.0
    with pytest.raises(ServiceUnavailable) as refused:
        await auth.authenticate(f"Bearer {key}")
    assert refused.value.status == 503 and refused.value.code == "key_store_stale"
    assert refused.value.message == (
        "API keys cannot be checked: the key store has not been reachable for 61 s. "
        "Retry shortly; operators: see the gateway log."
    )
    assert refused.value.headers == {"retry-after": "5"}
    store.confirmed_at = 110.0  # the watch is back
    assert (await auth.authenticate(f"Bearer {key}")).team
