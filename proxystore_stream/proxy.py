"""Lazy, transparent proxies of objects in a store.

A `Proxy` behaves as its target (attributes, operators, `isinstance`) and
fetches it from the store on first use, once. Pickling a proxy does NOT
resolve it: the pickle carries only the factory (key + store config), so a
proxy can be forwarded to another process and resolved where the data is
needed.

Built on lazy-object-proxy's C implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any
from typing import Generic
from typing import TypeVar

import lazy_object_proxy

if TYPE_CHECKING:
    from proxystore_stream.store.factory import StoreFactory

__all__ = ["Proxy", "extract", "get_factory", "is_resolved", "resolve"]

T = TypeVar("T")


class Proxy(lazy_object_proxy.Proxy, Generic[T]):  # type: ignore[misc]
    """A lazy proxy of an object in a store.

    Args:
        factory: Callable returning the target; must be picklable for the
            proxy to be picklable (a `StoreFactory` is).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (object.__getattribute__(self, "__factory__"),)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()


def _rebuild(factory: Any) -> Proxy[Any]:
    return Proxy(factory)


def is_resolved(proxy: Proxy[Any]) -> bool:
    """Whether the proxy has fetched its target already."""
    return bool(object.__getattribute__(proxy, "__resolved__"))


def resolve(proxy: Proxy[Any]) -> None:
    """Fetch the target now, if not yet fetched.

    Raises:
        ProxyResolveMissingKeyError: If the object is no longer in its store.
    """
    object.__getattribute__(proxy, "__wrapped__")


def extract(proxy: Proxy[T]) -> T:
    """Return the target object itself (resolving it if needed)."""
    return object.__getattribute__(proxy, "__wrapped__")  # type: ignore[no-any-return]


def get_factory(proxy: Proxy[T]) -> StoreFactory[T]:
    """Return the proxy's factory (key, store config, evict flag)."""
    return object.__getattribute__(proxy, "__factory__")  # type: ignore[no-any-return]
