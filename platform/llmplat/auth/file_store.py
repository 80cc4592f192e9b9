"""Teams and keys in one YAML file under LLMPLAT_HOME (the default store).

Writers take an exclusive ``flock`` on a lock file, read, modify and atomically replace the
file (write to a temp file in the same directory, fsync, ``os.replace``), so a reader (the
gateway) never sees a half-written file and two CLI writers never lose each other's change.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from pydantic import ValidationError

from llmplat.auth.store import ConflictError, KeyStore, NotFoundError, StoreError
from llmplat.config.teams import ApiKeyRecord, Registry, Team

log = logging.getLogger(__name__)


class FileKeyStore(KeyStore):
    def __init__(self, path: Path, poll_interval_s: float = 0.5) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._poll_s = poll_interval_s

    def load(self) -> Registry:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Registry()
        try:
            data = yaml.safe_load(text) or {}
            return Registry.model_validate(data)
        except (yaml.YAMLError, ValidationError) as exc:
            raise StoreError(f"{self.path}: not a valid llmplat key store: {exc}") from exc

    @contextmanager
    def _locked(self) -> Iterator[Registry]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.load()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, registry: Registry) -> None:
        data = registry.model_dump(mode="json")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                yaml.safe_dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_team(self, team: Team, *, create: bool) -> None:
        with self._locked() as reg:
            exists = team.name in reg.teams
            if create and exists:
                raise ConflictError(f"team '{team.name}' already exists")
            if not create and not exists:
                raise NotFoundError(f"no team '{team.name}'")
            self._write(reg.model_copy(update={"teams": {**reg.teams, team.name: team}}))

    def delete_team(self, name: str) -> None:
        with self._locked() as reg:
            if name not in reg.teams:
                raise NotFoundError(f"no team '{name}'")
            teams = {k: v for k, v in reg.teams.items() if k != name}
            keys = {k: v for k, v in reg.keys.items() if v.team != name}
            self._write(Registry(teams=teams, keys=keys))

    def put_key(self, key: ApiKeyRecord, *, create: bool) -> None:
        with self._locked() as reg:
            exists = key.key_id in reg.keys
            if create and exists:
                raise ConflictError(f"key '{key.key_id}' already exists")
            if not create and not exists:
                raise NotFoundError(f"no key '{key.key_id}'")
            if key.team not in reg.teams:
                raise NotFoundError(f"no team '{key.team}'")
            self._write(reg.model_copy(update={"keys": {**reg.keys, key.key_id: key}}))

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def watch(self, on_change: Callable[[Registry], None], stop: threading.Event) -> None:
        seen: object = object()
        while not stop.is_set():
            sig = self._signature()
            if sig != seen:
                try:
                    on_change(self.load())
                    seen = sig
                except StoreError as exc:  # keep the last good snapshot, say why
                    log.error("key store not reloaded: %s", exc)
                    seen = sig
            stop.wait(self._poll_s)
