"""Connector kinds a message may name, and the stores built from configs.

A store config in an event names a connector *kind*; the consumer rebuilds
the connector only if that kind is registered here. Nothing named in a
message is ever imported: built-in kinds map to fixed "module:Class" strings
imported on first use, third-party kinds join with `register_connector`.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING
from typing import Any

import msgpack

from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import UnknownConnectorError

if TYPE_CHECKING:
    from proxystore_stream.store.base import Store

__all__ = ["connector_class", "register_connector", "store_from_config"]

_BUILTIN: dict[str, str] = {
    "memory": "proxystore_stream.store.connectors.memory:MemoryConnector",
    "file": "proxystore_stream.store.connectors.file:FileConnector",
    "redis": "proxystore_stream.store.connectors.redis:RedisConnector",
}
_classes: dict[str, type[Any]] = {}
_stores: dict[bytes, Store[Any]] = {}
_lock = threading.Lock()


def register_connector(kind: str, cls: type[Any]) -> None:
    """Let consumers rebuild connectors of `kind` from store configs.

    Args:
        kind: The name configs carry (the connector's `kind` attribute).
        cls: The connector class; it must provide `from_config(dict)`.

    Raises:
        TypeError: If `cls` has no `from_config`.
        ValueError: If `kind` is empty or a built-in kind.
    """
    if not kind or not isinstance(kind, str):
        raise ValueError("kind must be a non-empty str")
    if kind in _BUILTIN:
        raise ValueError(f"{kind!r} is a built-in connector kind")
    if not callable(getattr(cls, "from_config", None)):
        raise TypeError(f"{cls!r} has no from_config() classmethod")
    _classes[kind] = cls


def connector_class(kind: str) -> type[Any]:
    """Return the connector class registered as `kind`.

    Raises:
        UnknownConnectorError: If no such kind is registered.
        MissingDependencyError: If the kind needs an extra not installed.
    """
    cls = _classes.get(kind)
    if cls is not None:
        return cls
    target = _BUILTIN.get(kind)
    if target is None:
        raise UnknownConnectorError(kind, [*_BUILTIN, *_classes])
    module_name, _, class_name = target.partition(":")
    loaded: type[Any] = getattr(importlib.import_module(module_name), class_name)
    _classes[kind] = loaded
    return loaded


def _cache_key(config: StoreConfig) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [config.name, config.kind, config.options, config.serializer],
        use_bin_type=True,
    )


def store_from_config(config: StoreConfig) -> Store[Any]:
    """Return this process's store for `config`, building it on first use.

    Stores are cached per process, so every proxy of one store shares one
    connection.

    Raises:
        UnknownConnectorError: If the config's kind is not registered.
        ValueError: If the connector rejects the options.
    """
    cache_key = _cache_key(config)
    store = _stores.get(cache_key)
    if store is not None:
        return store
    with _lock:
        store = _stores.get(cache_key)
        if store is None:
            from proxystore_stream.serialize import get_serializer
            from proxystore_stream.store.base import Store

            connector = connector_class(config.kind).from_config(dict(config.options))
            store = Store(
                config.name,
                connector,
                serializer=get_serializer(config.serializer),
            )
            _stores[cache_key] = store
    return store


def forget_store(config: StoreConfig) -> None:
    """Drop a cached store (after it was closed)."""
    cache_key = _cache_key(config)
    _stores.pop(cache_key, None)
