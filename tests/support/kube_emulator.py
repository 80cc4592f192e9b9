"""An in-memory Kubernetes API (kmock's emulator) on 127.0.0.1, for key store and gateway tests.

kmock's ``KubernetesEmulator`` stores objects and serves create/get/list/patch/delete/watch.
:class:`KubeEmulator` adds what the official client and a real watch need:

* ``GET /version/`` (the client's path) with all nine fields the client validates;
* ``PUT`` (``replace_*``): a full replace, 404 if absent, a MODIFIED event;
* ``metadata.resourceVersion`` (one counter), ``uid``, ``creationTimestamp``, ``namespace``;
* label selectors (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``) on list and watch;
* watch semantics of a real API server: without ``resourceVersion`` it starts with ADDED
  events for what exists; with one it replays every event after it (from a log), so a
  resumed watch loses nothing; ``timeoutSeconds`` ends the stream; a version older than the
  log (see :meth:`KubeEmulator.compact`) gets an ERROR 410 event, as from a compacted etcd.

Like kmock it does no schema validation and ignores dry-run.

Usage::

    with running_kube_emulator() as kube:          # or the ``kube_emulator`` fixture
        api = kube.core_v1()                        # kubernetes.client.CoreV1Api
        ...
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import pytest
from kmock._internal import aiobus, k8s, rendering
from kubernetes import client

T = TypeVar("T")

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-kmock",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class _Clock:
    """The cluster-wide resourceVersion counter."""

    def __init__(self) -> None:
        self._next = itertools.count(1)
        self.current = 0

    def tick(self) -> int:
        self.current = next(self._next)
        return self.current


@attrs.define(weakref_slot=True)
class _LoggedBus(aiobus.Bus[Any]):
    """A resource's event bus that stamps resourceVersions and keeps an event log.

    The emulator puts events only while holding its lock, so the log is in version order."""

    clock: _Clock = attrs.field(factory=_Clock, kw_only=True)
    log: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    log_floor: int = attrs.field(default=0, init=False)  # versions <= floor were compacted

    async def put(self, *items: Any) -> None:
        stamped = []
        for event in items:
            rv = str(self.clock.tick())
            obj = event.get("object")
            if isinstance(obj, dict):
                # In place: for ADDED/MODIFIED this is the stored object's own metadata dict.
                obj.setdefault("metadata", {})["resourceVersion"] = rv
            event = copy.deepcopy(event)
            self.log.append(event)
            stamped.append(event)
        await super().put(*stamped)


def _parse_selector(selector: str | None) -> list[tuple[str, str, str | None]]:
    terms: list[tuple[str, str, str | None]] = []
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append(("!=", k.strip(), v.strip()))
        elif "==" in term:
            k, v = term.split("==", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif "=" in term:
            k, v = term.split("=", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif term.startswith("!"):
            terms.append(("!", term[1:].strip(), None))
        elif " in " in term or " notin " in term:
            raise ValueError(f"set-based label selectors are not emulated: {term!r}")
        else:
            terms.append(("exists", term, None))
    return terms


def _matches(obj: dict[str, Any], terms: list[tuple[str, str, str | None]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@attrs.define(kw_only=True)
class KubeEmulator(k8s.KubernetesEmulator):
    """kmock's emulator with replace, resourceVersions, label selectors and real watches."""

    honor_watch_timeout: bool = True
    """False: ignore ``timeoutSeconds`` like kmock itself (streams end only on disconnect)."""
    honor_label_selectors: bool = True
    """False: answer lists and watches with every object, whatever ``labelSelector`` says
    (as some API proxies and aggregated servers do); clients must filter themselves."""
    _clock: _Clock = attrs.field(factory=_Clock, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = collections.defaultdict(lambda: _LoggedBus(clock=self._clock))
        self.fallback["get /version/"] << self._serve_version_info
        self.fallback["get /version"] << self._serve_version_info

    async def _serve_version_info(self, request: rendering.Request) -> rendering.Payload:
        return dict(SERVER_VERSION)

    def compact(self) -> None:
        """Forget the event log, like etcd compaction: resuming a watch from any version
        before now gets 410 Gone (the client must re-list)."""
        for bus in self._buses.values():
            bus.log.clear()
            bus.log_floor = self._clock.current

    def expire(self) -> None:
        """Advance the clock and compact: every watcher's resourceVersion is now too old, so
        its next resume gets 410 Gone and it must re-list (changes made behind its back, e.g.
        through ``objects``, show up only then)."""
        self._clock.tick()
        self.compact()

    def fail_namespace(
        self, namespace: str, status: int = 403, message: str = "access denied"
    ) -> None:
        """Answer every request in ``namespace`` with an error Status (e.g. missing RBAC).
        Like kmock's reactions, it does not stop the emulator from storing a write."""
        self.fail(kmock.namespace(namespace), status, message)

    def fail(self, criteria: Any, status: int = 403, message: str = "access denied") -> None:
        """Answer requests matching kmock ``criteria`` (e.g. ``"delete /api/v1/…"``) with an
        error Status."""
        status_body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "Forbidden" if status == 403 else "Failure",
            "code": status,
        }
        self[criteria] << status << status_body

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.name is None and request.method == "POST":
            if isinstance(request.data, dict):  # a create: fill what a real server sets
                meta = request.data.setdefault("metadata", {})
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.now(UTC).isoformat())
        if (
            request.resource is not None
            and request.name is not None
            and request.subresource is None
            and request.method == "PUT"
        ):
            return await self._replace(request)
        return await super()._handle(request)

    async def _replace(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request.name is not None
        try:
            async with self._lock:
                key = (request.resource, request.namespace, request.name)
                if key not in self._objects or self._objects[key].deleted:
                    raise k8s.KubernetesObjectNotFoundError()
                old = self._objects[key].raw
                data = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
                meta = data.setdefault("metadata", {})
                for field in ("uid", "creationTimestamp", "namespace"):
                    if field in (old.get("metadata") or {}):
                        meta[field] = old["metadata"][field]
                self._objects[key].create(data)
                raw = self._objects[key].last.raw
                await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
                result = self._objects[key].raw
        except k8s.KubernetesError as exc:
            return await self._render_error(exc)
        return aiohttp.web.json_response(result)

    def _selector(self, request: rendering.Request) -> list[tuple[str, str, str | None]]:
        if not self.honor_label_selectors:
            return []
        return _parse_selector(request.params.get("labelSelector"))

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        terms = self._selector(request)
        async with self._lock:
            rv = self._clock.current
        result = await super()._serve_list(request)
        assert isinstance(result, dict)
        result["items"] = [obj for obj in result["items"] if _matches(obj, terms)]
        result["metadata"] = {"resourceVersion": str(rv)}
        result.setdefault("kind", "List")
        result.setdefault("apiVersion", "v1")
        return result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now: the client waits for them
        assert request.resource is not None
        terms = self._selector(request)
        since_param = request.params.get("resourceVersion") or "0"
        since = int(since_param) if since_param.isdigit() else 0
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        if not self.honor_watch_timeout:
            timeout = None
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None

        def wanted(obj: dict[str, Any]) -> bool:
            ns = (obj.get("metadata") or {}).get("namespace")
            return (request.namespace is None or ns == request.namespace) and _matches(obj, terms)

        bus: _LoggedBus = self._buses[request.resource]
        async with self._lock:  # the snapshot (or log) and the bus position agree
            marker = await bus.mark()
            if since and since < bus.log_floor:
                initial: list[dict[str, Any]] | None = None
            elif since:
                initial = [copy.deepcopy(e) for e in bus.log if _rv(e["object"]) > since]
            else:
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for (res, _, _), obj in self._objects.items()
                    if res == request.resource and not obj.deleted
                ]
        try:
            if initial is None:
                yield {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f"too old resource version: {since} ({bus.log_floor})",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
                return
            for event in initial:
                if wanted(event["object"]):
                    yield event
            stream = bus.stream(since=marker).__aiter__()
            while True:
                remaining = None
                if deadline is not None:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        return
                try:
                    event = await asyncio.wait_for(stream.__anext__(), remaining)
                except (TimeoutError, StopAsyncIteration):
                    return
                if wanted(event.get("object") or {}):
                    yield event
        finally:
            await bus.unmark(marker)


@dataclass
class EmulatorHandle:
    """A running :class:`KubeEmulator`: its URL and clients for it."""

    emulator: KubeEmulator
    url: str
    loop: asyncio.AbstractEventLoop
    stop: Callable[[], None] = lambda: None
    """Stop serving now (an API server going down); also done on leaving the context."""

    def configuration(self) -> client.Configuration:
        cfg = client.Configuration()
        cfg.host = self.url
        return cfg

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(self.configuration())

    def core_v1(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client())

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop (to read or change its state safely)."""

        async def run() -> T:
            async with self.emulator._lock:
                return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def compact(self) -> None:
        self.call(self.emulator.compact)

    def expire(self) -> None:
        self.call(self.emulator.expire)

    def fail_namespace(self, namespace: str, status: int = 403, message: str = "denied") -> None:
        self.call(lambda: self.emulator.fail_namespace(namespace, status, message))

    def fail(self, criteria: Any, status: int = 403, message: str = "denied") -> None:
        self.call(lambda: self.emulator.fail(criteria, status, message))

    def objects(self, namespace: str) -> dict[str, dict[str, Any]]:
        """Name → raw object of every live Secret in ``namespace`` (as stored)."""

        def collect() -> dict[str, dict[str, Any]]:
            return {
                name: copy.deepcopy(obj.raw)
                for (res, ns, name), obj in self.emulator.objects.items()
                if res.plural == "secrets" and ns == namespace and not obj.deleted
            }

        return self.call(collect)

    def put_object(self, namespace: str, raw: dict[str, Any]) -> None:
        """Store a Secret directly, without an event (as if a watcher missed it)."""
        name = raw["metadata"]["name"]

        def put() -> None:
            self.emulator.objects["v1/secrets", namespace, name] = raw

        self.call(put)

    def request_bodies(self) -> list[bytes]:
        """The body of every request the emulator has served."""
        return self.call(lambda: [r.body for r in self.emulator._requests])


@contextmanager
def running_kube_emulator(
    host: str = "127.0.0.1", port: int | None = None, **options: Any
) -> Iterator[EmulatorHandle]:
    """Start a :class:`KubeEmulator` (``options`` are its fields) serving ``v1/secrets`` (and
    anything created) on ``host`` and ``port`` (default: a free one), in a daemon thread with
    its own event loop; stop it on exit. The same port again is an API server restart."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            async with (
                KubeEmulator(**options) as emulator,
                kmock.Server(emulator, host=host, port=port) as server,
            ):
                emulator.resources["v1/secrets"] = kmock.ResourceInfo(
                    kind="Secret", singular="secret", namespaced=True
                )
                box["handle"] = EmulatorHandle(
                    emulator, str(server.url).rstrip("/"), asyncio.get_running_loop()
                )
                box["stop"] = stop
                started.set()
                await stop.wait()
        except BaseException as exc:
            box["error"] = exc
            started.set()
            raise

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="kube-emulator")
    thread.daemon = True
    thread.start()
    if not started.wait(30) or "error" in box:
        raise RuntimeError(f"the Kubernetes emulator did not start: {box.get('error')!r}")
    handle: EmulatorHandle = box["handle"]

    def stop() -> None:
        if thread.is_alive():
            handle.loop.call_soon_threadsafe(box["stop"].set)
            thread.join(timeout=10)

    handle.stop = stop
    try:
        yield handle
    finally:
        stop()


@pytest.fixture
def kube_emulator() -> Iterator[EmulatorHandle]:
    """A fresh emulator per test. Import it into a test module (or a conftest) to use it."""
    with running_kube_emulator() as handle:
        yield handle


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig at ``path`` whose current context is the API server at ``url``."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}],
                "current-context": "emu",
            }
        )
    )
    return path
