"""StoreFactory: the picklable resolver a proxy carries between processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import Generic
from typing import TypeVar

from proxystore_stream.events import StoreConfig
from proxystore_stream.exceptions import ProxyResolveMissingKeyError
from proxystore_stream.store.registry import store_from_config

T = TypeVar("T")

__all__ = ["StoreFactory"]

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class StoreFactory(Generic[T]):
    """Fetch one object from a store; plain data, so it pickles cheaply.

    In another process, calling it rebuilds the store from `store` (only
    registered connector kinds) and fetches the object there.

    Attributes:
        key: The object's key.
        store: How to reach its store.
        evict: Whether to evict the object once fetched.
    """

    key: str
    store: StoreConfig
    evict: bool = False

    def __call__(self) -> T:
        """Fetch the object (and evict it if asked).

        Raises:
            ProxyResolveMissingKeyError: If the key is not in the store.
        """
        store = store_from_config(self.store)
        obj = store.get(self.key, _MISSING)
        if obj is _MISSING:
            raise ProxyResolveMissingKeyError(self.key, self.store.name)
        if self.evict:
            store.evict(self.key)
        return obj  # type: ignore[no-any-return]
