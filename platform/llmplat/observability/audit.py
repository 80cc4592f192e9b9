"""The audit log: one JSON line per event, never any text or secret. Three kinds (the
``kind`` field): ``request`` (every generation request: who, which model, outcome, tokens,
latency), ``admin`` (every admin API call and every ``llmplat teams|keys`` command: who,
what, which team or key, outcome), ``auth_failure`` (every refused credential on any route:
route, client, reason). Schema: docs/teams-and-quotas.md#audit.

Lines are gathered on the event loop and handed to a writer thread in batches (at most every
``flush_interval_s``, or at ``MAX_BATCH`` lines): one thread wake-up per batch instead of one
per request, so the event loop never blocks on the sink's I/O and does not trade the GIL
with the writer on every request (a line per request through a logging queue cost the
gateway a large share of its own CPU under load; docs: Benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from llmplat.observability.record import AdminAction, AuthFailure, RequestRecord

AuditEntry = RequestRecord | AdminAction | AuthFailure


def _time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def audit_line(entry: AuditEntry) -> dict[str, Any]:
    """The JSON object of one entry (its ``kind`` says which fields follow)."""
    if isinstance(entry, AdminAction):
        return admin_line(entry)
    if isinstance(entry, AuthFailure):
        return auth_failure_line(entry)
    return request_line(entry)


def request_line(record: RequestRecord) -> dict[str, Any]:
    usage = record.usage
    return {
        "time": _time(record.wall_started),
        "kind": "request",
        "request_id": record.request_id,
        "team": record.team,
        "key_id": record.key_id,
        "model": record.model,
        "endpoint": record.endpoint,
        "stream": record.stream,
        "status": record.status,
        "error_code": record.error_code,
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else 0,
        "latency_ms": round((record.ended - record.started) * 1000, 1),
        "ttft_ms": None if record.first_token_s is None else round(record.first_token_s * 1000, 1),
        "client": record.client,
        "bytes": record.response_bytes,
    }


def admin_line(action: AdminAction) -> dict[str, Any]:
    return {
        "time": _time(action.wall_time),
        "kind": "admin",
        "request_id": action.request_id,
        "actor": action.actor,
        "client": action.client,
        "action": action.action,
        "team": action.team,
        "key_id": action.key_id,
        "new_key_id": action.new_key_id,
        "ok": action.ok,
        "status": action.status,
        "error_code": action.error_code,
    }


def auth_failure_line(failure: AuthFailure) -> dict[str, Any]:
    return {
        "time": _time(failure.wall_time),
        "kind": "auth_failure",
        "request_id": failure.request_id,
        "route": failure.route,
        "client": failure.client,
        "reason": failure.reason,
        "key_id": failure.key_id,
        "status": failure.status,
    }


AUDIT_FILE_MODE = 0o600


FLUSH_INTERVAL_S = 0.1
MAX_BATCH = 512


class AuditLog:
    """Appends audit lines to a file, or writes them to stdout, from a thread of its own."""

    def __init__(
        self,
        sink: str | Path,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        console: TextIO | None = None,
    ) -> None:
        """``sink``: a path, or ``-`` for ``console`` (default stdout; the CLI, whose stdout
        is a key a script captures, passes stderr)."""
        if str(sink) == "-":
            self._stream: TextIO = console or sys.stdout
            self._owned = False
        else:
            path = Path(sink)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: who called which model when is not for other users of the node.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, AUDIT_FILE_MODE)
            os.chmod(path, AUDIT_FILE_MODE)  # also a file an older version created
            self._stream = os.fdopen(fd, "a", encoding="utf-8")
            self._owned = True
        self._interval = flush_interval_s
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._batches: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_batches, name="llmplat-audit")
        self._writer.daemon = True
        self._writer.start()

    def write(self, entry: AuditEntry) -> None:
        self._lines.append(json.dumps(audit_line(entry), separators=(",", ":")))
        if len(self._lines) >= MAX_BATCH:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a script, a test): write at once
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Hand the lines gathered so far to the writer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            self._batches.put(self._lines)
            self._lines = []

    def _write_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._stream.write("".join(f"{line}\n" for line in batch))
                self._stream.flush()
            except OSError as exc:  # a full disk must not stop serving; say so on stderr
                print(f"llmplat: writing the audit log failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Write everything gathered, then stop the writer."""
        self.flush()
        self._batches.put(None)
        self._writer.join(timeout=10)
        if self._owned:
            self._stream.close()


class AuditRecorder:
    """Where a finished request's record goes: every request to the audit log, failures
    (5xx) also to the server log (a log record per request through Ray's handlers is too
    costly to write for every success)."""

    def __init__(self, audit: AuditLog, log_failure: Callable[[RequestRecord], None]) -> None:
        self._audit = audit
        self._log_failure = log_failure

    def __call__(self, record: RequestRecord) -> None:
        if record.status >= 500:
            self._log_failure(record)
        self._audit.write(record)
