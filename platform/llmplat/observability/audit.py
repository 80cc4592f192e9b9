"""One JSON line per request: who, which model, outcome, tokens, latency. Never any text.

Lines go through a queue to a background thread (``QueueHandler``/``QueueListener``), so
the event loop never blocks on the sink's I/O.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmplat.gateway.state import RequestRecord


def audit_line(record: RequestRecord) -> dict[str, Any]:
    usage = record.usage
    return {
        "time": datetime.fromtimestamp(record.wall_started, UTC).isoformat(timespec="milliseconds"),
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


AUDIT_FILE_MODE = 0o600


class AuditLog:
    """Writes audit lines to a file (appending) or stdout, off the event loop."""

    def __init__(self, sink: str | Path) -> None:
        self._logger = logging.getLogger(f"llmplat.audit.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if str(sink) == "-":
            handler: logging.Handler = logging.StreamHandler(sys.stdout)
        else:
            path = Path(sink)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: who called which model when is not for other users of the node.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, AUDIT_FILE_MODE))
            os.chmod(path, AUDIT_FILE_MODE)  # also a file an older version created
            handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._logger.addHandler(logging.handlers.QueueHandler(q))
        self._listener = logging.handlers.QueueListener(q, handler)
        self._listener.start()

    def write(self, record: RequestRecord) -> None:
        self._logger.info(json.dumps(audit_line(record), separators=(",", ":")))

    def close(self) -> None:
        self._listener.stop()
        self._handler.close()
