"""Round trips on a redis.asyncio connection that a cancelled wait does not spoil.

redis.asyncio drops its connection when a read is cancelled part-way: it
cannot tell how much of a reply it consumed. An async subscriber whose
`receive` may be cancelled or time out (``asyncio.timeout``, a cancelled
task) therefore used to run each round trip in a task of its own, so the
round outlived the cancelled caller. A task and an ``asyncio.wait`` per
message cost about 30 µs of CPU here, a third of a round trip.

`AsyncRounds` reads the replies itself instead. Once redis.asyncio has
connected (AUTH, SELECT, TLS, the handshake), the connection's transport
gets a protocol of ours (`Replies`) that receives into one buffer and feeds
hiredis straight from it; a waiting call only waits for hiredis to have a
whole reply, so a wait that is cancelled takes nothing away. A round trip
cut off that way simply stays *in flight*: its commands were written, and
the next call collects their replies and applies them before anything else
is sent. No task, no dropped connection, no lost reply. (It also skips
asyncio's stream reader, which copied every reply twice more: a 1 MiB reply
took 6 copies on its way to the caller.)

A round's replies are handed to its `apply` callback, which records what
they mean in the subscriber's I/O-free state (a moved message goes into its
backlog, an acknowledgement is noted). Nothing is returned through the
awaiting call, so a round finished by a later call loses nothing either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from proxystore_stream._buffers import receive_buffer
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import require

try:
    import hiredis
    import redis
except ImportError as e:  # pragma: no cover - both come with the [redis] extra
    require(__name__.rpartition(".")[0], e.name or "redis", "redis", e)

from proxystore_stream.shims.redis._common import READER_BUFFER
from proxystore_stream.shims.redis._common import pack_commands

__all__ = ["INCOMPLETE", "READ_SIZE", "AsyncRounds", "Command", "Replies", "take_over"]

Command = tuple[Any, ...]

READ_SIZE = 1 << 20
"""Bytes a connection taken over receives per event-loop wake-up at most."""

INCOMPLETE = object()
"""What `Replies.ready` returns while no whole reply has arrived (a reply may be False)."""


class Replies(asyncio.BufferedProtocol):
    """The protocol of a connection after redis.asyncio connected it: bytes go to hiredis.

    Args:
        reader: The hiredis reader to feed.
        previous: The transport's protocol until now (asyncio's stream
            reader protocol), told when the connection ends: redis.asyncio's
            ``disconnect()`` waits for it to hear so.
    """

    def __init__(self, reader: Any, previous: Any, read_size: int = READ_SIZE) -> None:
        self.reader = reader
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        """Why the connection ended (None: it has not)."""
        # Not where mmap puts a large bytearray: see proxystore_stream._buffers.
        self._buffer = receive_buffer(read_size)
        self._previous = previous

    def ready(self) -> Any:
        """The next whole reply if one has arrived, else `INCOMPLETE` (never waits)."""
        return self.reader.gets()

    async def next(self) -> Any:
        """Wait for the next whole reply and return it.

        Cancel-safe: the protocol keeps feeding hiredis whether or not anyone
        waits, so a cancelled wait loses nothing.

        Raises:
            redis.ConnectionError, OSError: If the connection ended.
        """
        reply = self.reader.gets()
        while reply is INCOMPLETE:
            if self.error is not None:
                if isinstance(self.error, redis.exceptions.ConnectionError | OSError):
                    raise self.error
                raise redis.exceptions.ConnectionError(str(self.error)) from self.error
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
            reply = self.reader.gets()
        return reply

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport receives into (hiredis copies it out at once)."""
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        """Feed what arrived to hiredis and wake the waiting call."""
        self.reader.feed(self._buffer, 0, nbytes)
        self._wake()

    def eof_received(self) -> bool:
        """Redis closed the connection."""
        self._end(redis.exceptions.ConnectionError("Connection closed by Redis"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended (closed here, cut, or reset)."""
        self._end(exc or redis.exceptions.ConnectionError("Connection to Redis lost"))
        self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        """Pass flow control on to the stream writer's protocol (its drain waits on it)."""
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        """As `pause_writing`."""
        self._previous.resume_writing()

    def _end(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def take_over(connection: Any, read_size: int = READ_SIZE) -> Replies:
    """Give a connected redis.asyncio connection's transport a `Replies` protocol.

    From then on its replies are read only through the returned protocol
    (redis.asyncio's own reads would wait for ever); writes go through the
    connection's stream writer as before, and ``disconnect()`` still works.
    """
    reader = hiredis.Reader(
        protocolError=redis.exceptions.InvalidResponse,
        replyError=connection._parser.parse_error,
        notEnoughData=INCOMPLETE,
    )
    reader.setmaxbuf(READER_BUFFER)
    pending: Any = getattr(connection._reader, "_buffer", None)
    if pending:  # nothing is expected after the handshake, but keep it
        reader.feed(bytes(pending))
        pending.clear()
    transport = connection._writer.transport
    protocol = Replies(reader, transport.get_protocol(), read_size)
    transport.set_protocol(protocol)
    return protocol


class AsyncRounds:
    """Sends commands on one redis.asyncio connection and applies their replies.

    One caller at a time (the subscriber serializes its calls with a lock).
    The connection is connected (and reconnected after a failure) by redis.asyncio,
    which does the handshake (AUTH, SELECT, HELLO, TLS); after that, replies
    are read here.

    Args:
        connection: A redis.asyncio connection that no pool shares, made with
            ``socket_timeout=None``.
        io_timeout: Seconds a reply may take beyond the time its commands
            block on the server (None: no bound). Past it, the connection is
            cut and `redis.TimeoutError` raised.
    """

    def __init__(self, connection: Any, io_timeout: float | None) -> None:
        self._connection = connection
        self._io_timeout = io_timeout
        self._protocol: Replies | None = None
        # The round in flight: how many replies it awaits, those read so far,
        # what to do with them, and when (loop time) they are overdue.
        self._expected = 0
        self._replies: list[Any] = []
        self._apply: Callable[[list[Any]], object] | None = None
        self._due: float | None = None
        # One timer checks the round in flight for the I/O timeout and is
        # armed again only when it fires: a timer per round (asyncio.timeout)
        # costs about 4 µs, a tenth of the round trip's own CPU time.
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False

    @property
    def busy(self) -> bool:
        """Whether a round is in flight (written, its replies not all applied)."""
        return self._apply is not None

    async def run(
        self,
        commands: Sequence[Command],
        apply: Callable[[list[Any]], object],
        *,
        block: float = 0.0,
        deadline: float | None = None,
    ) -> None:
        """Finish the round in flight, then send `commands` and apply their replies.

        Args:
            commands: Commands written in one go.
            apply: Called with their replies, in order; error replies are
                `redis.ResponseError` instances in place.
            block: Seconds a blocking command among them may wait on the server.
            deadline: Loop time after which the caller stops waiting (None: never).

        Raises:
            StreamTimeoutError: `deadline` passed first. The round stays in
                flight; the next `run` or `finish` applies it.
            redis.TimeoutError: No reply within the I/O timeout (the
                connection is dropped and the round forgotten).
            redis.ConnectionError: The connection failed (likewise).
        """
        await self.start(commands, apply, block=block, deadline=deadline)
        await self.finish(deadline)

    async def start(
        self,
        commands: Sequence[Command],
        apply: Callable[[list[Any]], object],
        *,
        block: float = 0.0,
        deadline: float | None = None,
    ) -> None:
        """Finish the round in flight, then send `commands` without waiting for their replies.

        The next `run`, `start` or `finish` collects and applies them (a
        pipelined round: its round trip overlaps the caller's next work).

        Raises:
            As `run`, for the round in flight before.
        """
        await self.finish(deadline)
        connection = self._connection
        if not connection.is_connected or self._protocol is None:
            await self._connect()
            self._protocol = take_over(connection)
        # Written whole and at once (no await in between): a cancellation
        # comes either before the round exists or while it is in flight.
        connection._writer.writelines(pack_commands(connection, commands))
        self._expected = len(commands)
        self._replies = []
        self._apply = apply
        if self._io_timeout is not None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + block + self._io_timeout
            if self._watchdog is None:
                self._watchdog = loop.call_at(self._due, self._check_due)

    async def _connect(self) -> None:
        # The handshake's replies are read by redis.asyncio, which the
        # connection's missing socket timeout leaves unbounded.
        try:
            async with asyncio.timeout(self._io_timeout):
                await self._connection.connect()
        except TimeoutError:
            await self.drop()
            message = f"No reply from Redis within {self._io_timeout} s"
            raise redis.exceptions.TimeoutError(message) from None

    async def finish(self, deadline: float | None = None) -> None:
        """Collect the replies of the round in flight (if any) and apply them.

        Raises:
            As `run`.
        """
        if self._apply is None:
            return
        try:
            if deadline is None or (self._due is not None and self._due <= deadline):
                await self._collect()  # the watchdog bounds the wait
            else:
                async with asyncio.timeout_at(deadline):
                    await self._collect()
        except TimeoutError:
            raise StreamTimeoutError("The round trip under way did not end in time") from None
        except (OSError, redis.exceptions.ConnectionError, redis.exceptions.InvalidResponse) as exc:
            timed_out = self._timed_out
            await self.drop()
            if timed_out:
                message = f"No reply from Redis within {self._io_timeout} s"
                raise redis.exceptions.TimeoutError(message) from None
            if isinstance(exc, redis.exceptions.ConnectionError):
                raise
            message = f"Error while reading from Redis: {exc}"
            raise redis.exceptions.ConnectionError(message) from exc
        apply, self._apply = self._apply, None
        apply(self._replies)

    async def _collect(self) -> None:
        replies, protocol = self._replies, self._protocol
        assert protocol is not None
        while len(replies) < self._expected:
            replies.append(await protocol.next())

    def _check_due(self) -> None:
        """The watchdog: cut the connection if the round in flight is overdue."""
        self._watchdog = None
        if self._apply is None or self._due is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:
            self._watchdog = loop.call_at(self._due, self._check_due)
            return
        writer = self._connection._writer
        if writer is not None:
            # The waiting read then sees the end of the stream.
            self._timed_out = True
            writer.transport.abort()

    async def drop(self) -> None:
        """Forget the round in flight and drop the connection (the next `run` reconnects)."""
        self._apply = None
        self._replies = []
        self._protocol = None
        self._timed_out = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await self._connection.disconnect(nowait=True)
