"""Teams and keys as Kubernetes Secrets in one namespace (the in-cluster store).

Every team and every key is one Secret, so ``kubectl`` shows them, RBAC guards them and the
API server's optimistic concurrency keeps two writers from clobbering each other:

* ``llmplat-team-<name>``: labels ``app.kubernetes.io/managed-by=llmplat``,
  ``llmplat.io/kind=team``; data ``record.json`` = the :class:`Team` as JSON.
* ``llmplat-key-<key_id>``: the same labels with ``llmplat.io/kind=key`` plus
  ``llmplat.io/team=<team>``; data ``record.json`` = the :class:`ApiKeyRecord` as JSON, which
  holds the SHA-256 of the key's secret, never the secret itself.

The gateway follows changes with a real watch (list, then watch from the list's
resourceVersion), so a revoked key stops authenticating within a couple of seconds.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from contextlib import closing
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from llmplat.auth.store import ConflictError, KeyStore, NotFoundError, StoreError
from llmplat.config.teams import ApiKeyRecord, Registry, Team

log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "llmplat"
KIND_LABEL = "llmplat.io/kind"
TEAM_LABEL = "llmplat.io/team"
DATA_KEY = "record.json"
TEAM_PREFIX = "llmplat-team-"
KEY_PREFIX = "llmplat-key-"
SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{KIND_LABEL}"
"""Every Secret of this store (and no other): managed by llmplat and of some llmplat kind."""

_Record = Team | ApiKeyRecord


def team_secret_name(name: str) -> str:
    return f"{TEAM_PREFIX}{name}"


def key_secret_name(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}"


def _labels(record: _Record) -> dict[str, str]:
    if isinstance(record, Team):
        return {MANAGED_BY_LABEL: MANAGED_BY, KIND_LABEL: "team"}
    return {MANAGED_BY_LABEL: MANAGED_BY, KIND_LABEL: "key", TEAM_LABEL: record.team}


def kube_configuration(
    config_file: str | None = None, context: str | None = None
) -> client.Configuration:
    """The service account's configuration inside a pod, else a kubeconfig: ``config_file``,
    ``$KUBECONFIG`` or ``~/.kube/config`` (``context``, or its current one). Raises
    ``config.ConfigException`` (or OSError/ValueError for a broken file) when neither works."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(
            config_file=config_file,
            context=context,
            client_configuration=cfg,
        )
    return cfg


class _CallbackError(Exception):
    """Wraps what ``on_change`` raised, so that it is not mistaken for an API failure."""


