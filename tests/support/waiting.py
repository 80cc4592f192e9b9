"""Polling helpers shared by the suites (instead of hand-written wait loops)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    check: Callable[[], bool], *, timeout_s: float = 5.0, interval_s: float = 0.01, what: str = ""
) -> float:
    """Wait until ``check()`` is true; return the seconds it took (fails past ``timeout_s``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not true within {timeout_s} s: {what or check}")
        await asyncio.sleep(interval_s)
    return time.monotonic() - start
