"""Key stores persist teams and key records; the gateway follows their changes."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from llmplat.config.teams import ApiKeyRecord, Registry, Team


class StoreError(Exception):
    """A key store operation failed; the message says why and what to do."""


class NotFoundError(StoreError):
    pass


class ConflictError(StoreError):
    pass


class KeyStore(ABC):
    """Teams and keys. Synchronous: the CLI calls it directly, async code via a thread."""

    confirmed_at: float | None = None
    """``time.monotonic()`` when a remote store last confirmed the followed view (a list,
    a watch event, a watch that ended normally); None for a local store, always current."""

    @abstractmethod
    def load(self) -> Registry:
        """One consistent snapshot of every team and key."""

    @abstractmethod
    def put_team(self, team: Team, *, create: bool) -> None:
        """Create (ConflictError if it exists) or replace (NotFoundError if it does not)."""

    @abstractmethod
    def delete_team(self, name: str) -> None:
        """Delete a team and every key of it (NotFoundError if absent)."""

    @abstractmethod
    def put_key(self, key: ApiKeyRecord, *, create: bool) -> None:
        """Create (ConflictError if the id exists) or replace (NotFoundError if absent)."""

    @abstractmethod
    def watch(self, on_change: Callable[[Registry], None], stop: threading.Event) -> None:
        """Block until ``stop`` is set, calling ``on_change`` with a fresh snapshot after
        every change (and once at start). Revocations must reach it within seconds."""
