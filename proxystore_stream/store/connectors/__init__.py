"""Store connectors that need no extra. `RedisConnector` lives in `.redis`."""

from __future__ import annotations

from proxystore_stream.store.connectors.file import FileConnector
from proxystore_stream.store.connectors.memory import MemoryConnector
from proxystore_stream.store.connectors.protocols import Connector

__all__ = ["Connector", "FileConnector", "MemoryConnector"]
