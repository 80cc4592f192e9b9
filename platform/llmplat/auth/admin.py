"""Team and key administration: the one implementation behind the CLI and ``/admin/``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from llmplat.auth.keys import mint_key
from llmplat.auth.store import KeyStore, NotFoundError, StoreError
from llmplat.config.teams import ApiKeyRecord, Limits, Team, utcnow


class InvalidAdminRequest(StoreError):
    """The requested change is not valid (message names the field)."""


@dataclass(frozen=True)
class IssuedKey:
    """A key as created: its record and the plaintext, which is shown this once."""

    record: ApiKeyRecord
    plaintext: str


def _validated(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidAdminRequest(f"invalid {where or 'value'}: {first['msg']}") from exc


class KeyAdmin:
    """Creates, changes and lists teams and keys in a KeyStore."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    # teams
    def create_team(self, data: dict[str, Any]) -> Team:
        team: Team = _validated(Team, {k: v for k, v in data.items() if k != "created_at"})
        self.store.put_team(team, create=True)
        return team

    def update_team(self, name: str, changes: dict[str, Any]) -> Team:
        current = self.get_team(name)
        if "name" in changes and changes["name"] != name:
            raise InvalidAdminRequest("invalid name: a team cannot be renamed")
        merged = current.model_dump()
        for nested in ("limits", "input_bounds"):  # a partial object changes only its fields
            if isinstance(changes.get(nested), dict):
                changes = {**changes, nested: {**merged[nested], **changes[nested]}}
        team: Team = _validated(Team, {**merged, **changes})
        self.store.put_team(team, create=False)
        return team

    def delete_team(self, name: str) -> None:
        self.store.delete_team(name)

    def get_team(self, name: str) -> Team:
        team = self.store.load().teams.get(name)
        if team is None:
            raise NotFoundError(f"no team '{name}'")
        return team

    def list_teams(self) -> list[Team]:
        return sorted(self.store.load().teams.values(), key=lambda t: t.name)

    # keys
    def create_key(
        self,
        team: str,
        *,
        name: str = "",
        expires_in: timedelta | None = None,
        expires_at: datetime | None = None,
        limits: dict[str, Any] | Limits | None = None,
    ) -> IssuedKey:
        self.get_team(team)
        new = mint_key()
        if expires_in is not None:
            expires_at = utcnow() + expires_in
        lim = limits if isinstance(limits, Limits) else _validated(Limits, dict(limits or {}))
        record: ApiKeyRecord = _validated(
            ApiKeyRecord,
            {
                "key_id": new.key_id,
                "team": team,
                "name": name,
                "secret_sha256": new.secret_sha256,
                "expires_at": expires_at,
                "limits": lim.model_dump(),
            },
        )
        self.store.put_key(record, create=True)
        return IssuedKey(record, new.plaintext)

    def get_key(self, key_id: str) -> ApiKeyRecord:
        key = self.store.load().keys.get(key_id)
        if key is None:
            raise NotFoundError(f"no key '{key_id}'")
        return key

    def list_keys(self, team: str | None = None) -> list[ApiKeyRecord]:
        reg = self.store.load()
        if team is not None and team not in reg.teams:
            raise NotFoundError(f"no team '{team}'")
        keys = [k for k in reg.keys.values() if team is None or k.team == team]
        return sorted(keys, key=lambda k: (k.team, k.created_at, k.key_id))

    def revoke_key(self, key_id: str) -> ApiKeyRecord:
        key = self.get_key(key_id).model_copy(update={"revoked": True})
        self.store.put_key(key, create=False)
        return key

    def rotate_key(self, key_id: str) -> IssuedKey:
        """A new key with the same team, name, expiry window and limits; the old one revoked."""
        old = self.get_key(key_id)
        if old.revoked:
            raise InvalidAdminRequest(f"invalid key_id: key '{key_id}' is revoked already")
        expires_in = None if old.expires_at is None else old.expires_at - old.created_at
        issued = self.create_key(old.team, name=old.name, expires_in=expires_in, limits=old.limits)
        self.revoke_key(key_id)
        return issued
