"""Reading the audit log a test's gateway (or CLI) wrote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


def audit_lines(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The lines written so far (of one ``kind``, or all)."""
    text = path.read_text() if path.exists() else ""
    lines = [json.loads(x) for x in text.splitlines()]
    return [x for x in lines if kind is None or x["kind"] == kind]


async def wait_audit_lines(path: Path, kind: str, n: int) -> list[dict[str, Any]]:
    """At least ``n`` lines of ``kind`` (the sink writes from a background thread), or what
    there is after about 2 s."""
    lines: list[dict[str, Any]] = []
    for _ in range(100):
        lines = await asyncio.to_thread(audit_lines, path, kind)
        if len(lines) >= n:
            break
        await asyncio.sleep(0.02)
    return lines
