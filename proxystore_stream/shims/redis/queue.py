"""Redis list-queue shim: LPUSH to send, BRPOP to receive.

| property | behaviour |
| --- | --- |
| semantics | work queue: each message goes to one subscriber of its list |
| persistence | in Redis (per its RDB/AOF settings) until popped |
| ordering | FIFO per topic (list) |
| no subscriber | messages wait in the list |
| acknowledgement | none; a message is gone from Redis once popped |
| max message size | 512 MiB (`proto-max-bulk-len`) |

Each topic is a Redis list. A subscriber of several topics pops from the
first non-empty one in the order given (BRPOP), so a busy first topic can
starve later ones. A popped message that the subscriber never returns
(its process dies between the pop and the hand-over) is lost: use the
Streams shim when that matters.

Example:
    ```python
    publisher = RedisQueuePublisher("127.0.0.1", 6379)
    subscriber = RedisQueueSubscriber("127.0.0.1", 6379, "jobs")
    publisher.send("jobs", b"...")
    job = subscriber.receive(timeout=5)
    ```
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Self
from typing import cast

from proxystore_stream.exceptions import require

try:
    import redis
    import redis.asyncio
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "redis", "redis", e)

from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.shims._errors import map_errors
from proxystore_stream.shims.redis._common import CONNECTION_ERRORS
from proxystore_stream.shims.redis._common import ERRORS
from proxystore_stream.shims.redis._common import SLICE_SECONDS
from proxystore_stream.shims.redis._common import AsyncCommandPublisher
from proxystore_stream.shims.redis._common import CommandPublisher
from proxystore_stream.shims.redis._common import PendingFetch
from proxystore_stream.shims.redis._common import broker_name
from proxystore_stream.shims.redis._common import client_kwargs
from proxystore_stream.shims.redis._common import topic_list
from proxystore_stream.shims.redis._common import url_arguments

__all__ = [
    "AsyncRedisQueuePublisher",
    "AsyncRedisQueueSubscriber",
    "RedisQueuePublisher",
    "RedisQueueSubscriber",
]

# RESP2: as fast as RESP3 or a little faster for LPUSH/BRPOP here (medians
# 13.1k vs 10.9k msg/s at 100 B, 585 vs 562 MB/s at 1 MiB; docs/shims/redis.md).
PROTOCOL = 2
# BRPOP takes a timeout in seconds; 0 would block forever, so never send it.
_MIN_BLOCK = 0.01


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return timeout


def _block(wait: float) -> float:
    return max(_MIN_BLOCK, round(wait, 3))


class RedisQueuePublisher(CommandPublisher):
    """Publisher pushing each message onto the list `topic` (LPUSH).

    Args:
        hostname: Redis host.
        port: Redis port.
        **kwargs: Passed to `redis.Redis` (``password``, ``db``, ``ssl``...).

    Raises:
        TypeError: If `hostname` or `port` has the wrong type.
    """

    command = "lpush"
    protocol = PROTOCOL


class RedisQueueSubscriber:
    """Subscriber popping messages from one or more lists (BRPOP).

    Args:
        hostname: Redis host.
        port: Redis port.
        topic: List name, or a sequence of them (popped in that priority).
        timeout: Seconds iteration waits for a message at most (None:
            forever); expiry raises `StreamTimeoutError`.
        **kwargs: Passed to `redis.Redis` (see `RedisQueuePublisher`).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `topic` is empty or `timeout` negative.
        BrokerConnectionError: If Redis cannot be reached.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._topics = topic_list(topic)
        self._timeout = _check_timeout(timeout)
        options = client_kwargs(hostname, port, kwargs, protocol=PROTOCOL)
        self._broker = broker_name(hostname, port, options)
        self._closed = False
        self._released = False
        self._lock = threading.RLock()
        self._client = redis.Redis(**options)
        try:
            with map_errors(ERRORS, broker=self._broker):
                self._client.ping()
        except BaseException:
            self._release()
            raise

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisQueuePublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, topic, timeout=timeout, **{**options, **kwargs})

    def open(self) -> None:
        """Do nothing: the constructor already connected (parity with the async twin).

        Raises:
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("RedisQueueSubscriber is closed")

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive(self._timeout)
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Pop the next message, waiting `timeout` seconds at most.

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            BrokerConnectionError: If Redis cannot be reached.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                wait = SLICE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                with map_errors(ERRORS, broker=self._broker):
                    popped = self._client.brpop(self._topics, _block(wait))
                if popped is not None:
                    # Returned even if close() came meanwhile: it is off the list.
                    return cast(bytes, popped[1])
                if deadline is not None and time.monotonic() >= deadline:
                    raise StreamTimeoutError(f"No message within {timeout} s")
            raise SubscriberClosedError("RedisQueueSubscriber is closed")

    def close(self) -> None:
        """Close the subscriber (idempotent).

        Safe to call from another thread: a blocked `receive` ends within
        about 0.1 s and the connection is released once it has.
        """
        self._closed = True
        with self._lock:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRedisQueuePublisher(AsyncCommandPublisher):
    """Async twin of `RedisQueuePublisher` (redis.asyncio); same arguments."""

    command = "lpush"
    protocol = PROTOCOL


class AsyncRedisQueueSubscriber:
    """Async twin of `RedisQueueSubscriber` (redis.asyncio); same arguments.

    Each BRPOP blocks for 0.1 s at most and runs in a task that a timed-out
    or cancelled `receive` leaves running; the next call gets its message.
    If `close()` finds that task holding a popped message, it pushes the
    message back to the head of its list, so nothing is lost.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._topics = topic_list(topic)
        self._timeout = _check_timeout(timeout)
        options = client_kwargs(
            hostname,
            port,
            kwargs,
            protocol=PROTOCOL,
            asyncio=True,
        )
        self._broker = broker_name(hostname, port, options)
        self._closed = False
        self._client = redis.asyncio.Redis(**options)
        self._fetch: PendingFetch[tuple[bytes, bytes]] = PendingFetch(self._pop)

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisQueuePublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, topic, timeout=timeout, **{**options, **kwargs})

    async def open(self) -> None:
        """Check that Redis answers (lists need no subscription).

        Raises:
            BrokerConnectionError: If Redis cannot be reached.
        """
        with map_errors(ERRORS, broker=self._broker):
            await self._client.ping()

    async def _pop(self) -> tuple[bytes, bytes] | None:
        if self._closed:
            raise SubscriberClosedError("AsyncRedisQueueSubscriber is closed")
        with map_errors(ERRORS, broker=self._broker):
            popped = await self._client.brpop(self._topics, _block(SLICE_SECONDS))
        return None if popped is None else cast(tuple[bytes, bytes], tuple(popped))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive(self._timeout)
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Pop the next message (see `RedisQueueSubscriber.receive`)."""
        if self._closed:
            raise SubscriberClosedError("AsyncRedisQueueSubscriber is closed")
        _, message = await self._fetch(timeout)
        return message

    async def close(self) -> None:
        """Close the subscriber (idempotent); a waiting `receive` ends."""
        if self._closed:
            return
        self._closed = True
        try:
            orphan = await self._fetch.settle()
            if orphan is not None:
                # BRPOP pops from the right: RPUSH puts it back at the head.
                with map_errors(ERRORS, broker=self._broker):
                    await self._client.rpush(*orphan)
        finally:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
