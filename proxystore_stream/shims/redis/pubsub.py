"""Redis pub/sub shim: PUBLISH to channels, SUBSCRIBE/PSUBSCRIBE to receive.

| property | behaviour |
| --- | --- |
| semantics | fan-out: every subscriber of a channel gets every message |
| persistence | none; Redis forwards and forgets |
| ordering | per channel, as published |
| no subscriber | the message is dropped (PUBLISH reaches nobody) |
| acknowledgement | none |
| max message size | 512 MiB (`proto-max-bulk-len`); keep it small, see below |

Topics containing a glob character (``*``, ``?`` or ``[``) are subscribed
with PSUBSCRIBE (Redis glob patterns), the others with SUBSCRIBE; pass
``pattern=True`` or ``pattern=False`` to force one for every topic (e.g. a
literal channel name that contains ``*``). A message matching both a channel
and a pattern of the same subscriber is delivered once for each.

Redis disconnects a subscriber that falls behind (its output buffer passes
``client-output-buffer-limit pubsub``, 32 MiB hard / 8 MiB for 60 s by
default). redis-py would reconnect and resubscribe silently, losing what was
published meanwhile; this subscriber raises `BrokerConnectionError` instead.
Move large objects through a Store and publish only the small event. The
publisher pipelines small messages and waits for the reply to each one of
`SETTLE_FROM` (64 KiB) or more, so it cannot run far ahead of Redis.

Reconnection: the publisher reconnects under its `retry` policy (default
`RetryPolicy()`). The subscriber, by default, does not: a lost connection
(Redis restarted, or this subscriber lagged) raises `BrokerConnectionError`,
because whatever was published while it was disconnected is gone. With an
explicit ``retry=RetryPolicy(...)`` it resubscribes under that policy and
goes on, logging a warning that messages sent while it was disconnected
were missed.

The clients use RESP2 unless ``protocol=3`` is passed: redis-py's RESP3 push
parsing is several times slower for large messages (see docs/shims/redis.md).

Example:
    ```python
    publisher = RedisPublisher("127.0.0.1", 6379)
    subscriber = RedisSubscriber("127.0.0.1", 6379, ["frames", "logs.*"])
    publisher.send("frames", b"...")
    message = subscriber.receive(timeout=5)
    ```
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Iterator
from collections.abc import Sequence
from functools import partial
from typing import Any
from typing import Self

from proxystore_stream._context import AsyncOpeningContext
from proxystore_stream._context import ClosingContext
from proxystore_stream.exceptions import require

try:
    import redis
    import redis.asyncio
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "redis", "redis", e)

from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import map_errors
from proxystore_stream.shims.redis._common import CONNECTION_ERRORS
from proxystore_stream.shims.redis._common import ERRORS
from proxystore_stream.shims.redis._common import SLICE_SECONDS
from proxystore_stream.shims.redis._common import broker_name
from proxystore_stream.shims.redis._common import check_retry
from proxystore_stream.shims.redis._common import client_kwargs
from proxystore_stream.shims.redis._common import own_connection
from proxystore_stream.shims.redis._common import pack_commands
from proxystore_stream.shims.redis._common import stop_if_fatal
from proxystore_stream.shims.redis._common import stop_if_fatal_async
from proxystore_stream.shims.redis._common import subscriber_client
from proxystore_stream.shims.redis._common import topic_list
from proxystore_stream.shims.redis._common import url_arguments
from proxystore_stream.shims.redis._publish import AsyncCommandPublisher
from proxystore_stream.shims.redis._publish import CommandPublisher
from proxystore_stream.shims.redis._rounds import INCOMPLETE
from proxystore_stream.shims.redis._rounds import Replies
from proxystore_stream.shims.redis._rounds import take_over

__all__ = [
    "SETTLE_FROM",
    "AsyncRedisPublisher",
    "AsyncRedisSubscriber",
    "RedisPublisher",
    "RedisSubscriber",
]

logger = logging.getLogger(__name__)

# RESP2: redis-py's RESP3 push path moved 1 MiB messages at 19-165 MB/s here
# (and lagged into a disconnect 3 runs in 5) against ~376 MB/s for RESP2.
PROTOCOL = 2

SETTLE_FROM = 64 * 1024
"""A publisher's messages this large or larger wait for their reply before `send` returns.

