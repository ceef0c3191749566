"""Every public error of proxystore_stream.

Each error mixes in the builtin a user would naturally catch, and no builtin
is shadowed. The tree:

```
StreamError
├── TopicClosedError(RuntimeError)          send() to a topic after closing it
├── SubscriberClosedError(RuntimeError)     receive() on a subscriber closed by us
├── PublisherClosedError(RuntimeError)      send() on a publisher closed by us
├── BufferFullError(RuntimeError)           a bounded buffer is full and send may not wait
├── SerializationError(TypeError)           an object its serializer cannot encode
├── MalformedMessageError(ValueError)       bytes that are not a valid envelope
│   └── MessageAuthenticationError          unsigned or tampered envelope
├── BrokerConnectionError(ConnectionError)  broker unreachable, or lost
├── StreamTimeoutError(TimeoutError)        a timed receive expired
├── UnknownConnectorError(LookupError)      store kind not registered
├── StoreError
│   ├── ProxyResolveMissingKeyError(KeyError)  evicted or missing key
│   └── UnsafeKeyError(ValueError)             key that would escape its store
└── MissingDependencyError(ImportError)     an optional extra is not installed
```

Misuse by the caller (bad arguments) raises plain `TypeError`/`ValueError`
naming the parameter; bad input from the wire raises `MalformedMessageError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any
from typing import NoReturn

__all__ = [
    "BrokerConnectionError",
    "BufferFullError",
    "MalformedMessageError",
    "MessageAuthenticationError",
    "MissingDependencyError",
    "ProxyResolveMissingKeyError",
    "PublisherClosedError",
    "SerializationError",
    "StoreError",
    "StreamError",
    "StreamTimeoutError",
    "SubscriberClosedError",
    "TopicClosedError",
    "UnknownConnectorError",
    "UnsafeKeyError",
]


class StreamError(Exception):
    """Base class of every error raised by proxystore_stream."""


class TopicClosedError(StreamError, RuntimeError):
    """An object was sent to a topic that this producer already closed.

    Attributes:
        topic: The closed topic.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(
            f"Topic {topic!r} was closed by this producer; no more objects can be sent to it.",
        )


class SubscriberClosedError(StreamError, RuntimeError):
    """A receive was attempted on (or interrupted by) a closed subscriber."""


class PublisherClosedError(StreamError, RuntimeError):
    """A send was attempted on a publisher that was closed."""


class BufferFullError(StreamError, RuntimeError):
    """A bounded queue or buffer is full and the send was not allowed to wait."""


class SerializationError(StreamError, TypeError):
    """An object cannot be encoded by the serializer chosen for it.

    Raised by the `send()` that passed the object; nothing else is lost.
    """


class MalformedMessageError(StreamError, ValueError):
    """Bytes received from a broker are not a valid event envelope.

    Attributes:
        topic: The topic (or topics) the bytes came from, if known.
        reason: What was wrong with the bytes.
    """

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        self.topic = topic
        self.reason = reason
        where = f"on topic {topic!r}" if topic is not None else "on an unknown topic"
        super().__init__(f"Malformed message {where}: {reason}")


class MessageAuthenticationError(MalformedMessageError):
    """An envelope is unsigned, or its signature does not match its bytes."""


class BrokerConnectionError(StreamError, ConnectionError):
    """The broker could not be reached, or the connection to it was lost.

    Attributes:
        broker: A short description of the broker (e.g. ``redis://127.0.0.1:6379``).
    """

    def __init__(self, message: str, *, broker: str | None = None) -> None:
        self.broker = broker
        super().__init__(message if broker is None else f"{message} ({broker})")


class StreamTimeoutError(StreamError, TimeoutError):
    """A timed receive expired before a message arrived."""


class UnknownConnectorError(StreamError, LookupError):
    """A store configuration names a connector kind that is not registered.

    Attributes:
        kind: The unknown kind.
    """

    def __init__(self, kind: str, known: Iterable[str] = ()) -> None:
        self.kind = kind
        known = sorted(known)
        hint = difflib.get_close_matches(kind, known, n=1)
        message = f"No connector kind {kind!r} is registered"
        if hint:
            message += f"; did you mean {hint[0]!r}?"
        elif known:
            message += f"; registered kinds: {', '.join(known)}"
        message += ". Third-party connectors join with register_connector()."
        super().__init__(message)


class StoreError(StreamError):
    """Base class of errors raised by stores and connectors."""


class ProxyResolveMissingKeyError(StoreError, KeyError):
    """A proxy (or a get) asked for a key that is not in its store.

    The usual cause is that the object was evicted already: by default the
    consumer's proxies evict their object on first resolve, so a second
    proxy of the same key, or a proxy resolved after ``evict()``, finds
    nothing.

    Attributes:
        key: The missing key.
        store_name: The name of the store that was asked.
    """

    def __init__(self, key: Any, store_name: str) -> None:
        self.key = key
        self.store_name = store_name
        super().__init__(
            f"Key {key!r} is not in store {store_name!r}. It may have been "
            "evicted already (objects sent with evict=True are removed when "
            "their proxy first resolves).",
        )

    def __str__(self) -> str:
        # KeyError would repr() the message; show it as written.
        return str(self.args[0])


class UnsafeKeyError(StoreError, ValueError):
    """A key would escape the store it belongs to (e.g. ``../`` in a path)."""


class MissingDependencyError(StreamError, ImportError):
    """An optional dependency is not installed.

    Attributes:
        package: The missing distribution (e.g. ``redis``).
        extra: The proxystore-stream extra that installs it.
    """

    def __init__(self, module: str, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{module} needs {package}; install it with pip install 'proxystore-stream[{extra}]'",
            name=package,
        )


def require(module: str, package: str, extra: str, error: ImportError) -> NoReturn:
    """Re-raise an ImportError of an optional dependency as MissingDependencyError.

    An ImportError of any other module (a broken install) is re-raised
    unchanged so it is not mislabelled.

    Args:
        module: The proxystore_stream module doing the import.
        package: The import name of the optional dependency.
        extra: The extra that installs it.
        error: The ImportError that was caught.

    Raises:
        MissingDependencyError: If the missing module is ``package``.
    """
    missing = (error.name or "").split(".")[0]
    if missing != package.split(".")[0]:
        raise error
    raise MissingDependencyError(module, package, extra) from error
