"""Store: serialize objects into a connector and hand out proxies of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Generic
from typing import TypeVar

from proxystore_stream._context import ClosingContext
from proxystore_stream._types import Buffer
from proxystore_stream.events import StoreConfig
from proxystore_stream.proxy import Proxy
from proxystore_stream.serialize import PickleSerializer
from proxystore_stream.serialize import Serializer
from proxystore_stream.serialize import serializer_for
from proxystore_stream.store.connectors.protocols import Connector
from proxystore_stream.store.factory import StoreFactory

__all__ = ["Store"]

T = TypeVar("T")

_DEFAULT_SERIALIZER = PickleSerializer()


class Store(ClosingContext, Generic[T]):
    """A named object store over a connector.

    Args:
        name: Name of the store (carried in events and proxies).
        connector: Where serialized objects are kept (`FileConnector`,
            `MemoryConnector`, `RedisConnector`, or any `Connector`).
        serializer: How objects become bytes (default: pickle protocol 5
            with out-of-band buffers).

    Thread-safe as far as its connector is (the built-in ones are).
    """

    def __init__(
        self,
        name: str,
        connector: Connector,
        *,
        serializer: Serializer | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        kind = getattr(connector, "kind", None)
        if not isinstance(kind, str) or not callable(getattr(connector, "put", None)):
            raise TypeError(
                "connector must implement the Connector protocol (with a `kind`)",
            )
        self.name = name
        self.connector = connector
        self.serializer: Serializer = serializer or _DEFAULT_SERIALIZER
        self._configs: dict[str, StoreConfig] = {}

    def __repr__(self) -> str:
        return f"Store({self.name!r}, {type(self.connector).__name__})"

    def config(self, serializer: str | None = None) -> StoreConfig:
        """Return what a consumer in any process needs to reach this store.

        Args:
            serializer: Name of the serializer the objects were written with
                (default: this store's).
        """
        name = serializer or self.serializer.name
        config = self._configs.get(name)
        if config is None:
            config = self._configs[name] = StoreConfig(
                self.name,
                self.connector.kind,
                self.connector.config(),
                name,
            )
        return config

    def serializer_for(self, obj: Any) -> Serializer:
        """The serializer to write `obj` with: raw for `bytes` under pickle."""
        return serializer_for(self.serializer, obj)

    def put(self, obj: T) -> str:
        """Serialize and store `obj`; return its key."""
        return self.connector.put(self.serializer.dumps(obj))

    def put_batch(self, objs: Sequence[T]) -> list[str]:
        """Serialize and store several objects; return their keys in order."""
        return self.connector.put_batch([self.serializer.dumps(obj) for obj in objs])

    def put_serialized_batch(self, blobs: Sequence[Sequence[Buffer]]) -> list[str]:
        """Store objects already serialized with this store's serializer."""
        return self.connector.put_batch(blobs)

    def get(self, key: str, default: Any = None) -> T | Any:
        """Return the object under `key`, or `default` if there is none."""
        data = self.connector.get(key)
        if data is None:
            return default
        return self.serializer.loads(data)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        return self.connector.exists(key)

    def evict(self, key: str) -> None:
        """Remove the object under `key` (no error if it is gone)."""
        self.connector.evict(key)

    def proxy(self, obj: T, *, evict: bool = False) -> Proxy[T]:
        """Store `obj` and return a lazy proxy of it."""
        return self.proxy_from_key(self.put(obj), evict=evict)

    def proxy_from_key(self, key: str, *, evict: bool = False) -> Proxy[T]:
        """Return a lazy proxy of the object stored under `key`.

        Warning:
            With `evict=True` the object is removed when the proxy first
            resolves; other proxies of the same key then fail with
            `ProxyResolveMissingKeyError`.
        """
        return Proxy(StoreFactory(key, self.config(), evict))

    def close(self) -> None:
        """Close the connector (idempotent)."""
        from proxystore_stream.store.registry import forget_store

        self.connector.close()
        for config in [self.config(), *self._configs.values()]:
            forget_store(config)

    @classmethod
    def from_config(cls, config: StoreConfig) -> Store[Any]:
        """Return this process's store for `config` (built once, then cached).

        Raises:
            UnknownConnectorError: If the config names an unregistered kind.
        """
        from proxystore_stream.store.registry import store_from_config

        return store_from_config(config)
