"""Publishers sending each message with one Redis command on a connection of their own.

The pub/sub, list-queue and Streams publishers differ only in that command
(PUBLISH, LPUSH or XADD). Each publisher owns one connection (no pool) and
sends one command per message, taking its reply before returning; a lock
keeps the sync publisher safe to share between threads.

Strategy: the first attempt runs with no retry or error-mapping machinery
around it (it costs a few microseconds per message). Only a failed
attempt enters `RetryPolicy.call`, which sees that failure as its first
attempt (`replaying`), so retries, deadlines and error types are exactly
those of a policy wrapped around every send.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import Self
from typing import TypeVar

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import require

try:
    import redis
    import redis.asyncio
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__.rpartition(".")[0], "redis", "redis", e)

from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import map_errors
from proxystore_stream.shims.redis._common import CONNECTION_ERRORS
from proxystore_stream.shims.redis._common import ERRORS
from proxystore_stream.shims.redis._common import broker_name
from proxystore_stream.shims.redis._common import check_message
from proxystore_stream.shims.redis._common import check_retry
from proxystore_stream.shims.redis._common import check_topic
from proxystore_stream.shims.redis._common import client_kwargs
from proxystore_stream.shims.redis._common import own_connection
from proxystore_stream.shims.redis._common import pack_commands
from proxystore_stream.shims.redis._common import stop_if_fatal
from proxystore_stream.shims.redis._common import stop_if_fatal_async
from proxystore_stream.shims.redis._common import url_arguments
from proxystore_stream.shims.redis._common import wrong_type

__all__ = [
    "AsyncCommandPublisher",
    "CommandPublisher",
    "pack",
    "replaying",
    "replaying_async",
]

T = TypeVar("T")

# From this message size on, the command is written as a header, the message
# itself and a trailer: hiredis's pack_command copies the message into a new
# buffer, which took longer than the write for 1 MiB messages here.
_LARGE = 64 * 1024


def pack(connection: Any, arguments: tuple[Any, ...]) -> Any:
    """Pack one command for `connection.send_packed_command`.

    The message is the last argument; a large one is not copied.
    """
    message = arguments[-1]
    size = len(message) if isinstance(message, bytes) else memoryview(message).nbytes
    if size < _LARGE:
        if type(message) is not bytes:  # hiredis packs bytes, not bytearray
            arguments = (*arguments[:-1], bytes(message))
        return pack_commands(connection, [arguments])
    # Pack the rest, then re-count the array and append the message as one
    # more bulk string.
    head = pack_commands(connection, [arguments[:-1]])
    head = b"".join(head) if isinstance(head, list) else head
    _, _, rest = head.partition(b"\r\n")
    header = b"*%d\r\n%s$%d\r\n" % (len(arguments), rest, size)
    return [header, message, b"\r\n"]


def replaying(failure: Exception, operation: Callable[[], T]) -> Callable[[], T]:
    """Return `operation`, except that its first call raises `failure`.

    Hands an attempt that already failed to `RetryPolicy.call`, which then
    treats it exactly like a failure of its own first attempt.
    """
    pending = [failure]

    def run() -> T:
        if pending:
            raise pending.pop()
        return operation()

    return run


def replaying_async(
    failure: Exception,
    operation: Callable[[], Awaitable[T]],
) -> Callable[[], Awaitable[T]]:
    """Async twin of `replaying` (for `RetryPolicy.call_async`)."""
    pending = [failure]

    async def run() -> T:
        if pending:
            raise pending.pop()
        return await operation()

    return run


class CommandPublisher(ClosingContext):
    """Sync publisher sending each message with one Redis command.

    Subclasses build the command in `_arguments`. A send that lost its
    connection is retried under the `retry` policy, so a message whose
    reply was lost may be stored twice.
    """

    key_type: str | None = "list"
    """What a topic's key must be (named in the ValueError); None: not checked."""

    protocol = 2
    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._retry = check_retry(retry)
        options = client_kwargs(hostname, port, kwargs, protocol=self.protocol)
        self._broker = broker_name(hostname, port, options)
        self._client = redis.Redis(**options)
        self._connection = own_connection(self._client)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, retry: RetryPolicy | None = None, **kwargs: Any) -> Self:
        """Make a publisher from a ``redis://``, ``rediss://`` or ``unix://`` URL.

        Args:
            url: Redis URL, e.g. ``redis://user:secret@127.0.0.1:6379/1``.
            retry: Reconnect policy (None: the default `RetryPolicy()`).
            **kwargs: Passed to `redis.Redis`; they win over the URL.
        """
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, retry=retry, **{**options, **kwargs})

    def _arguments(self, topic: str, message: bytes) -> tuple[Any, ...]:
        raise NotImplementedError

    def send(self, topic: str, message: bytes) -> None:
        """Send a message to `topic`, reconnecting under the retry policy.

        Raises:
            TypeError: If `topic` is not a str or `message` not bytes.
            ValueError: If `topic` names a Redis key of another type.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If Redis stays unreachable past the
                policy's deadline, or refuses the credentials.
            BufferFullError: If Redis is at ``maxmemory`` and refuses writes.
        """
        check_topic(topic)
        check_message(message)
        try:
            self._send_once(topic, message)
            return
        except Exception as exc:
            failure = exc
        with map_errors(ERRORS, broker=self._broker), wrong_type([topic], self.key_type):
            self._retry.call(
                replaying(failure, partial(self._send_once, topic, message)),
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=partial(stop_if_fatal, broker=self._broker),
            )

    def _send_once(self, topic: str, message: bytes) -> None:
        arguments = self._arguments(topic, message)
        with self._lock:
            if self._closed:
                raise PublisherClosedError(f"{type(self).__name__} is closed")
            connection = self._connection
            connection.send_packed_command(pack(connection, arguments))
            connection.read_response()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        self._connection.disconnect()
        self._client.close()


