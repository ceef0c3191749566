"""Protocols at the centre of proxystore_stream.

A `Publisher` sends opaque `bytes` messages to named topics; a `Subscriber`
yields the messages of the topics it listens to. Shims in
`proxystore_stream.shims` implement them for message brokers; anything with
the same methods works too (they are structural, nothing to inherit).

Beyond the two required methods, a shim may offer optional capabilities that
the stream producer and consumer use when present:

- `Flushable.flush()`: push out buffered messages. The producer calls it on
  `flush()`, `close_topics()` and `close()`, never per message.
- `ReceivingSubscriber.receive(timeout)`: a receive that can time out, used
  for `StreamConsumer.next(timeout=...)`.
- `Acknowledging.ack()`: acknowledge every message handed over so far. Shims
  of brokers that keep messages acknowledge a message when the next one is
  asked for, or when `ack()` is called.
- `SendsDetached` / `ReceivesDetached`: a transport with multi-part messages
  (ZeroMQ) can carry a large object's frames beside its envelope instead of
  inside it (`DetachedMessage`), so the producer does not copy the object
  into the envelope and the consumer does not copy it out again.
- `ReceivesReady.receive_ready()` (async subscribers only): a message that is
  already here, or None, without awaiting. `AsyncStreamConsumer` asks it
  first, so a consumer that keeps up with a busy stream takes each object
  without suspending through the subscriber's coroutine.

The async twins (`AsyncPublisher`, `AsyncSubscriber`, ...) have the same
method names, awaitable.

A `Filter` decides from an event's metadata whether to drop the event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Iterator
from typing import Any
from typing import NamedTuple
from typing import Protocol
from typing import runtime_checkable

__all__ = [
    "Acknowledging",
    "AsyncAcknowledging",
    "AsyncFlushable",
    "AsyncPublisher",
    "AsyncReceivesDetached",
    "AsyncReceivingSubscriber",
    "AsyncSendsDetached",
    "AsyncSubscriber",
    "DetachedMessage",
    "Filter",
    "Flushable",
    "Publisher",
    "ReceivesDetached",
    "ReceivesReady",
    "ReceivingSubscriber",
    "SendsDetached",
    "Subscriber",
]


@runtime_checkable
class Publisher(Protocol):
    """Publisher interface to a message stream."""

    def send(self, topic: str, message: bytes) -> None:
        """Publish a message to the stream.

        Args:
            topic: Stream topic to publish the message to.
            message: Message as bytes to publish to the stream.
        """
        ...

    def close(self) -> None:
        """Close this publisher (idempotent)."""
        ...


@runtime_checkable
class Subscriber(Protocol):
    """Subscriber interface to a message stream.

    The subscriber is an iterable that yields messages (`bytes`) from the
    stream until the subscriber is closed.
    """

    def __iter__(self) -> Iterator[bytes]:
        """Iterate over the messages of the stream."""
        ...

    def close(self) -> None:
        """Close this subscriber (idempotent)."""
        ...


@runtime_checkable
class Flushable(Protocol):
    """A publisher that buffers messages and can push them out on demand."""

    def flush(self) -> None:
        """Block until every message sent so far has been handed to the broker."""
        ...


@runtime_checkable
class ReceivingSubscriber(Subscriber, Protocol):
    """A subscriber whose receive can time out."""

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message.

        Args:
            timeout: Seconds to wait at most; None waits until a message
                arrives or the subscriber is closed.

        Raises:
            StreamTimeoutError: If no message arrived within `timeout`.
            SubscriberClosedError: If the subscriber is (or gets) closed.
        """
        ...


@runtime_checkable
class Acknowledging(Protocol):
    """A subscriber of a broker that keeps messages until they are acknowledged."""

    def ack(self) -> None:
        """Acknowledge every message this subscriber has handed over."""
        ...


class DetachedMessage(NamedTuple):
    """A message whose one inline object travels beside it, in its own frames.

    `message` is a valid envelope of one inline object whose data is empty;
    the object's data is `frames` back to back. Only the producer makes them
    (for objects of at least the publisher's `detach_threshold`, unsigned);
    a subscriber's plain `receive()` joins them back into one envelope.
    """

    message: bytes
    """The envelope, with the object's data left empty."""
    frames: list[Any]
    """The object's serialized frames (buffers), in order."""


@runtime_checkable
class SendsDetached(Protocol):
    """A publisher that can send an object's frames beside its envelope."""

    detach_threshold: int
    """Objects of at least this many serialized bytes are sent detached."""

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Send a `DetachedMessage` as one atomic multi-part message."""
        ...


@runtime_checkable
class ReceivesDetached(Protocol):
    """A subscriber that hands over detached messages as they came."""

    def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """Return the next message: bytes, or a `DetachedMessage` (see `receive`)."""
        ...


@runtime_checkable
class AsyncSendsDetached(Protocol):
    """Async twin of `SendsDetached`."""

    detach_threshold: int
    """Objects of at least this many serialized bytes are sent detached."""

    async def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Send a `DetachedMessage` as one atomic multi-part message."""
        ...


@runtime_checkable
class AsyncReceivesDetached(Protocol):
    """Async twin of `ReceivesDetached`."""

    async def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """Return the next message: bytes, or a `DetachedMessage`."""
        ...


@runtime_checkable
class ReceivesReady(Protocol):
    """An async subscriber that can hand over a message it already has without awaiting.

    `receive_ready` never waits and never suspends; it returns what the
    subscriber's `receive_detached` (or `receive`) would return at once,
    or None when that call would have to wait. It returns None on a closed
    subscriber too, so that the awaiting call raises as it should.
    """

    def receive_ready(self) -> bytes | DetachedMessage | None:
        """Return a message that is already here, or None (never waits)."""
        ...


@runtime_checkable
class AsyncPublisher(Protocol):
    """Async twin of `Publisher`."""

    async def send(self, topic: str, message: bytes) -> None:
        """Publish a message to the stream."""
        ...

    async def close(self) -> None:
        """Close this publisher (idempotent)."""
        ...


@runtime_checkable
class AsyncSubscriber(Protocol):
    """Async twin of `Subscriber`: an async iterable of messages."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Iterate over the messages of the stream."""
        ...

    async def close(self) -> None:
        """Close this subscriber (idempotent)."""
        ...


@runtime_checkable
class AsyncFlushable(Protocol):
    """Async twin of `Flushable`."""

    async def flush(self) -> None:
        """Wait until every message sent so far has been handed to the broker."""
        ...


@runtime_checkable
class AsyncReceivingSubscriber(AsyncSubscriber, Protocol):
    """Async twin of `ReceivingSubscriber`.

    A cancelled `receive()` must lose no message: the message it would have
    returned is returned by the next call instead.
    """

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `ReceivingSubscriber.receive`)."""
        ...


@runtime_checkable
class AsyncAcknowledging(Protocol):
    """Async twin of `Acknowledging`."""

    async def ack(self) -> None:
        """Acknowledge every message this subscriber has handed over."""
        ...


@runtime_checkable
class Filter(Protocol):
    """Filter protocol.

    A filter takes the metadata of a new-object event and returns True if
    the event should be dropped (filtered out of the stream).
    """

    def __call__(self, metadata: dict[str, Any]) -> bool:
        """Apply the filter to event metadata."""
        ...
