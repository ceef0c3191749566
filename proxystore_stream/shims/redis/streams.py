"""Redis Streams shim: XADD to send, consumer groups (XREADGROUP/XACK) to receive.

| property | behaviour |
| --- | --- |
| semantics | groups: one consumer of a group gets each message; all groups get it |
| persistence | in the stream (per Redis RDB/AOF) until trimmed (`maxlen`) or deleted |
| ordering | per topic (stream), by entry id |
| no subscriber | kept in the stream; a group made later with `start_id="0"` reads them |
| acknowledgement | XACK when the next message is asked for or on `ack()`; else pending |
| duplicates | the handed, unacked entry after a crash or `close()` (restart, claim) |
| | an entry claimed from a slow, not dead, consumer (`claim_idle_ms`) |
| | a send retried after its reply was lost (stored twice) |
| reconnection | `retry=` `RetryPolicy` (30 s), then `BrokerConnectionError` |
| max message size | 512 MiB (`proto-max-bulk-len`) |

Each topic is a stream; each message is one entry with a single field
``data``. A subscriber belongs to a consumer `group` (created on demand
with MKSTREAM, starting after `start_id`; an existing group keeps its
position) and reads as a named `consumer`:

- Work queue inside a group, fan-out across groups.
- Replay: a new group with ``start_id="0"`` reads the whole stream; with an
  entry id it reads the entries after that id.
- Acknowledgement: a handed-over message is acknowledged when the next one
  is asked for, or by `ack()`. `close()` does not acknowledge the last one:
  it stays pending and may be delivered again.
- Restart: a subscriber first re-reads its consumer's own pending entries,
  so a consumer restarted with the same `consumer` name gets the messages it
  never acknowledged (and those it had prefetched), in order, before new ones.
- Dead consumers: with `claim_idle_ms`, pending entries of any consumer of
  the group idle for that long are claimed (XAUTOCLAIM) and delivered here.
  Choose it longer than a message takes to process, or a slow consumer's
  message is delivered twice.
- Trimming: the publisher's `maxlen` caps each stream (``~`` approximate by
  default, which is much cheaper); trimmed entries still pending are skipped.

Up to `prefetch` entries are read per round trip; they count as pending for
this consumer from then on (so a restart or a claim delivers them again).

Reconnection: after a lost connection, the XACKs not confirmed yet are sent
again (XACK is idempotent) and the consumer re-reads its own pending
entries, skipping those it holds, so a read whose reply was lost is not
lost. A reconnect by itself causes no duplicate.

Example:
    ```python
    publisher = RedisStreamPublisher("127.0.0.1", 6379, maxlen=100_000)
    subscriber = RedisStreamSubscriber(
        "127.0.0.1", 6379, "frames", group="analysis", consumer="worker-1",
    )
    publisher.send("frames", b"...")
    frame = subscriber.receive(timeout=5)
    ```
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from typing import Any
from typing import Literal
from typing import Self
from typing import TypeVar
from typing import cast

from proxystore_stream._context import AsyncOpeningContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._core.detached import as_envelope
from proxystore_stream._core.envelope import frames_size
from proxystore_stream.exceptions import require

try:
    import redis
    import redis.asyncio
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "redis", "redis", e)

from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import map_errors
from proxystore_stream.shims.redis._common import CONNECTION_ERRORS
from proxystore_stream.shims.redis._common import ERRORS
from proxystore_stream.shims.redis._common import SLICE_SECONDS
from proxystore_stream.shims.redis._common import broker_name
from proxystore_stream.shims.redis._common import check_name
from proxystore_stream.shims.redis._common import check_replies
from proxystore_stream.shims.redis._common import check_retry
from proxystore_stream.shims.redis._common import check_topic
from proxystore_stream.shims.redis._common import client_kwargs
from proxystore_stream.shims.redis._common import default_consumer
from proxystore_stream.shims.redis._common import own_connection
from proxystore_stream.shims.redis._common import roundtrip
from proxystore_stream.shims.redis._common import stop_if_fatal
from proxystore_stream.shims.redis._common import subscriber_client
from proxystore_stream.shims.redis._common import topic_list
from proxystore_stream.shims.redis._common import url_arguments
from proxystore_stream.shims.redis._publish import AsyncCommandPublisher
from proxystore_stream.shims.redis._publish import CommandPublisher
from proxystore_stream.shims.redis._publish import replaying
from proxystore_stream.shims.redis._publish import replaying_async
from proxystore_stream.shims.redis._rounds import AsyncRounds
from proxystore_stream.shims.redis._window import keepable

__all__ = [
    "AsyncRedisStreamPublisher",
    "AsyncRedisStreamSubscriber",
    "RedisStreamPublisher",
    "RedisStreamSubscriber",
]

# RESP2: a little faster than RESP3 for XADD/XREADGROUP here (medians 10.7k
# vs 9.2k msg/s at 100 B, 384 vs 327 MB/s at 1 MiB; docs/shims/redis.md).
# Replies are parsed in either shape, so protocol=3 works too.
PROTOCOL = 2
FIELD = b"data"
OBJECT_FIELD = b"object"
"""The field holding a detached message's object (its envelope is in `FIELD`)."""
DETACH_THRESHOLD = 64 * 1024
"""Objects of at least this many bytes are stored in an entry field of their own."""
DEFAULT_PREFETCH = 16