class AsyncCommandPublisher(AsyncClosingContext):
    """Async twin of `CommandPublisher` (redis.asyncio).

    Each send (write and reply) runs under one ``asyncio.timeout`` of the
    client's ``socket_timeout``: the connection itself has none, which
    spares redis.asyncio's per-write ``wait_for`` task.
    """

    key_type: str | None = "list"
    """What a topic's key must be (named in the ValueError); None: not checked."""

    protocol = 2
    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._retry = check_retry(retry)
        options = client_kwargs(hostname, port, kwargs, protocol=self.protocol, asyncio=True)
        self._broker = broker_name(hostname, port, options)
        self._timeout: float | None = options.get("socket_timeout")
        self._client = redis.asyncio.Redis(**options)
        self._connection = own_connection(self._client, socket_timeout=None)
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, retry: RetryPolicy | None = None, **kwargs: Any) -> Self:
        """Make a publisher from a Redis URL (see `CommandPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, retry=retry, **{**options, **kwargs})

    def _arguments(self, topic: str, message: bytes) -> tuple[Any, ...]:
        raise NotImplementedError

    async def send(self, topic: str, message: bytes) -> None:
        """Send a message to `topic` (see `CommandPublisher.send`)."""
        check_topic(topic)
        check_message(message)
        try:
            await self._send_once(topic, message)
            return
        except Exception as exc:
            failure = exc
        with map_errors(ERRORS, broker=self._broker), wrong_type([topic], self.key_type):
            await self._retry.call_async(
                replaying_async(failure, partial(self._send_once, topic, message)),
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=partial(stop_if_fatal_async, broker=self._broker),
            )

    async def _send_once(self, topic: str, message: bytes) -> None:
        arguments = self._arguments(topic, message)
        async with self._lock:
            if self._closed:
                raise PublisherClosedError(f"{type(self).__name__} is closed")
            connection = self._connection
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.send_packed_command(pack(connection, arguments))
                    await connection.read_response()
            except TimeoutError as exc:
                # Cut off mid-command: redis.asyncio already dropped the
                # connection; report it the way a socket timeout is reported.
                raise redis.exceptions.TimeoutError(
                    f"No reply from Redis within {self._timeout} s",
                ) from exc

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        await self._connection.disconnect()
        await self._client.aclose()
