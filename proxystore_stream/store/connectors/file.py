"""FileConnector: one file per object in a directory (shared file systems too)."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Self

from proxystore_stream._types import Buffer
from proxystore_stream.exceptions import UnsafeKeyError
from proxystore_stream.store.connectors.protocols import Frames
from proxystore_stream.store.connectors.protocols import Key

__all__ = ["FileConnector"]

_KEY = re.compile(r"[0-9a-f]{32}")
# os.writev accepts at most IOV_MAX buffers per call.
_IOV_MAX = 1024


class FileConnector:
    """Keeps each serialized object in its own file under `directory`.

    Works across processes on one host, and across hosts on a shared file
    system. Frames are written with one vectored write (no joining copy) and
    read back with one read; NumPy arrays come back as read-only views of
    that buffer (no copy: call ``.copy()`` to modify one).

    Args:
        directory: Where the files go (created if missing).

    Keys are 32 lowercase hex digits made by `put`; any other key (a path,
    ``../``) is refused with `UnsafeKeyError`, so a key from a message can
    never reach outside the directory.
    """

    kind = "file"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not isinstance(directory, str | os.PathLike):
            raise TypeError("directory must be a str or path")
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: Key) -> str:
        if type(key) is not str or _KEY.fullmatch(key) is None:
            raise UnsafeKeyError(
                f"FileConnector keys are 32 hex digits made by put(); refused {key!r}",
            )
        return os.path.join(self.directory, key)

    def put(self, frames: Frames) -> Key:
        """Write one blob to a new file and return its key."""
        key = uuid.uuid4().hex
        fd = os.open(self._path(key), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            views = [memoryview(frame).cast("B") for frame in frames]
            while views:
                written = os.writev(fd, views[:_IOV_MAX])
                # Drop what was written; keep the rest of a partial write.
                while views and written >= views[0].nbytes:
                    written -= views[0].nbytes
                    views.pop(0)
                if views and written:
                    views[0] = views[0][written:]
        finally:
            os.close(fd)
        return key

    def put_batch(self, blobs: Sequence[Sequence[Buffer]]) -> list[Key]:
        """Write several blobs."""
        return [self.put(frames) for frames in blobs]

    def get(self, key: Key) -> bytes | None:
        """Read the blob under `key`, or None if there is none."""
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                # One read into a new bytes object of the file's size: no
                # zero-filled buffer, no later copy.
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, key: Key) -> bool:
        """Whether a file for `key` exists."""
        return os.path.exists(self._path(key))

    def evict(self, key: Key) -> None:
        """Delete the file for `key`, if any."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def config(self) -> dict[str, Any]:
        """Return the directory, from which `from_config` rebuilds the connector."""
        return {"directory": str(self.directory)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Rebuild from `config()` output.

        Raises:
            ValueError: If the config has no directory string.
        """
        directory = config.get("directory")
        if type(directory) is not str or not directory:
            raise ValueError("FileConnector config needs a 'directory' string")
        return cls(directory)

    def close(self, *, clear: bool = False) -> None:
        """Release resources; with `clear`, delete the object files it made.

        Args:
            clear: Delete every file in the directory named like a key.
        """
        if clear and self.directory.is_dir():
            for path in self.directory.iterdir():
                if _KEY.fullmatch(path.name):
                    path.unlink(missing_ok=True)
