"""Ray's GCS key-value store (where the autoscaler publishes its reports), in memory."""

from __future__ import annotations


class MemoryKv:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.puts = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.puts += 1
        self.data[key] = value

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)
