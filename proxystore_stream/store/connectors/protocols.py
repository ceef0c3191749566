"""The Connector protocol: where a Store keeps serialized objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Protocol
from typing import Self
from typing import runtime_checkable

from proxystore_stream._types import Buffer

__all__ = ["Connector", "Frames", "Key"]

Key = str
"""Connector keys are plain strings: safe to carry in an event envelope."""

Frames = Sequence[Buffer]
"""A serialized object as a list of buffers, stored back to back as one blob.

Connectors write the frames without joining them where they can (a file is
written with one vectored write), so large buffers are not copied.
"""


@runtime_checkable
class Connector(Protocol):
    """Key-value storage of serialized objects for a Store.

    Connectors are plain objects with these methods; to be usable from a
    message (so consumers in other processes can rebuild them) a connector
    kind is registered with `proxystore_stream.store.register_connector` and
    rebuilt with `from_config(config())`.
    """

    kind: str
    """Registry name of this connector kind, e.g. ``"file"``."""

    def put(self, frames: Frames) -> Key:
        """Store one blob and return its new key."""
        ...

    def put_batch(self, blobs: Sequence[Frames]) -> list[Key]:
        """Store several blobs at once (one round trip where possible)."""
        ...

    def get(self, key: Key) -> bytes | bytearray | None:
        """Return the blob stored under `key`, or None if there is none.

        Raises:
            UnsafeKeyError: If the key is not one this connector could have made.
        """
        ...

    def exists(self, key: Key) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def evict(self, key: Key) -> None:
        """Remove the blob under `key` (no error if it is already gone)."""
        ...

    def config(self) -> dict[str, Any]:
        """Return plain msgpack-safe data from which `from_config` rebuilds it."""
        ...

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Rebuild a connector from `config()` output (possibly in another process).

        Raises:
            ValueError: If the config is not valid for this kind.
        """
        ...

    def close(self) -> None:
        """Release resources (idempotent)."""
        ...
