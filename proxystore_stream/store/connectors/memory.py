"""MemoryConnector: objects in a dict in this process."""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any
from typing import Self

from proxystore_stream._types import Buffer
from proxystore_stream.exceptions import StoreError
from proxystore_stream.store.connectors.protocols import Frames
from proxystore_stream.store.connectors.protocols import Key

__all__ = ["MemoryConnector"]

_instances: weakref.WeakValueDictionary[str, MemoryConnector] = weakref.WeakValueDictionary()


class MemoryConnector:
    """Keeps serialized objects in memory, in this process only.

    Its config names the instance, so proxies resolve in the same process
    (other threads included) but not in another process: use `FileConnector`
    or `RedisConnector` to cross processes.
    """

    kind = "memory"

    def __init__(self) -> None:
        self._id = uuid.uuid4().hex
        self._data: dict[Key, bytes] = {}
        self._lock = threading.Lock()
        _instances[self._id] = self

    def put(self, frames: Frames) -> Key:
        """Store one blob and return its key."""
        key = uuid.uuid4().hex
        blob = b"".join(frames)
        with self._lock:
            self._data[key] = blob
        return key

    def put_batch(self, blobs: Sequence[Sequence[Buffer]]) -> list[Key]:
        """Store several blobs."""
        return [self.put(frames) for frames in blobs]

    def get(self, key: Key) -> bytes | None:
        """Return the blob under `key`, or None."""
        return self._data.get(key)

    def exists(self, key: Key) -> bool:
        """Whether `key` is stored."""
        return key in self._data

    def evict(self, key: Key) -> None:
        """Remove `key` if present."""
        with self._lock:
            self._data.pop(key, None)

    def config(self) -> dict[str, Any]:
        """Name this instance (valid in this process only)."""
        return {"instance": self._id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Find the instance named by `config` in this process.

        Raises:
            StoreError: If the instance does not live in this process.
        """
        instance = _instances.get(str(config.get("instance")))
        if instance is None:
            raise StoreError(
                "MemoryConnector data lives in the process that created it; "
                "use FileConnector or RedisConnector to share objects "
                "between processes.",
            )
        return instance  # type: ignore[return-value]

    def close(self) -> None:
        """Drop all stored data."""
        with self._lock:
            self._data.clear()