T = TypeVar("T")
logger = logging.getLogger(__name__)
# What confirming the last acknowledgements at close() may raise (logged).
_CLOSE_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, redis.ResponseError)

Entry = tuple[str, bytes, "bytes | DetachedMessage"]
"""(stream, entry id, message) of an entry read from Redis."""


def _check_positive(value: int | None, name: str, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return value


def _trim_arguments(maxlen: int | None, approximate: bool) -> tuple[Any, ...]:
    """XADD's trimming arguments (``MAXLEN ~ n``), or none for `maxlen` None."""
    checked = _check_positive(maxlen, "maxlen", optional=True)
    if checked is None:
        return ()
    return ("MAXLEN", "~", checked) if approximate else ("MAXLEN", checked)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_replies(reply: Any) -> list[tuple[str, list[Any]]]:
    """Normalise a raw XREADGROUP reply (RESP2 list or RESP3 map) to (stream, entries)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(_text(name), entries or []) for name, entries in reply.items()]
    return [(_text(name), entries or []) for name, entries in reply]


def _data(fields: Any) -> bytes | DetachedMessage | None:
    """The message in a raw entry's fields (flat list, or map), or None if deleted.

    An entry with an `OBJECT_FIELD` holds a detached message.
    """
    if not fields:
        return None
    if not isinstance(fields, dict):
        if len(fields) == 2:  # the common case: one field
            return cast(bytes, fields[1]) if fields[0] == FIELD else None
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    data = fields.get(FIELD)
    if data is None:
        return None
    body = fields.get(OBJECT_FIELD)
    if body is not None:
        return DetachedMessage(data, [body])
    return cast(bytes, data)


def _is_busygroup(exc: Exception) -> bool:
    return str(exc).startswith("BUSYGROUP")


def _is_nogroup(exc: Exception) -> bool:
    return str(exc).startswith("NOGROUP")


Step = Literal["history", "claim", "new"]
Command = tuple[Any, ...]


@dataclass
class _GroupReader:
    """What a stream subscriber knows and decides; the twins only do the I/O.

    Entries move buffer -> handed (returned to the caller) -> acknowledged.
    `held` has the ids of every entry in the buffer or handed, so a claim
    never delivers again an entry this consumer already holds. Handed ids
    stay until their XACK is confirmed, so an XACK lost with the connection
    is sent again after the reconnect (XACK is idempotent).
    """

    topics: list[str]
    prefetch: int
    claim_idle_ms: int | None
    buffer: deque[Entry] = field(default_factory=deque)
    # Ordered sets (dicts): handed, and deleted (trimmed) while pending.
    # Both are acknowledged; dead ones are never handed.
    handed: dict[tuple[str, bytes], None] = field(default_factory=dict)
    dead: dict[tuple[str, bytes], None] = field(default_factory=dict)
    held: set[tuple[str, bytes]] = field(default_factory=set)
    # Streams whose own pending entries are still being re-read, with the
    # last id read; a stream leaves when its pending entries run out.
    history: dict[str, bytes | str] = field(default_factory=dict)
    claim_cursor: dict[str, bytes | str] = field(default_factory=dict)
    next_claim: float = 0.0
    # A read found the stream or group gone: the twin creates it again.
    missing_group: bool = False

    def __post_init__(self) -> None:
        self.history = dict.fromkeys(self.topics, "0")
        self.claim_cursor = dict.fromkeys(self.topics, "0-0")

    @property
    def claim_interval(self) -> float:
        assert self.claim_idle_ms is not None
        return max(SLICE_SECONDS, min(10.0, self.claim_idle_ms / 2000))

    def step(self, now: float) -> Step:
        """Decide the next read: own pending, a claim round, or new entries."""
        if self.history:
            return "history"
        if self.claim_idle_ms is not None and now >= self.next_claim:
            return "claim"
        return "new"

    def _add(self, stream: str, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            key = (stream, entry_id)
            if key in self.held:
                continue
            data = _data(fields)
            if data is None:
                self.dead[key] = None
                continue
            self.held.add(key)
            self.buffer.append((stream, entry_id, data))

    def take_history(self, reply: Any) -> None:
        """Take a reply to XREADGROUP of this consumer's own pending entries."""
        got = dict(_stream_replies(reply))
        for stream in list(self.history):
            entries = got.get(stream) or []
            if entries:
                self.history[stream] = entries[-1][0]
                self._add(stream, entries)
            else:
                del self.history[stream]

    def take_new(self, reply: Any) -> None:
        """Take a reply to XREADGROUP ... > (new entries)."""
        for stream, entries in _stream_replies(reply):
            self._add(stream, entries)

    def take_claims(self, replies: list[Any], now: float) -> None:
        """Take the XAUTOCLAIM replies of every topic, in topic order."""
        more = False
        for stream, reply in zip(self.topics, replies, strict=True):
            cursor, entries = reply[0], reply[1]
            self.claim_cursor[stream] = cursor
            more = more or _text(cursor) != "0-0"
            self._add(stream, entries)
        self.next_claim = now if more else now + self.claim_interval

    def reconnected(self) -> None:
        """Re-read this consumer's pending entries before new ones.

        An XREADGROUP whose reply was lost with the connection made its
        entries pending for this consumer; this is how they are found.
        Entries already held are skipped, so nothing is handed twice.
        """
        self.history = dict.fromkeys(self.topics, "0")

    def pop(self) -> Entry | None:
        """Take the next buffered entry (call `hand` once it is returned)."""
        return self.buffer.popleft() if self.buffer else None

    def hand(self, entry: Entry) -> bytes | DetachedMessage:
        """Record an entry as handed to the caller and return its message."""
        self.handed[(entry[0], entry[1])] = None
        return entry[2]

    def ack_commands(self, group: str) -> tuple[list[Command], list[tuple[str, bytes]]]:
        """XACK commands for every handed or dead entry, and their keys for `acked`."""
        keys = [*self.handed, *self.dead]
        acks: dict[str, list[bytes]] = {}
        for stream, entry_id in keys:
            acks.setdefault(stream, []).append(entry_id)
        return [("XACK", stream, group, *ids) for stream, ids in acks.items()], keys

    def acked(self, keys: list[tuple[str, bytes]]) -> None:
        """Forget entries whose XACK reached Redis."""
        for key in keys:
            self.held.discard(key)
            self.handed.pop(key, None)
            self.dead.pop(key, None)

    def read_commands(self, step: Step, group: str, consumer: str, wait: float) -> list[Command]:
        """The commands reading entries for `step` (one XREADGROUP, or XAUTOCLAIMs)."""
        if step == "claim":
            idle = self.claim_idle_ms or 0
            return [
                (
                    "XAUTOCLAIM",
                    t,
                    group,
                    consumer,
                    idle,
                    self.claim_cursor[t],
                    "COUNT",
                    self.prefetch,
                )
                for t in self.topics
            ]
        if step == "history":
            streams = dict(self.history)
            block: tuple[Any, ...] = ()
        else:
            streams = dict.fromkeys(self.topics, ">")
            block = ("BLOCK", max(1, int(wait * 1000)))
        return [
            (
                "XREADGROUP",
                *("GROUP", group, consumer, "COUNT", self.prefetch),
                *block,
                "STREAMS",
                *streams,
                *streams.values(),
            ),
        ]

    def fill_round(
        self, group: str, consumer: str, wait: float
    ) -> tuple[list[Command], Callable[[list[Any]], None]]:
        """One read round trip: the XACKs due, then the reads; and what takes the replies.

        Taking them fills `buffer`, or sets `missing_group` (the stream or
        group was deleted: create it again).
        """
        step = self.step(time.monotonic())
        acks, keys = self.ack_commands(group)
        reads = self.read_commands(step, group, consumer, wait)

        def take(replies: list[Any]) -> None:
            check_replies(replies[: len(acks)])
            self.acked(keys)
            if not self.take_reads(step, replies[len(acks) :], time.monotonic()):
                self.missing_group = True

        return [*acks, *reads], take

    def ack_round(self, group: str) -> tuple[list[Command], Callable[[list[Any]], None]]:
        """The XACKs due (maybe none), and what takes their replies."""
        acks, keys = self.ack_commands(group)

        def take(replies: list[Any]) -> None:
            check_replies(replies)
            self.acked(keys)

        return acks, take

    def take_reads(self, step: Step, replies: list[Any], now: float) -> bool:
        """Take the replies of `read_commands`; False if a group is missing (NOGROUP).

        Raises:
            redis.ResponseError: If a reply is another error.
        """
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                if _is_nogroup(reply):
                    return False
                raise reply
        if step == "claim":
            self.take_claims(replies, now)
        elif step == "history":
            self.take_history(replies[0])
        else:
            self.take_new(replies[0])
        return True


def _group_error(topic: str, exc: Exception) -> Exception:
    if str(exc).startswith("WRONGTYPE"):
        return ValueError(f"topic {topic!r} is a Redis key that is not a stream")
    return exc


def _detached_entry(
    topic: str,
    trim: tuple[Any, ...],
    message: bytes,
    frames: list[Any],
) -> tuple[tuple[Any, ...], int]:
    """The XADD of a detached message (envelope and object in fields of their own), and its size.

    Mutable frames are copied: a message is kept until Redis acknowledged it.
    """
    parts = [keepable(frame) for frame in frames]
    arguments = ("XADD", topic, *trim, "*", FIELD, message, OBJECT_FIELD, parts)
    return arguments, frames_size(parts) + len(message)


class RedisStreamPublisher(CommandPublisher):
    """Publisher appending each message to the stream `topic` (XADD).

    Args:
        hostname: Redis host.
        port: Redis port.
        maxlen: Trim each stream to about this many entries (None: never).
        approximate: Trim with ``~`` (whole macro nodes: much cheaper, may
            keep a few more entries than `maxlen`).
        retry: Reconnect policy (None: `RetryPolicy()`, a 30 s deadline). A
            send whose reply was lost is sent again, so the entry may be
            stored twice.
        **kwargs: Passed to `redis.Redis` (``password``, ``db``, ``ssl``...).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `maxlen` is < 1.
    """

    key_type = None
    protocol = PROTOCOL

    detach_threshold: int = DETACH_THRESHOLD
    """A stream producer sends objects this large or larger detached (`send_detached`)."""

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        maxlen: int | None = None,
        approximate: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._trim = _trim_arguments(maxlen, approximate)
        super().__init__(hostname, port, retry=retry, **kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        maxlen: int | None = None,
        approximate: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a publisher from a ``redis://``, ``rediss://`` or ``unix://`` URL.

        Args:
            url: Redis URL, e.g. ``redis://user:secret@127.0.0.1:6379/1``.
            maxlen: See the class.
            approximate: See the class.
            retry: See the class.
            **kwargs: Passed to `redis.Redis`; they win over the URL.
        """
        hostname, port, options = url_arguments(url)
        return cls(
            hostname,
            port,
            maxlen=maxlen,
            approximate=approximate,
            retry=retry,
            **{**options, **kwargs},
        )

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        return ("XADD", topic, *self._trim, "*", FIELD, message)

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Append a `DetachedMessage`: one entry, envelope and object in fields of their own.

        The object (the last argument, its frames one after the other) is
        written without a copy, unless a frame is mutable (a message is kept
        until acknowledged). Raises as `send`.
        """
        check_topic(topic)
        self._send_command(topic, *_detached_entry(topic, self._trim, message, frames))

    def send(self, topic: str, message: bytes) -> None:
        """Append a message to the stream `topic`; Redis acknowledges it later (see `flush`).

        Raises:
            TypeError: If `topic` is not a str or `message` not bytes.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If Redis stays unreachable past the
                deadline, or refuses the credentials.
            BufferFullError: If Redis, at ``maxmemory``, refused an earlier
                message (the message says which stream).
        """
        super().send(topic, message)


class RedisStreamSubscriber(ClosingContext):
    """Subscriber reading streams as one consumer of a consumer group.

    Args:
        hostname: Redis host.
        port: Redis port.
        topic: Stream name, or a sequence of them.
        group: Consumer group; created on each stream if missing.
        consumer: This consumer's name in the group. Reuse a name to get its
            unacknowledged messages after a restart; None makes a unique one.
        start_id: Where a group created here starts: ``"0"`` (the whole
            stream), ``"$"`` (only new entries) or an entry id (the entries
            after it). Ignored for a group that exists already.
        claim_idle_ms: Claim other consumers' pending entries idle at least
            this long (None: never).
        prefetch: Entries read per round trip at most.
        retry: Reconnect policy (None: `RetryPolicy()`, a 30 s deadline).
            After a reconnect, acknowledgements not confirmed are sent
            again and this consumer's pending entries are re-read.
        **kwargs: Passed to `redis.Redis` (see `RedisStreamPublisher`).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, or a topic is a Redis
            key that is not a stream.
        BrokerConnectionError: If Redis cannot be reached.
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        group: str,
        consumer: str | None = None,
        start_id: str = "0",
        claim_idle_ms: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._group = check_name(group, "group")
        self._consumer = check_name(
            default_consumer() if consumer is None else consumer,
            "consumer",
        )
        self._start_id = check_name(start_id, "start_id")
        self._reader = _GroupReader(
            topics=topic_list(topic),
            prefetch=_check_positive(prefetch, "prefetch", optional=False) or 1,
            claim_idle_ms=_check_positive(claim_idle_ms, "claim_idle_ms", optional=True),
        )
        self._retry = check_retry(retry)
        options = client_kwargs(hostname, port, kwargs, protocol=PROTOCOL)
        self._broker = broker_name(hostname, port, options)
        self._closed = False
        self._released = False
        self._lock = threading.RLock()
        self._client = subscriber_client(options)
        self._connection = own_connection(self._client)
        try:
            self._call(self._create_groups)
        except BaseException:
            self._release()
            raise

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        group: str,
        consumer: str | None = None,
        start_id: str = "0",
        claim_idle_ms: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisStreamPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(
            hostname,
            port,
            topic,
            group=group,
            consumer=consumer,
            start_id=start_id,
            claim_idle_ms=claim_idle_ms,
            prefetch=prefetch,
            retry=retry,
            **{**options, **kwargs},
        )

    @property
    def consumer(self) -> str:
        """This subscriber's consumer name in its group."""
        return self._consumer

    def _call(self, operation: Callable[[], T]) -> T:
        # The first attempt runs bare; a failure enters the policy as its
        # first attempt (see _publish.replaying).
        try:
            return operation()
        except Exception as exc:
            failure = exc
        with map_errors(ERRORS, broker=self._broker):
            return self._retry.call(
                replaying(failure, operation),
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=self._reconnected,
            )

    def _reconnected(self, exc: BaseException) -> None:
        stop_if_fatal(exc, self._broker)
        self._reader.reconnected()

    def _create_groups(self) -> None:
        for topic in self._reader.topics:
            try:
                self._client.xgroup_create(
                    topic,
                    self._group,
                    self._start_id,
                    mkstream=True,
                )
            except redis.ResponseError as exc:
                if not _is_busygroup(exc):
                    raise _group_error(topic, exc) from exc

    def open(self) -> None:
        """Do nothing: the constructor already connected (parity with the async twin).

        Raises:
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("RedisStreamSubscriber is closed")

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Acknowledge the previous message and return the next one.

        Waits `timeout` seconds at most for a message; while Redis is away
        it keeps reconnecting until the retry policy's deadline instead. A
        detached message is returned joined into one envelope (a copy).

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            BrokerConnectionError: If Redis stays unreachable past the deadline.
        """
        return as_envelope(self.receive_detached(timeout), topic=", ".join(self._reader.topics))

    def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """`receive`, with a detached message as it came (the stream consumer's call)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = self._reader
        with self._lock:
            if self._closed:
                raise SubscriberClosedError("RedisStreamSubscriber is closed")
            while not self._closed:
                if reader.buffer:
                    self._call(self._ack)
                    return reader.hand(reader.buffer.popleft())
                wait = SLICE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        self._call(self._ack)
                        raise StreamTimeoutError(f"No message within {timeout} s")
                # The acknowledgements travel with the read.
                self._call(partial(self._fill, wait))
            raise SubscriberClosedError("RedisStreamSubscriber is closed")

    def _fill(self, wait: float) -> None:
        if self._closed:
            return
        reader = self._reader
        commands, take = reader.fill_round(self._group, self._consumer, wait)
        take(roundtrip(self._connection, commands, check=False))
        if reader.missing_group:
            reader.missing_group = False
            self._create_groups()

    def _ack(self) -> None:
        acks, take = self._reader.ack_round(self._group)
        if acks:
            take(roundtrip(self._connection, acks, check=False))

    def ack(self) -> None:
        """Acknowledge every message handed over so far.

        Does nothing once the subscriber is closed.

        Raises:
            BrokerConnectionError: If Redis stays unreachable past the deadline.
        """
        with self._lock:
            if not self._released:
                self._call(self._ack)

    def close(self) -> None:
        """Close the subscriber (idempotent) without acknowledging.

        The last message handed over (and any prefetched ones) stay pending
        for this consumer. Safe to call from another thread: a blocked
        `receive` ends within about 0.1 s.
        """
        self._closed = True
        with self._lock:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._connection.disconnect()
            self._client.close()


class AsyncRedisStreamPublisher(AsyncCommandPublisher):
    """Async twin of `RedisStreamPublisher` (redis.asyncio); same arguments."""

    key_type = None
    protocol = PROTOCOL

    detach_threshold: int = DETACH_THRESHOLD
    """A stream producer sends objects this large or larger detached (`send_detached`)."""

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        maxlen: int | None = None,
        approximate: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._trim = _trim_arguments(maxlen, approximate)
        super().__init__(hostname, port, retry=retry, **kwargs)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        maxlen: int | None = None,
        approximate: bool = True,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a publisher from a Redis URL (see `RedisStreamPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(
            hostname,
            port,
            maxlen=maxlen,
            approximate=approximate,
            retry=retry,
            **{**options, **kwargs},
        )

    def _arguments(self, topic: str, message: Any) -> tuple[Any, ...]:
        return ("XADD", topic, *self._trim, "*", FIELD, message)

    async def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Append a `DetachedMessage` (see `RedisStreamPublisher.send_detached`)."""
        check_topic(topic)
        await self._send_command(topic, *_detached_entry(topic, self._trim, message, frames))

    async def send(self, topic: str, message: bytes) -> None:
        """Append a message to the stream (see `RedisStreamPublisher.send`)."""
        await super().send(topic, message)


class AsyncRedisStreamSubscriber(AsyncOpeningContext):
    """Async twin of `RedisStreamSubscriber` (redis.asyncio); same arguments.

    Construct it, then ``await subscriber.open()`` (or ``async with``) to
    create the groups; a first `receive` opens it otherwise. A `receive`
    that times out or is cancelled while a read (0.1 s at most) is under
    way leaves that round trip in flight (`AsyncRounds`): the next call
    takes its entries first (they stay pending in Redis anyway).
    """

    connection_errors = CONNECTION_ERRORS

    def __init__(
        self,
        hostname: str,
        port: int,
        topic: str | Sequence[str],
        *,
        group: str,
        consumer: str | None = None,
        start_id: str = "0",
        claim_idle_ms: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._group = check_name(group, "group")
        self._consumer = check_name(
            default_consumer() if consumer is None else consumer,
            "consumer",
        )
        self._start_id = check_name(start_id, "start_id")
        self._reader = _GroupReader(
            topics=topic_list(topic),
            prefetch=_check_positive(prefetch, "prefetch", optional=False) or 1,
            claim_idle_ms=_check_positive(claim_idle_ms, "claim_idle_ms", optional=True),
        )
        self._retry = check_retry(retry)
        options = client_kwargs(
            hostname,
            port,
            kwargs,
            protocol=PROTOCOL,
            asyncio=True,
        )
        self._broker = broker_name(hostname, port, options)
        self._closed = False
        self._opened = False
        self._client = redis.asyncio.Redis(**options)
        self._connection = own_connection(self._client, socket_timeout=None)
        self._rounds = AsyncRounds(self._connection, options.get("socket_timeout"))
        # One call at a time talks to Redis: replies come in the order asked.
        self._turn = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        topic: str | Sequence[str],
        *,
        group: str,
        consumer: str | None = None,
        start_id: str = "0",
        claim_idle_ms: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Self:
        """Make a subscriber from a Redis URL (see `RedisStreamPublisher.from_url`)."""
        hostname, port, options = url_arguments(url)
        return cls(
            hostname,
            port,
            topic,
            group=group,
            consumer=consumer,
            start_id=start_id,
            claim_idle_ms=claim_idle_ms,
            prefetch=prefetch,
            retry=retry,
            **{**options, **kwargs},
        )

    @property
    def consumer(self) -> str:
        """This subscriber's consumer name in its group."""
        return self._consumer

    async def open(self) -> None:
        """Create the consumer groups that are missing (idempotent).

        Raises:
            BrokerConnectionError: If Redis cannot be reached.
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("AsyncRedisStreamSubscriber is closed")
        if self._opened:
            return
        try:
            await self._call(self._create_groups)
        except BaseException:
            await self.close()
            raise
        self._opened = True

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except StreamTimeoutError:
            raise
        except Exception as exc:
            failure = exc
        with map_errors(ERRORS, broker=self._broker):
            return await self._retry.call_async(
                replaying_async(failure, operation),
                retry_on=CONNECTION_ERRORS,
                broker=self._broker,
                on_retry=self._reconnected,
            )

    async def _reconnected(self, exc: BaseException) -> None:
        stop_if_fatal(exc, self._broker)
        self._reader.reconnected()

    async def _create_groups(self) -> None:
        for topic in self._reader.topics:
            try:
                await self._client.xgroup_create(
                    topic,
                    self._group,
                    self._start_id,
                    mkstream=True,
                )
            except redis.ResponseError as exc:
                if not _is_busygroup(exc):
                    raise _group_error(topic, exc) from exc

    async def _fill(self, wait: float, deadline: float | None) -> None:
        if self._closed:
            return
        reader = self._reader
        commands, take = reader.fill_round(self._group, self._consumer, wait)
        await self._rounds.run(commands, take, block=wait, deadline=deadline)
        if reader.missing_group:
            reader.missing_group = False
            await self._create_groups()

    async def _ack(self, deadline: float | None = None, *, wait: bool = True) -> None:
        # Without `wait`, the XACKs go out and their replies are taken by
        # the next call: a receive from the buffer then pays no round trip.
        await self._rounds.finish(deadline)
        acks, take = self._reader.ack_round(self._group)
        if acks:
            await self._rounds.start(acks, take, deadline=deadline)
            if wait:
                await self._rounds.finish(deadline)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive()
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Acknowledge the previous message and return the next one.

        See `RedisStreamSubscriber.receive`.
        """
        return as_envelope(
            await self.receive_detached(timeout), topic=", ".join(self._reader.topics)
        )

    async def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """`receive`, with a detached message as it came (the stream consumer's call)."""
        if self._closed:
            raise SubscriberClosedError("AsyncRedisStreamSubscriber is closed")
        await self.open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        reader = self._reader
        async with self._turn:
            while not self._closed:
                await self._call(partial(self._rounds.finish, deadline))
                if reader.buffer:
                    await self._call(partial(self._ack, deadline, wait=False))
                    if self._closed:
                        break  # the entry stays pending in Redis
                    return reader.hand(reader.buffer.popleft())
                if deadline is not None and loop.time() >= deadline:
                    await self._call(self._ack)
                    raise StreamTimeoutError(f"No message within {timeout} s")
                # The acknowledgements travel with the read.
                await self._call(partial(self._fill, SLICE_SECONDS, deadline))
        raise SubscriberClosedError("AsyncRedisStreamSubscriber is closed")

    async def ack(self) -> None:
        """Acknowledge every message handed over so far (see `RedisStreamSubscriber.ack`)."""
        if self._closed:
            return
        async with self._turn:
            await self._call(self._ack)

    async def close(self) -> None:
        """Close the subscriber (idempotent) without acknowledging.

        The last message handed over (and any prefetched ones) stay pending
        for this consumer.
        """
        if self._closed:
            return
        self._closed = True
        try:
            # A receive under way ends with its round (0.1 s at most);
            # whatever that read stays pending in Redis. XACKs sent without
            # waiting get their replies, so a lost one is known (and logged).
            async with self._turn:
                try:
                    await self._rounds.finish()
                except _CLOSE_ERRORS as exc:
                    logger.warning("acknowledgements not confirmed at close(): %s", exc)
        finally:
            await self._connection.disconnect()
            await self._client.aclose()