Pub/sub has no flow control: Redis acknowledges a PUBLISH once the message
is in each subscriber's output buffer, and disconnects a subscriber whose
buffer passes 32 MB (``client-output-buffer-limit pubsub``). Small messages
are pipelined; a large one waits for its reply, which paces the publisher
at about Redis's speed, as a client that waits for every reply is paced.
"""

_GLOB = frozenset("*?[")
_DATA = frozenset({"message", "pmessage", b"message", b"pmessage"})
_CONFIRM = frozenset({"subscribe", "psubscribe", b"subscribe", b"psubscribe"})
# One wake-up reads what has already arrived, up to this many messages or
# bytes; the rest stays in the socket (and in Redis's output buffer).
_DRAIN_COUNT = 256
_DRAIN_BYTES = 1 << 20
# Bytes the async subscriber receives per event-loop wake-up at most: at
# least what a publisher on the same loop sends per turn (1 MiB, FairShare),
# or the subscriber falls behind until Redis drops it.
_READ_AHEAD = 4 << 20
# A connection read by our protocol ends with the client's error or the socket's.
_READ_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, OSError)


def _split(topics: list[str], pattern: bool | None) -> tuple[list[str], list[str]]:
    """Split topics into (channels, patterns)."""
    if pattern is not None and not isinstance(pattern, bool):
        raise TypeError(f"pattern must be a bool or None, not {type(pattern).__name__}")
    if pattern is None:
        patterns = [t for t in topics if _GLOB.intersection(t)]
        return [t for t in topics if t not in patterns], patterns
    return ([], topics) if pattern else (topics, [])


def _lost(broker: str) -> BrokerConnectionError:
    return BrokerConnectionError(
        "The Redis pub/sub connection was lost, so messages published meanwhile "
        "are lost. Redis disconnects a subscriber that lags behind "
        "(client-output-buffer-limit pubsub): send large objects through a "
        "Store and publish only small events, or consume faster. Create a new "
        "subscriber to continue",
        broker=broker,
    )


def _missed(broker: str, exc: BaseException | None) -> None:
    reason = "redis-py reconnected" if exc is None else f"{type(exc).__name__}: {exc}"
    logger.warning(
        "Redis pub/sub connection to %s lost (%s); resubscribing. Messages "
        "published while this subscriber was disconnected were missed.",
        broker,
        reason,
    )


def _take(message: dict[str, Any] | None, buffer: deque[bytes]) -> int:
    """Buffer a data message; return 1 for a subscription confirmation."""
    if message is None:
        return 0
    if message["type"] in _DATA:
        buffer.append(message["data"])
    return 1 if message["type"] in _CONFIRM else 0


def _take_reply(reply: Any, buffer: deque[bytes]) -> int:
    """Buffer the data of a raw pub/sub reply; return its size (0 for other replies)."""
    if not isinstance(reply, list) or len(reply) < 3:
        return 0
    kind = reply[0]
    if kind == b"message" or kind == "message":
        data = reply[2]
    elif kind == b"pmessage" or kind == "pmessage":
        data = reply[3]
    else:
        return 0
    buffer.append(data)
    return len(data) + 1


def _confirms(reply: Any) -> bool:
    """Whether a raw reply confirms a SUBSCRIBE or PSUBSCRIBE."""
    return isinstance(reply, list) and bool(reply) and reply[0] in _CONFIRM


def _subscribe_timeout(kwargs: dict[str, Any]) -> float:
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout else 10.0


class RedisPublisher(CommandPublisher):
    """Publisher sending each message to the channel `topic` with PUBLISH.

    Args:
        hostname: Redis host.
        port: Redis port.
        retry: Reconnect policy (None: `RetryPolicy()`, a 30 s deadline). A
            send whose reply was lost is sent again (a possible duplicate).
        **kwargs: Passed to `redis.Redis` (``password``, ``username``,
            ``db``, ``ssl``, ``ssl_ca_certs``, ``socket_timeout``...).

    Raises:
        TypeError: If `hostname` or `port` has the wrong type.
    """

    protocol = PROTOCOL

    settle_from = SETTLE_FROM
    """Messages this large or larger wait for their reply before `send` returns."""

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        return ("PUBLISH", topic, message)


class RedisSubscriber(ClosingContext):
    """Subscriber to one or more channels or glob patterns.

    The subscription is confirmed by Redis before the constructor returns,
    so every message published afterwards is received.

    Args:
        hostname: Redis host.
        port: Redis port.
        topic: Channel or pattern, or a sequence of them.
        pattern: None detects patterns by their glob characters; True
            subscribes every topic as a pattern, False every topic as a
            literal channel.
        retry: None (default): never reconnect; a lost connection raises
            `BrokerConnectionError`. A `RetryPolicy`: connect and resubscribe
            under it, logging a warning that messages published while
            disconnected were missed.
        **kwargs: Passed to `redis.Redis` (see `RedisPublisher`).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `topic` is empty.
        BrokerConnectionError: If Redis cannot be reached.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        pattern: bool | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._channels, self._patterns = _split(topic_list(topic), pattern)
        # No reconnect unless asked: a reconnected subscriber has missed messages.
        self._retry = None if retry is None else check_retry(retry)
        options = client_kwargs(hostname, port, kwargs, protocol=PROTOCOL, retries=0)
        self._broker = broker_name(hostname, port, options)
        self._subscribe_timeout = _subscribe_timeout(options)
        self._buffer: deque[bytes] = deque()
        self._closed = False
        self._released = False
        self._lost = False
        self._lock = threading.RLock()
        self._client = subscriber_client(options)
        self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        try:
            with map_errors(ERRORS, broker=self._broker):
                if self._retry is None:
                    self._subscribe()
                else:
                    self._retry.call(
                        self._resubscribe,
                        retry_on=CONNECTION_ERRORS,
                        broker=self._broker,
                        on_retry=partial(stop_if_fatal, broker=self._broker),
                    )
        except BaseException:
            self._release()
            raise

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        pattern: bool | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, topic, pattern=pattern, retry=retry, **{**options, **kwargs})

    def _subscribe(self) -> None:
        if self._channels:
            self._pubsub.subscribe(*self._channels)
        if self._patterns:
            self._pubsub.psubscribe(*self._patterns)
        expected = len(self._channels) + len(self._patterns)
        timeout = self._subscribe_timeout
        deadline = time.monotonic() + timeout
        while expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerConnectionError(
                    f"Redis did not confirm the subscription within {timeout} s",
                    broker=self._broker,
                )
            expected -= _take(self._pubsub.get_message(timeout=remaining), self._buffer)
        # Registered after the first connect, so it fires on reconnects only.
        assert self._pubsub.connection is not None
        self._pubsub.connection.register_connect_callback(self._on_reconnect)

    def _on_reconnect(self, connection: Any) -> None:
        self._lost = True

    def _resubscribe(self) -> None:
        # A fresh pubsub: nothing of the old one is trusted. Its connection
        # goes back to the pool, where our reconnect watch must not follow it.
        if self._pubsub.connection is not None:
            self._pubsub.connection.deregister_connect_callback(self._on_reconnect)
        self._pubsub.close()
        self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        self._lost = False
        self._subscribe()

    def _recover(self, exc: BaseException | None) -> None:
        if self._retry is None:
            raise _lost(self._broker) from exc
        _missed(self._broker, exc)
        with map_errors(ERRORS, broker=self._broker):
            self._retry.call(
                self._resubscribe,
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=partial(stop_if_fatal, broker=self._broker),
            )

    def open(self) -> None:
        """Do nothing: the constructor already connected (parity with the async twin).

        Raises:
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("RedisSubscriber is closed")

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message, waiting `timeout` seconds at most.

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            BrokerConnectionError: Without `retry`: if the connection was
                lost (e.g. Redis restarted, or disconnected this subscriber
                for lagging behind). With `retry`: if resubscribing failed
                until the policy's deadline.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                if self._buffer:
                    return self._buffer.popleft()
                if self._lost:
                    self._recover(None)
                wait = SLICE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait < 0:
                        raise StreamTimeoutError(f"No message within {timeout} s")
                self._read(wait)
            raise SubscriberClosedError("RedisSubscriber is closed")

    def _read(self, wait: float) -> None:
        connection = self._pubsub.connection
        assert connection is not None
        try:
            # Wait in a short slice, but read a whole message with the normal
            # socket timeout: a slice-long read timeout could cut a large
            # message in half and break the connection. The replies are read
            # from the connection itself: PubSub.get_message costs more per
            # message than the read.
            if connection.can_read(timeout=wait):
                self._drain(connection)
        except CONNECTION_ERRORS as exc:
            self._recover(exc)

    def _drain(self, connection: Any) -> None:
        buffer, count, size = self._buffer, 0, 0
        while count < _DRAIN_COUNT and size < _DRAIN_BYTES:
            reply = connection.read_response(disconnect_on_error=False, push_request=True)
            size += _take_reply(reply, buffer)
            count += 1
            if not connection.can_read(timeout=0):
                return

    def close(self) -> None:
        """Close the subscriber (idempotent).

        Safe to call from another thread: a blocked `receive` ends within
        about 0.1 s and the connection is released once it has.
        """
        self._closed = True
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._pubsub.close()
        self._client.close()


class AsyncRedisPublisher(AsyncCommandPublisher):
    """Async twin of `RedisPublisher` (redis.asyncio); same arguments."""

    protocol = PROTOCOL

    settle_from = SETTLE_FROM
    """Messages this large or larger wait for their reply before `send` returns."""

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        return ("PUBLISH", topic, message)


class AsyncRedisSubscriber(AsyncOpeningContext):
    """Async twin of `RedisSubscriber` (redis.asyncio); same arguments.

    Construct it, then ``await subscriber.open()`` (or ``async with``) so the
    subscription is confirmed before anything is published; a first
    `receive` opens it otherwise. redis.asyncio connects (AUTH, SELECT,
    TLS); then the connection's replies are read by a protocol of ours
    (`_rounds.Replies`) that receives up to 4 MiB per event-loop wake-up
    straight into hiredis. `receive` waits for a whole message, one caller
    at a time; a wait cut off by a timeout or a cancellation takes nothing
    away, so nothing is lost.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        pattern: bool | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._channels, self._patterns = _split(topic_list(topic), pattern)
        self._retry = None if retry is None else check_retry(retry)
        options = client_kwargs(
            hostname,
            port,
            kwargs,
            protocol=PROTOCOL,
            retries=0,
            asyncio=True,
        )
        self._broker = broker_name(hostname, port, options)
        self._subscribe_timeout = _subscribe_timeout(options)
        self._buffer: deque[bytes] = deque()
        self._closed = False
        self._opened = False
        self._lost = False
        self._client = redis.asyncio.Redis(**options)
        self._connection: Any = None
        self._replies: Replies | None = None
        self._reading = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        pattern: bool | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, topic, pattern=pattern, retry=retry, **{**options, **kwargs})

    async def open(self) -> None:
        """Subscribe and wait for Redis to confirm (idempotent).

        Raises:
            BrokerConnectionError: If Redis cannot be reached.
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("AsyncRedisSubscriber is closed")
        if self._opened:
            return
        try:
            with map_errors(ERRORS, broker=self._broker):
                if self._retry is None:
                    await self._subscribe()
                else:
                    await self._retry.call_async(
                        self._resubscribe,
                        retry_on=CONNECTION_ERRORS,
                        broker=self._broker,
                        on_retry=partial(stop_if_fatal_async, broker=self._broker),
                    )
        except BaseException:
            await self.close()
            raise
        self._opened = True

    async def _subscribe(self) -> None:
        # A connection of its own, connected by redis.asyncio, then read by
        # our protocol; SUBSCRIBE and PSUBSCRIBE confirm once per topic.
        connection = own_connection(self._client, socket_timeout=None)
        self._connection = connection
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await connection.connect()
                replies = self._replies = take_over(connection, _READ_AHEAD)
                commands = []
                if self._channels:
                    commands.append(("SUBSCRIBE", *self._channels))
                if self._patterns:
                    commands.append(("PSUBSCRIBE", *self._patterns))
                for part in pack_commands(connection, commands):
                    connection._writer.write(part)
                expected = len(self._channels) + len(self._patterns)
                while expected:
                    reply = await replies.next()
                    if _take_reply(reply, self._buffer) == 0 and _confirms(reply):
                        expected -= 1
        except TimeoutError:
            raise BrokerConnectionError(
                f"Redis did not confirm the subscription within {self._subscribe_timeout} s",
                broker=self._broker,
            ) from None

    async def _resubscribe(self) -> None:
        await self._disconnect()
        self._lost = False
        await self._subscribe()

    async def _disconnect(self) -> None:
        connection, self._connection, self._replies = self._connection, None, None
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def _recover(self, exc: BaseException | None) -> None:
        if self._retry is None:
            self._lost = True
            raise _lost(self._broker) from exc
        _missed(self._broker, exc)
        with map_errors(ERRORS, broker=self._broker):
            await self._retry.call_async(
                self._resubscribe,
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=partial(stop_if_fatal_async, broker=self._broker),
            )

    async def _next_message(self) -> bytes:
        while not self._buffer:
            if self._closed:
                raise SubscriberClosedError("AsyncRedisSubscriber is closed")
            try:
                await self._drain()
            except _READ_ERRORS as exc:
                if self._closed:  # close() dropped the connection under us
                    raise SubscriberClosedError("AsyncRedisSubscriber is closed") from exc
                await self._recover(exc)
        return self._buffer.popleft()

    async def _drain(self) -> None:
        # Wait for one reply, then take the replies already received,
        # without waiting for more.
        replies = self._replies
        if replies is None:
            raise redis.exceptions.ConnectionError("not connected")
        buffer, count, size = self._buffer, 0, 0
        reply = await replies.next()
        while reply is not INCOMPLETE:
            size += _take_reply(reply, buffer)
            count += 1
            if count >= _DRAIN_COUNT or size >= _DRAIN_BYTES:
                return
            reply = replies.ready()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive()
            except SubscriberClosedError:
                return

    def receive_ready(self) -> bytes | None:
        """Return a message that is already buffered, or None (never waits)."""
        if self._closed or not self._buffer or self._reading.locked():
            return None
        return self._buffer.popleft()

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `RedisSubscriber.receive`)."""
        if self._closed:
            raise SubscriberClosedError("AsyncRedisSubscriber is closed")
        await self.open()
        if self._buffer and not self._reading.locked():
            return self._buffer.popleft()
        if self._lost and self._retry is None and not self._reading.locked():
            raise _lost(self._broker)
        try:
            async with asyncio.timeout(timeout), self._reading:
                return await self._next_message()
        except TimeoutError:
            if self._closed:
                raise SubscriberClosedError("AsyncRedisSubscriber is closed") from None
            raise StreamTimeoutError(f"No message within {timeout} s") from None

    async def close(self) -> None:
        """Close the subscriber (idempotent); a waiting `receive` ends."""
        if self._closed:
            return
        self._closed = True
        await self._disconnect()
        await self._client.aclose()