class KubernetesKeyStore(KeyStore):
    """Teams and keys as labelled Secrets in ``namespace``.

    ``api`` defaults to a ``CoreV1Api`` on the client's default configuration; use
    :meth:`from_environment` to load in-cluster config or a kubeconfig first.
    Needs get/list/watch/create/update/delete on ``secrets`` in the namespace.
    """

    def __init__(
        self,
        namespace: str,
        api: client.CoreV1Api | None = None,
        *,
        request_timeout_s: float = 10.0,
        watch_timeout_s: int = 1,
        resync_s: float = 60.0,
        retry_s: float = 1.0,
    ) -> None:
        self.namespace = namespace
        self.api = api if api is not None else client.CoreV1Api()
        self._timeout = request_timeout_s
        # Each watch request asks the server to end it after ``watch_timeout_s`` and gives up
        # reading after one more second of silence (for servers that ignore timeoutSeconds),
        # so ``stop`` is noticed within ~2 s. The watch then resumes from the last
        # resourceVersion: no events are lost and nothing is re-listed.
        self._watch_timeout_s = max(1, int(watch_timeout_s))
        self._watch_read_timeout_s = self._watch_timeout_s + 1.0
        # A full re-list now and then is a safety net against events a server failed to deliver.
        self._resync_s = resync_s
        self._retry_s = retry_s

    @classmethod
    def from_environment(cls, namespace: str, kubeconfig: str | None = None) -> KubernetesKeyStore:
        """In-cluster service account config when running in a pod, else the kubeconfig
        (``$KUBECONFIG`` or ``~/.kube/config``, its current context)."""
        try:
            cfg = kube_configuration(kubeconfig)
        except (config.ConfigException, OSError, ValueError) as exc:
            raise StoreError(
                "no Kubernetes configuration for the key store: not running in a pod and "
                f"no usable kubeconfig ($KUBECONFIG or ~/.kube/config): {exc}"
            ) from exc
        return cls(namespace, client.CoreV1Api(client.ApiClient(cfg)))

    # -- errors ------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"namespace '{self.namespace}'"

    def _api_error(self, exc: ApiException, doing: str) -> StoreError:
        """A StoreError that says what failed and why; only the server's Status message is
        quoted (never the request, so never secret data)."""
        message = exc.reason or ""
        try:
            body = json.loads(exc.body) if exc.body else None
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"]
        except (TypeError, ValueError):
            pass
        message = message[:300]
        where = self._where()
        if exc.status in (401, 403):
            return StoreError(
                f"{doing} in {where}: access denied (HTTP {exc.status}: {message}). The "
                "service account or kubeconfig user needs get/list/watch/create/update/delete "
                f"on secrets in {where}."
            )
        if exc.status == 404:
            return NotFoundError(f"{doing} in {where}: not found (HTTP 404: {message})")
        if exc.status == 409:
            return ConflictError(f"{doing} in {where}: conflict (HTTP 409: {message})")
        return StoreError(f"{doing} in {where} failed (HTTP {exc.status}: {message})")

    def _transport_error(self, exc: Exception, doing: str) -> StoreError:
        host = getattr(self.api.api_client.configuration, "host", "?")
        return StoreError(
            f"{doing} in {self._where()}: cannot reach the Kubernetes API at {host}: "
            f"{type(exc).__name__}: {exc}"
        )

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as exc:
            raise self._api_error(exc, doing) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._transport_error(exc, doing) from exc

    # -- encoding ----------------------------------------------------------------------------

    def _secret(self, name: str, record: _Record) -> client.V1Secret:
        payload = base64.b64encode(record.model_dump_json().encode()).decode()
        return client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=client.V1ObjectMeta(
                name=name, namespace=self.namespace, labels=_labels(record)
            ),
            data={DATA_KEY: payload},
        )

    def _decode(self, raw: dict[str, Any]) -> tuple[str, _Record] | None:
        """(Secret name, record) of a raw Secret dict; None if not one of ours.

        Raises StoreError (naming the Secret) if it is ours but unreadable."""
        meta = raw.get("metadata") or {}
        name = meta.get("name") or "?"
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            return None  # a server that ignored the label selector
        kind = labels.get(KIND_LABEL)
        model: type[_Record]
        if kind == "team" and name.startswith(TEAM_PREFIX):
            model = Team
        elif kind == "key" and name.startswith(KEY_PREFIX):
            model = ApiKeyRecord
        else:
            return None
        try:
            encoded = (raw.get("data") or {})[DATA_KEY]
            record = model.model_validate_json(base64.b64decode(encoded, validate=True))
        except (KeyError, TypeError, binascii.Error, ValidationError) as exc:
            reason = (
                f"no '{DATA_KEY}' data"
                if isinstance(exc, KeyError)
                else f"not a valid {model.__name__} record"
            )
            raise StoreError(
                f"Secret '{name}' in {self._where()} is not a valid llmplat {kind} ({reason}); "
                "fix or delete it"
            ) from None
        expected = (
            team_secret_name(record.name)
            if isinstance(record, Team)
            else key_secret_name(record.key_id)
        )
        if expected != name:
            raise StoreError(
                f"Secret '{name}' in {self._where()} holds the record of '{expected}'; "
                "fix or delete it"
            )
        return name, record

    @staticmethod
    def _registry(records: dict[str, _Record]) -> Registry:
        teams = {r.name: r for r in records.values() if isinstance(r, Team)}
        keys = {r.key_id: r for r in records.values() if isinstance(r, ApiKeyRecord)}
        return Registry(teams=dict(sorted(teams.items())), keys=dict(sorted(keys.items())))

    # -- reads -------------------------------------------------------------------------------

    def _list(self, selector: str = SELECTOR) -> tuple[list[dict[str, Any]], str | None]:
        """Raw Secret dicts matching ``selector`` and the list's resourceVersion."""
        secrets = self._call(
            "listing llmplat Secrets",
            self.api.list_namespaced_secret,
            self.namespace,
            label_selector=selector,
        )
        body = self.api.api_client.sanitize_for_serialization(secrets)
        items = body.get("items") or []
        rv = (body.get("metadata") or {}).get("resourceVersion") or None
        self.confirmed_at = time.monotonic()
        return items, rv

    def load(self) -> Registry:
        items, _ = self._list()
        records: dict[str, _Record] = {}
        for raw in items:
            decoded = self._decode(raw)
            if decoded is not None:
                records[decoded[0]] = decoded[1]
        return self._registry(records)

    def _team_exists(self, name: str) -> bool:
        try:
            self._call(
                f"reading team '{name}'",
                self.api.read_namespaced_secret,
                team_secret_name(name),
                self.namespace,
            )
        except NotFoundError:
            return False
        return True

    # -- writes ------------------------------------------------------------------------------

    def _put(self, name: str, record: _Record, *, create: bool, what: str) -> None:
        body = self._secret(name, record)
        if create:
            try:
                self._call(
                    f"creating {what}", self.api.create_namespaced_secret, self.namespace, body
                )
            except ConflictError:
                raise ConflictError(f"{what} already exists (in {self._where()})") from None
            except NotFoundError as exc:  # on create, 404 means the namespace is missing
                raise StoreError(
                    f"creating {what}: {self._where()} does not exist; create it first "
                    f"(kubectl create namespace {self.namespace})"
                ) from exc
        else:
            try:
                self._call(
                    f"replacing {what}",
                    self.api.replace_namespaced_secret,
                    name,
                    self.namespace,
                    body,
                )
            except NotFoundError:
                raise NotFoundError(f"no {what} (in {self._where()})") from None

    def put_team(self, team: Team, *, create: bool) -> None:
        self._put(team_secret_name(team.name), team, create=create, what=f"team '{team.name}'")

    def put_key(self, key: ApiKeyRecord, *, create: bool) -> None:
        if not self._team_exists(key.team):
            raise NotFoundError(f"no team '{key.team}' (in {self._where()})")
        self._put(key_secret_name(key.key_id), key, create=create, what=f"key '{key.key_id}'")

    def delete_team(self, name: str) -> None:
        if not self._team_exists(name):
            raise NotFoundError(f"no team '{name}' (in {self._where()})")
        # Keys first: if this is interrupted, the team (and the way to retry) remains, and no
        # key is ever left without its team.
        team_keys = f"{MANAGED_BY_LABEL}={MANAGED_BY},{KIND_LABEL}=key,{TEAM_LABEL}={name}"
        items, _ = self._list(team_keys)
        for raw in items:
            meta = raw.get("metadata") or {}
            labels = meta.get("labels") or {}
            if labels.get(KIND_LABEL) != "key" or labels.get(TEAM_LABEL) != name:
                continue  # a server that ignored the label selector
            self._delete(meta.get("name", ""), f"key Secret '{meta.get('name')}'")
        try:
            self._delete(team_secret_name(name), f"team '{name}'", missing_ok=False)
        except NotFoundError:
            raise NotFoundError(f"no team '{name}' (in {self._where()})") from None

    def _delete(self, secret: str, what: str, *, missing_ok: bool = True) -> None:
        try:
            self._call(
                f"deleting {what}", self.api.delete_namespaced_secret, secret, self.namespace
            )
        except NotFoundError:
            if not missing_ok:
                raise

    # -- watch -------------------------------------------------------------------------------

    def watch(self, on_change: Callable[[Registry], None], stop: threading.Event) -> None:
        """List, report, then follow a watch from the list's resourceVersion.

        ``on_change`` gets a snapshot once at start and after every event that changes it.
        On an expired resourceVersion (410) or any API/network error the store re-lists
        (after ``retry_s`` on errors) and goes on; the last good snapshot stays in force.
        An exception raised by ``on_change`` ends the watch and propagates.
        """
        last: list[Registry | None] = [None]

        def emit(records: dict[str, _Record]) -> None:
            snapshot = self._registry(records)
            if snapshot != last[0]:
                last[0] = snapshot
                try:
                    on_change(snapshot)
                except Exception as exc:
                    raise _CallbackError() from exc

        try:
            while not stop.is_set():
                try:
                    records, rv = self._initial(emit)
                except StoreError as exc:
                    log.error("key store not reloaded: %s", exc)
                    stop.wait(self._retry_s)
                    continue
                self._follow(records, rv, emit, stop)
        except _CallbackError as exc:
            assert exc.__cause__ is not None
            raise exc.__cause__ from None

    def _initial(self, emit: Callable[[dict[str, _Record]], None]) -> tuple[dict, str | None]:
        items, rv = self._list()
        records: dict[str, _Record] = {}
        for raw in items:
            try:
                decoded = self._decode(raw)
            except StoreError as exc:  # one broken Secret must not hide every other change
                log.error("key store: skipping %s", exc)
                continue
            if decoded is not None:
                records[decoded[0]] = decoded[1]
        emit(records)
        return records, rv

    def _follow(
        self,
        records: dict[str, _Record],
        rv: str | None,
        emit: Callable[[dict[str, _Record]], None],
        stop: threading.Event,
    ) -> None:
        """Apply watch events to ``records`` until ``stop``, a resync is due, or a re-list is
        needed (410 Gone or an error)."""
        resync_at = time.monotonic() + self._resync_s
        while not stop.is_set() and time.monotonic() < resync_at:
            w = watch.Watch()
            try:
                with closing(self._stream(w, rv)) as events:
                    for event in events:
                        rv = self._apply(event, records, emit) or rv
                        self.confirmed_at = time.monotonic()
                        if stop.is_set():
                            break
                # The server ended the watch itself (timeoutSeconds): nothing was missed.
                self.confirmed_at = time.monotonic()
            except ApiException as exc:
                if exc.status == 410:
                    log.info("key store watch expired (410 Gone); re-listing")
                else:
                    log.error("key store watch: %s", self._api_error(exc, "watching Secrets"))
                    stop.wait(self._retry_s)
                return
            except urllib3.exceptions.ReadTimeoutError:
                # A quiet stream the server did not end itself (it answered the watch, so it
                # is reachable): resume from rv.
                self.confirmed_at = time.monotonic()
                continue
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.error("key store watch: %s", self._transport_error(exc, "watching Secrets"))
                stop.wait(self._retry_s)
                return
            finally:
                w.stop()

    def _stream(self, w: watch.Watch, rv: str | None) -> Generator[dict[str, Any], None, None]:
        kwargs: dict[str, Any] = {
            "label_selector": SELECTOR,
            "timeout_seconds": self._watch_timeout_s,
            "allow_watch_bookmarks": True,
            "_request_timeout": (self._timeout, self._watch_read_timeout_s),
        }
        if rv:
            kwargs["resource_version"] = rv
        return w.stream(self.api.list_namespaced_secret, self.namespace, **kwargs)

    def _apply(
        self,
        event: dict[str, Any],
        records: dict[str, _Record],
        emit: Callable[[dict[str, _Record]], None],
    ) -> str | None:
        """Apply one watch event; return its resourceVersion."""
        kind = event.get("type")
        raw = event.get("raw_object") or {}
        meta = raw.get("metadata") or {}
        rv = meta.get("resourceVersion") or None
        if kind == "BOOKMARK":
            return rv
        name = meta.get("name")
        if kind in ("ADDED", "MODIFIED"):
            try:
                decoded = self._decode(raw)
            except StoreError as exc:  # keep the last good record, say why
                log.error("key store: ignoring change: %s", exc)
                return rv
            if decoded is None:
                if records.pop(name, None) is not None:  # relabelled out of the store
                    emit(records)
                return rv
            records[decoded[0]] = decoded[1]
            emit(records)
        elif kind == "DELETED":
            if records.pop(name, None) is not None:
                emit(records)
        return rv
