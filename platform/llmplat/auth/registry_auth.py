"""Authenticate team keys against the latest snapshot of a key store."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import SecretStr

from llmplat.auth.base import Principal, bearer_token
from llmplat.auth.keys import parse_key, secret_matches
from llmplat.auth.store import KeyStore
from llmplat.config.teams import Registry
from llmplat.errors import AuthenticationFailed, ServiceUnavailable

log = logging.getLogger(__name__)

DEV_TEAM = "dev"
DEV_KEY_ID = "dev"


class RegistryAuthenticator:
    """Keys → Principals from an in-memory Registry that a watcher keeps current.

    The lookup is a dict access plus one SHA-256 and a constant-time compare: no I/O on the
    request path. ``dev_key`` (dev mode) is accepted as team ``dev`` without limits.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        dev_key: SecretStr | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        store: KeyStore | None = None,
        max_staleness_s: float = float("inf"),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._max_staleness_s = max_staleness_s
        self._monotonic = monotonic
        self._registry = registry or Registry()
        self._dev_key = dev_key.get_secret_value().encode() if dev_key else None
        self._now = now
        self._dev = Principal(team=DEV_TEAM, key_id=DEV_KEY_ID)

    @property
    def registry(self) -> Registry:
        return self._registry

    def update(self, registry: Registry) -> None:
        self._registry = registry

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationFailed(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        if self._dev_key is not None and hmac.compare_digest(token.encode(), self._dev_key):
            return self._dev
        self._check_fresh()
        parsed = parse_key(token)
        if parsed is None:
            raise AuthenticationFailed(
                "Malformed API key: llmplat keys look like 'llmp_<key id>_<secret>'.",
                code="invalid_api_key",
            )
        key_id, secret = parsed
        reg = self._registry
        record = reg.keys.get(key_id)
        if not secret_matches(secret, record.secret_sha256 if record else None) or record is None:
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        if record.revoked:
            raise AuthenticationFailed(
                f"API key '{key_id}' has been revoked; ask your team admin for a new one.",
                code="revoked_api_key",
            )
        if record.expires_at is not None and self._now() >= record.expires_at:
            raise AuthenticationFailed(
                f"API key '{key_id}' expired at {record.expires_at.isoformat()}.",
                code="expired_api_key",
            )
        team = reg.teams.get(record.team)
        if team is None:
            raise AuthenticationFailed(
                f"API key '{key_id}' belongs to a team that no longer exists.",
                code="invalid_api_key",
            )
        return Principal(
            team=team.name,
            key_id=key_id,
            models=frozenset(team.models) if team.models is not None else None,
            priority_class=team.priority_class,
            max_tokens_cap=team.max_tokens_cap,
            team_limits=team.limits,
            key_limits=record.limits,
            max_choices=team.max_choices,
            cache_group=team.cache_group,
            input_bounds=team.input_bounds,
        )

    def _check_fresh(self) -> None:
        """Fail closed on a remote store whose view is too old to trust (revocations)."""
        confirmed = self._store.confirmed_at if self._store is not None else None
        if confirmed is None:
            return
        age = self._monotonic() - confirmed
        if age > self._max_staleness_s:
            raise ServiceUnavailable(
                f"API keys cannot be checked: the key store has not been reachable for "
                f"{age:.0f} s. Retry shortly; operators: see the gateway log.",
                code="key_store_stale",
                headers={"retry-after": "5"},
            )


class StoreFollower:
    """Runs ``store.watch`` in a daemon thread and hands each snapshot to the event loop."""

    def __init__(self, store: KeyStore, on_change: Callable[[Registry], None]) -> None:
        self._store = store
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        def deliver(registry: Registry) -> None:
            if loop is not None and loop.is_running():
                loop.call_soon_threadsafe(self._on_change, registry)
            else:
                self._on_change(registry)

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self._store.watch(deliver, self._stop)
                except Exception as exc:  # keep following; the last snapshot stays valid
                    log.error("key store watch failed, retrying: %s", exc)
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=run, name="llmplat-keystore", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
