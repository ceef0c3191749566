"""Object stores: where large objects go while their events travel the broker."""

from __future__ import annotations

from proxystore_stream.events import StoreConfig
from proxystore_stream.store.base import Store
from proxystore_stream.store.connectors.file import FileConnector
from proxystore_stream.store.connectors.memory import MemoryConnector
from proxystore_stream.store.connectors.protocols import Connector
from proxystore_stream.store.factory import StoreFactory
from proxystore_stream.store.registry import register_connector

__all__ = [
    "Connector",
    "FileConnector",
    "MemoryConnector",
    "Store",
    "StoreConfig",
    "StoreFactory",
    "register_connector",
]
