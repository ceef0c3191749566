"""Publishers sending each message with one Redis command on a connection of their own.

The pub/sub, list-queue and Streams publishers differ only in that command
(PUBLISH, LPUSH or XADD). Each publisher owns one connection (no pool) and
sends one command per message. Both twins pipeline: a send returns once the
command is written, and replies are read later, in order, keeping at most a
window of messages unacknowledged (see `CommandPublisher`); what they keep
about those messages, and the steps of a send, is `_window.ReplyWindow`
(no I/O), shared by both.

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
from typing import NoReturn
from typing import Self
from typing import TypeVar

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._core.detached import attached_parts
from proxystore_stream._core.envelope import frames_size
from proxystore_stream._fair import FairShare
from proxystore_stream.exceptions import BrokerConnectionError
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
from proxystore_stream.shims.redis._window import WINDOW
from proxystore_stream.shims.redis._window import WINDOW_BYTES
from proxystore_stream.shims.redis._window import WRITE
from proxystore_stream.shims.redis._window import Pending
from proxystore_stream.shims.redis._window import ReplyWindow
from proxystore_stream.shims.redis._window import keep
from proxystore_stream.shims.redis._window import keepable

__all__ = [
    "DETACH_THRESHOLD",
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

DETACH_THRESHOLD = _LARGE
"""A stream producer hands objects this large or larger over detached (`send_detached`)."""


def pack(connection: Any, arguments: tuple[Any, ...]) -> Any:
    """Pack one command for `connection.send_packed_command`.

    The message is the last argument: bytes-like, or a list of buffers that
    make one argument together (written one after the other). A large one
    is not copied, nor are the buffers of a list.
    """
    message = arguments[-1]
    if type(message) is list:
        # Socket writes take flat bytes: view each buffer as such.
        parts: list[Any] = [p if type(p) is bytes else memoryview(p).cast("B") for p in message]
        size = frames_size(parts)
    else:
        size = len(message) if isinstance(message, bytes) else memoryview(message).nbytes
        if size < _LARGE:
            if type(message) is not bytes:  # hiredis packs bytes, not bytearray
                arguments = (*arguments[:-1], bytes(message))
            return pack_commands(connection, [arguments])
        parts = [message]
    # Pack the rest, then re-count the array and append the message as one
    # more bulk string.
    head = pack_commands(connection, [arguments[:-1]])
    head = b"".join(head) if isinstance(head, list) else head
    _, _, rest = head.partition(b"\r\n")
    header = b"*%d\r\n%s$%d\r\n" % (len(arguments), rest, size)
    return [header, *parts, b"\r\n"]


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
    """Sync publisher sending each message with one Redis command, pipelined.

    `send` writes the command and returns without waiting for its reply
    while fewer than `window` messages (and `window_bytes` bytes) await
    one; at the window it reads replies, in order, until below it. It also
    takes replies that already arrived, without waiting, before each write.
    An error reply (OOM, WRONGTYPE, ...) is raised by the next `send`,
    `flush` or `close`, naming the earlier message's topic; the message that
    call passed is then not sent. `flush` and `close` wait for every reply.

    Messages whose reply has not come are kept (so a mutable buffer is
    copied) and written again, in order, once the connection was lost and
    is back under the `retry` policy: delivery is at least once. A call
    that gives up (`BrokerConnectionError` past the deadline) drops them
    and says how many.

    Safe to share between threads: one lock covers each call's I/O.
    Subclasses build the command in `_arguments`.
    """

    key_type: str | None = "list"
    """What a topic's key must be (named in the ValueError); None: not checked."""

    detach_threshold: int = DETACH_THRESHOLD
    """A stream producer sends objects this large or larger detached (`send_detached`)."""

    protocol = 2
    connection_errors = CONNECTION_ERRORS

    window = WINDOW
    """Messages that may await their reply at once (read when the publisher is made)."""

    window_bytes = WINDOW_BYTES
    """Bytes of messages that may await their reply at once (one larger message may)."""

    settle_from: int | None = None
    """Messages this large or larger wait for their reply before `send` returns (None: none)."""

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
        self._window = ReplyWindow(self.window, self.window_bytes, self.settle_from)
        # The connection failed or was cut off: drop it, and write every
        # pending message again before anything else.
        self._stale = False

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

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    def send(self, topic: str, message: bytes) -> None:
        """Send a message to `topic`; Redis acknowledges it later (see `flush`).

        Raises:
            TypeError: If `topic` is not a str or `message` not bytes.
            ValueError: If an earlier message's topic names a Redis key of
                another type (that message was not stored).
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If Redis stays unreachable past the
                policy's deadline, or refuses the credentials.
            BufferFullError: If Redis, at ``maxmemory``, refused an earlier
                message (the message says which topic).
        """
        check_topic(topic)
        check_message(message)
        message, size = keep(message)
        self._send_command(topic, self._arguments(topic, message), size)

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Send a `DetachedMessage` as the one envelope `send` would get, not joined.

        The envelope is written around the object's frames, which are not
        copied into it (a gathered write) unless they are mutable (a message
        is kept until acknowledged); the stored message is the same. Raises
        as `send`, and `MalformedMessageError` for an invalid one.
        """
        check_topic(topic)
        parts = [keepable(part) for part in attached_parts(message, frames)]
        self._send_command(topic, self._arguments(topic, parts), frames_size(parts))

    def _send_command(self, topic: str, arguments: tuple[Any, ...], size: int) -> None:
        """Send one command about `topic` carrying `size` bytes (its last argument may be large)."""
        item = Pending(topic, pack(self._connection, arguments), size)
        try:
            self._send_once(item)
            return
        except Exception as exc:
            failure = exc
        self._retry_sync(partial(self._send_once, item), failure)

    def flush(self) -> None:
        """Wait until Redis acknowledged every message sent before.

        Raises:
            ValueError, BufferFullError: As `send`, for an earlier message.
            BrokerConnectionError: If Redis stays unreachable past the
                policy's deadline; the messages not acknowledged are then
                dropped (the message says how many).
        """
        try:
            self._flush_once()
            return
        except Exception as exc:
            failure = exc
        self._retry_sync(self._flush_once, failure)

    def close(self) -> None:
        """Wait for every reply (as `flush`), then close the connection (idempotent).

        Raises:
            As `flush`; the connection is closed either way.
        """
        try:
            if not self._closed:
                self.flush()
        finally:
            self._closed = True
            self._connection.disconnect()
            self._client.close()

    def _retry_sync(self, operation: Callable[[], None], failure: Exception) -> None:
        """Run `operation` again under the retry policy (`failure`: its first attempt)."""
        try:
            with map_errors(ERRORS, broker=self._broker):
                self._retry.call(
                    replaying(failure, operation),
                    retry_on=CONNECTION_ERRORS,
                    broker=self._broker,
                    on_retry=partial(stop_if_fatal, broker=self._broker),
                )
        except BrokerConnectionError as exc:
            with self._lock:
                self._window.give_up(exc)
                self._stale = True
            raise

    def _send_once(self, item: Pending) -> None:
        with self._lock:
            if self._closed:
                raise PublisherClosedError(f"{type(self).__name__} is closed")
            try:
                if self._stale:
                    self._resend()
                self._take_arrived()
                for step in self._window.send_steps(item):
                    if step is WRITE:
                        self._write(item)
                    else:
                        self._take_reply()
            except BaseException:
                self._stale = True  # whatever was cut off spoils the connection
                raise
            self._window.raise_failed(broker=self._broker, key_type=self.key_type)

    def _flush_once(self) -> None:
        with self._lock:
            try:
                if self._stale:
                    self._resend()
                while self._window.pending:
                    self._take_reply()
            except BaseException:
                self._stale = True
                raise
            self._window.raise_failed(broker=self._broker, key_type=self.key_type)

    def _write(self, item: Pending) -> None:
        # Connect first: a message is accepted (kept until acknowledged)
        # only once there is a connection to write it on.
        connection = self._connection
        if not connection.is_connected:
            connection.connect()
        self._window.accept(item)
        connection.send_packed_command(item.command, check_health=False)

    def _resend(self) -> None:
        connection = self._connection
        connection.disconnect()
        if self._window.pending:
            connection.connect()
            connection.send_packed_command(self._window.commands(), check_health=False)
        self._stale = False

    def _take_arrived(self) -> None:
        """Take the replies that already arrived, without waiting for more."""
        connection = self._connection
        while connection.is_connected and connection.can_read(timeout=0):
            self._take_reply()

    def _take_reply(self) -> None:
        connection = self._connection
        if not self._window.pending:
            # Data with nothing outstanding: the end of the connection (this
            # raises ConnectionError) or bytes that are not ours to read.
            connection.read_response()
            connection.disconnect()
            raise redis.exceptions.ConnectionError("Redis sent a reply nobody asked for")
        try:
            connection.read_response()
        except redis.ResponseError as exc:
            self._window.acknowledge(exc)
        else:
            self._window.acknowledge()


class AsyncCommandPublisher(AsyncClosingContext):
    """Async twin of `CommandPublisher` (redis.asyncio), pipelined the same way.

    What `CommandPublisher` says of the window, error replies and messages
    written again holds here. A cancelled call never leaves half a command
    on the connection: a command is handed whole to the transport, and a
    connection cut off mid-read or mid-write is dropped and its messages
    written again.

    Each call's waits run under one ``asyncio.timeout`` of the client's
    ``socket_timeout``: the connection itself has none, which spares
    redis.asyncio's per-write ``wait_for`` task.
    """

    key_type: str | None = "list"
    """What a topic's key must be (named in the ValueError); None: not checked."""

    detach_threshold: int = DETACH_THRESHOLD
    """A stream producer sends objects this large or larger detached (`send_detached`)."""

    protocol = 2
    connection_errors = CONNECTION_ERRORS

    window = WINDOW
    """Messages that may await their reply at once (read when the publisher is made)."""

    window_bytes = WINDOW_BYTES
    """Bytes of messages that may await their reply at once (one larger message may)."""

    settle_from: int | None = None
    """Messages this large or larger wait for their reply before `send` returns (None: none)."""

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
        self._window = ReplyWindow(self.window, self.window_bytes, self.settle_from)
        # The connection failed or was cut off: drop it, and write every
        # pending message again before anything else.
        self._stale = False
        self._fair = FairShare()

    @classmethod
    def from_url(cls, url: str, *, retry: RetryPolicy | None = None, **kwargs: Any) -> Self:
        """Make a publisher from a Redis URL (see `CommandPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(hostname, port, retry=retry, **{**options, **kwargs})

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    async def send(self, topic: str, message: bytes) -> None:
        """Send a message to `topic` (see `CommandPublisher.send`)."""
        check_topic(topic)
        check_message(message)
        message, size = keep(message)
        await self._send_command(topic, self._arguments(topic, message), size)

    async def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Send a `DetachedMessage` (see `CommandPublisher.send_detached`)."""
        check_topic(topic)
        parts = [keepable(part) for part in attached_parts(message, frames)]
        await self._send_command(topic, self._arguments(topic, parts), frames_size(parts))

    async def _send_command(self, topic: str, arguments: tuple[Any, ...], size: int) -> None:
        """Send one command about `topic` carrying `size` bytes (its last argument may be large)."""
        item = Pending(topic, pack(self._connection, arguments), size)
        # A send whose replies had all arrived never waits: give the other
        # tasks (often a subscriber on this loop) a turn now and then.
        if self._fair.due(item.size):
            await asyncio.sleep(0)
        try:
            await self._send_once(item)
        except Exception as exc:
            await self._retry_async(partial(self._send_once, item), exc)

    async def flush(self) -> None:
        """Wait until Redis acknowledged every message sent (see `CommandPublisher.flush`)."""
        try:
            await self._flush_once()
            return
        except Exception as exc:
            failure = exc
        await self._retry_async(self._flush_once, failure)

    async def close(self) -> None:
        """Wait for every reply (as `flush`), then close the connection (idempotent).

        Raises:
            As `flush`; the connection is closed either way.
        """
        try:
            if not self._closed:
                await self.flush()
        finally:
            self._closed = True
            await self._connection.disconnect()
            await self._client.aclose()

    async def _retry_async(
        self,
        operation: Callable[[], Awaitable[None]],
        failure: Exception,
    ) -> None:
        """Run `operation` again under the retry policy (`failure`: its first attempt)."""
        try:
            with map_errors(ERRORS, broker=self._broker):
                await self._retry.call_async(
                    replaying_async(failure, operation),
                    retry_on=CONNECTION_ERRORS,
                    broker=self._broker,
                    on_retry=partial(stop_if_fatal_async, broker=self._broker),
                )
        except BrokerConnectionError as exc:
            async with self._lock:
                self._window.give_up(exc)
                self._stale = True
            raise

    async def _send_once(self, item: Pending) -> None:
        async with self._lock:
            if self._closed:
                raise PublisherClosedError(f"{type(self).__name__} is closed")
            try:
                async with asyncio.timeout(self._timeout):
                    if self._stale:
                        await self._resend()
                    await self._take_arrived()
                    for step in self._window.send_steps(item):
                        if step is WRITE:
                            await self._write(item)
                        else:
                            await self._take_reply()
            except BaseException as exc:
                self._fail(exc)
            self._window.raise_failed(broker=self._broker, key_type=self.key_type)

    async def _flush_once(self) -> None:
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    if self._stale:
                        await self._resend()
                    while self._window.pending:
                        await self._take_reply()
            except BaseException as exc:
                self._fail(exc)
            self._window.raise_failed(broker=self._broker, key_type=self.key_type)

    def _fail(self, exc: BaseException) -> NoReturn:
        """Re-raise `exc` (a timeout as Redis's); an error leaves the connection unusable.

        A cancellation does not: whatever it cut off marked the connection
        stale itself (a read or a connect), and a write is cut off only
        after the whole command was handed to the transport.
        """
        if not isinstance(exc, asyncio.CancelledError):
            self._stale = True
        if isinstance(exc, TimeoutError):
            raise redis.exceptions.TimeoutError(
                f"No reply from Redis within {self._timeout} s",
            ) from exc
        raise exc

    async def _write(self, item: Pending) -> None:
        # Connect first: a message is accepted (kept until acknowledged)
        # only once there is a connection to write it on.
        await self._connect()
        self._window.accept(item)
        await self._write_now(item.command)

    async def _connect(self) -> None:
        connection = self._connection
        if not connection.is_connected:
            stale, self._stale = self._stale, True  # until the handshake is complete
            await connection.connect()
            _drain_fully(connection)
            self._stale = stale

    async def _write_now(self, command: list[Any]) -> None:
        # redis.asyncio's send_packed_command drops the connection when
        # cancelled while it drains; the command is whole in the transport
        # by then (write does not wait), so keep it. One write per part:
        # Python 3.11's writelines joins them first, a copy of the message.
        writer = self._connection._writer
        for part in command:
            writer.write(part)
        try:
            await writer.drain()
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error while writing to Redis: {exc}") from exc

    async def _resend(self) -> None:
        await self._connection.disconnect(nowait=True)
        if self._window.pending:
            await self._connect()
            await self._write_now(self._window.commands())
        self._stale = False

    async def _take_arrived(self) -> None:
        """Take the replies that already arrived, without waiting for more."""
        connection = self._connection
        while connection.is_connected and await connection.can_read():
            await self._take_reply()

    async def _take_reply(self) -> None:
        connection = self._connection
        if not self._window.pending:
            # Data with nothing outstanding: the end of the connection (this
            # raises ConnectionError) or bytes that are not ours to read.
            await connection.read_response()
            await connection.disconnect(nowait=True)
            raise redis.exceptions.ConnectionError("Redis sent a reply nobody asked for")
        self._stale = True  # a reply cut off mid-read spoils the connection
        try:
            await connection.read_response()
        except redis.ResponseError as exc:
            self._stale = False
            self._window.acknowledge(exc)
        else:
            self._stale = False
            self._window.acknowledge()


def _drain_fully(connection: Any) -> None:
    """Make a write wait until the transport handed every byte to the socket.

    asyncio's default lets 64 KiB wait in the transport; a send returning
    before its reply must not leave part of its command there, or a caller
    that then blocks the event loop would hold it back.
    """
    transport = getattr(getattr(connection, "_writer", None), "transport", None)
    if transport is not None:
        transport.set_write_buffer_limits(high=0)
