"""Translate broker-client exceptions into ours at the shim boundary."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import StreamError

ErrorMap = Mapping[type[BaseException], type[StreamError]]


@contextmanager
def map_errors(mapping: ErrorMap, *, broker: str) -> Iterator[None]:
    """Re-raise client exceptions listed in `mapping` as our own, chained.

    The most specific match wins (the first class in the raised exception's
    MRO that the mapping names). Our own errors pass through untouched.

    Args:
        mapping: Client exception class to our exception class.
        broker: Description of the broker for the error message.
    """
    try:
        yield
    except StreamError:
        raise
    except Exception as exc:
        for cls in type(exc).__mro__:
            target = mapping.get(cls)
            if target is None:
                continue
            if issubclass(target, BrokerConnectionError):
                raise target(f"{type(exc).__name__}: {exc}", broker=broker) from exc
            raise target(f"{type(exc).__name__}: {exc}") from exc
        raise
