"""A zarr LocalStore that fsyncs every key it writes and remembers each key's sha256.

zarr's own LocalStore already replaces files atomically; this adds durability (fsync before the
rename) and the checksums the commit manifest needs, computed once while the bytes are in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Self

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from data.files import atomic_write_bytes


class DurableLocalStore(LocalStore):
    def __init__(self, root: Path | str, *, read_only: bool = False, fsync: bool = True) -> None:
        super().__init__(root, read_only=read_only)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.written: dict[str, tuple[str, int]] = {}  # key -> (sha256, size)
        self._dirty: set[str] = set()  # keys written since the last take_dirty()

    def with_read_only(self, read_only: bool = False) -> Self:
        return type(self)(root=self.root, read_only=read_only, fsync=self.fsync)

    def _put_durable(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        data = value.as_buffer_like()
        view = memoryview(data).cast("B")
        digest = hashlib.sha256(view).hexdigest()
        atomic_write_bytes(self.root / key, view, fsync=self.fsync, exclusive=exclusive)
        with self._lock:
            self.written[key] = (digest, len(view))
            self._dirty.add(key)

    def take_dirty(self) -> set[str]:
        """Keys written since the last call: their directories still need an fsync."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        self._put_durable(key, value)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        await self._ensure_open()
        self._check_writable()
        await asyncio.to_thread(self._put_durable, key, value, exclusive)

    def _forget(self, key: str) -> None:
        with self._lock:
            for k in [k for k in self.written if k == key or k.startswith(key.rstrip("/") + "/")]:
                del self.written[k]

    def delete_sync(self, key: str) -> None:
        super().delete_sync(key)
        self._forget(key)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        self._forget(key)

    async def delete_dir(self, prefix: str) -> None:
        await super().delete_dir(prefix)
        self._forget(prefix)
