"""Shim over RabbitMQ (AMQP 0-9-1) with pika: BlockingConnection (sync), AsyncioConnection (async).

Two modes, chosen with `mode=` (publisher and subscribers must agree):

| property | `mode="fanout"` (default) | `mode="queue"` |
| --- | --- | --- |
| semantics | fan-out: every subscriber | work queue: one subscriber |
| broker objects | fanout exchange per topic (1) | durable queue per topic (2) |
| persistence | none | persistent messages (`delivery_mode=2`) |
| ordering | FIFO per topic | FIFO per topic (3) |
| no subscriber | messages are dropped | messages wait in the queue |
| acknowledgement | none (auto-ack) | on next receive or `ack()` (4) |
| publisher confirms | off (5) | on: pipelined, re-sent after a reconnect |
| broker restart | messages meanwhile are missed | nothing lost; duplicates possible (6) |
| max message size | 128 MiB (7) | 128 MiB (7) |

1. Exchange `<prefix><topic>`; each subscriber has its own exclusive,
   auto-delete queue bound to the exchanges of its topics.
2. Queue `<prefix><topic>`, fed through the default exchange.
3. A redelivered (unacked) message goes back near its old position.
4. At most `prefetch` unacked messages per topic per subscriber.
5. `confirm=True` turns them on; the async publisher always uses them for
   flow control (its sends wait when 8192 messages or 64 MiB are unconfirmed).
6. See "Reconnection" below.
7. The broker's `max_message_size`, 128 MiB by default (512 MiB at most).

Names: a topic `t` becomes the exchange (fan-out) or queue (work queue)
`prefix + t`, `prefix` being `"pss."` by default. The full name must be 1 to
255 UTF-8 bytes (AMQP short string); anything else raises `ValueError`.

Reconnection: every endpoint takes `retry=` (a `RetryPolicy`, default
`RetryPolicy()`: 30 s). The first connection is tried once, so a wrong
address or password fails at once. When a working connection is lost, the
endpoint reconnects with bounded, jittered backoff, declares its exchanges
or queues again, resubscribes, and carries on; if the broker stays away past
the deadline, the call raises `BrokerConnectionError` (the next call tries
again). Duplicates come from three places, all in work-queue mode: messages
a subscriber had received but not acked when the connection dropped are
redelivered; messages a publisher sent whose confirm was lost are sent
again; and acks the broker had not yet written when it crashed. Drop them by
event id (see docs/shims/rabbitmq.md). A fan-out subscriber's queue vanishes
with its connection: what is published while it is away is missed, and it
logs a warning when it reconnects.

Delivery notes:

- `close()` does not ack the last message handed over: in work-queue mode it,
  and every prefetched message not yet handed over, is redelivered to another
  subscriber (`redelivered` flag set). Processing is at-least-once.
- Messages larger than `max_message_size` raise `ValueError` before anything
  is sent; the broker would otherwise close the channel.
- Confirms are pipelined: `send` does not wait for them. The publisher keeps
  unconfirmed messages (at most 8192 or 64 MiB; `send` waits beyond that),
  `flush()` and `close()` wait for all of them, and after a reconnect the
  unconfirmed ones are sent again. A message the broker nacks (a full queue
  with ``x-overflow=reject-publish``) is sent again with backoff; still
  refused after the retry deadline, it raises `BufferFullError` (it is kept
  and tried again on the next `send` or `flush`).
- pika's `BlockingConnection` services heartbeats only inside `send`,
  `flush` and `receive`. Holding a message longer than about twice the
  heartbeat (60 s on a default server) between receives lets the broker drop
  the connection; the subscriber reconnects on its next call and the unacked
  messages are redelivered. Set `heartbeat` in the parameters (or URL) for
  long-running work.
- The sync classes are not thread-safe, except `Subscriber.close()`, which may
  be called from any thread: it only sets a flag, and the receiving thread
  (which polls in 0.1 s slices) closes the connection.

Example:
    ```python
    publisher = RabbitMQPublisher(url="amqp://guest:guest@127.0.0.1:5672/%2F")
    subscriber = RabbitMQSubscriber("frames", url="amqp://127.0.0.1")
    workers = RabbitMQSubscriber(
        ["jobs", "urgent"], host="127.0.0.1", mode="queue", prefetch=16
    )
    ```
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import Self
from typing import TypeAlias
from urllib.parse import parse_qs
from urllib.parse import quote
from urllib.parse import urlsplit

try:
    import pika
    import pika.adapters.asyncio_connection
    import pika.adapters.utils.connection_workflow
    import pika.exceptions
except ImportError as e:  # pragma: no cover - exercised by the extras test
    from proxystore_stream.exceptions import require

    require(__name__, "pika", "rabbitmq", e)

from proxystore_stream._context import AsyncOpeningContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._core.detached import as_envelope
from proxystore_stream._core.detached import joined
from proxystore_stream._offload import SLICE_SECONDS
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.retry import RetryPolicy
from proxystore_stream.shims._errors import ErrorMap
from proxystore_stream.shims._errors import map_errors

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PREFETCH",
    "DEFAULT_PREFIX",
    "AsyncRabbitMQPublisher",
    "AsyncRabbitMQSubscriber",
    "Mode",
    "RabbitMQPublisher",
    "RabbitMQSubscriber",
]

logger = logging.getLogger(__name__)

Mode = Literal["fanout", "queue"]
"""The two ways topics map to broker objects (see the module docstring)."""

DEFAULT_PREFIX = "pss."
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024
DEFAULT_PREFETCH = 100

# Unconfirmed messages a publisher keeps before send waits for confirms, then
# down to half. Persistent messages are confirmed after the broker's fsync
# (group commits, up to a few hundred ms), so the window must hold that long a
# burst: 1024 messages capped a 100 B stream at about half its rate here.
_CONFIRM_WINDOW = 8192
_CONFIRM_WINDOW_BYTES = 64 * 1024 * 1024
# A broker that confirms nothing for this long (or the retry deadline, if
# longer) while messages wait is treated as gone: blocked by a resource
# alarm, or wedged.
_CONFIRM_TIMEOUT = 30.0
# The async publisher lets the event loop run (pika writes and reads only
# then) after this many messages or bytes handed to pika.
_YIELD_MESSAGES = 64
_YIELD_BYTES = 256 * 1024

# Applied where the caller built no pika parameters (host/port or a URL that
# does not set them): a dead or blocked broker fails in seconds, not never.
_CONNECT_DEFAULTS: dict[str, Any] = {
    "socket_timeout": 5.0,
    "stack_timeout": 10.0,
    "connection_attempts": 1,
    "retry_delay": 1.0,
    "blocked_connection_timeout": 30.0,
}

_PIKA_ERRORS: ErrorMap = {
    pika.exceptions.AMQPError: BrokerConnectionError,
    # pika raises these plain errors when the socket is already gone.
    ConnectionError: BrokerConnectionError,
    OSError: BrokerConnectionError,
    pika.adapters.utils.connection_workflow.AMQPConnectorException: BrokerConnectionError,
}
# Errors that no reconnect cures: the broker refused us, or we closed.
_PIKA_FATAL: tuple[type[BaseException], ...] = (
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.ConnectionClosedByClient,
)
# Connection.Close reply codes that mean "not you" rather than "not now":
# ACCESS_REFUSED, NOT_ALLOWED (e.g. no such vhost).
_FATAL_CODES = frozenset({403, 530})


# ---------------------------------------------------------------- pure helpers


def _check_mode(mode: str) -> Mode:
    if mode not in ("fanout", "queue"):
        raise ValueError(f"mode must be 'fanout' or 'queue', not {mode!r}")
    return mode  # type: ignore[return-value]


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix.startswith("amq."):
        raise ValueError(f"prefix {prefix!r} must not start with 'amq.' (reserved)")
    return prefix


def _check_confirm(confirm: bool | None, mode: Mode) -> bool:
    if confirm is None:
        return mode == "queue"
    if not isinstance(confirm, bool):
        raise TypeError(f"confirm must be a bool or None, not {type(confirm).__name__}")
    return confirm


def _check_retry(retry: RetryPolicy | None) -> RetryPolicy:
    if retry is None:
        return RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
    return retry


def _name(prefix: str, topic: str, parameter: str = "topic") -> str:
    """Return the exchange or queue name of `topic`, validated."""
    if not isinstance(topic, str):
        raise TypeError(f"{parameter} must be a str, not {type(topic).__name__}")
    name = prefix + topic
    size = len(name.encode())
    if not topic or size > 255:
        raise ValueError(
            f"{parameter} {topic!r} gives the AMQP name {name[:40]!r}... of "
            f"{size} bytes; it must be 1 to 255 UTF-8 bytes including the "
            f"prefix {prefix!r}",
        )
    return name


def _check_topics(topics: str | Sequence[str]) -> list[str]:
    if isinstance(topics, str):
        topics = [topics]
    if not isinstance(topics, Sequence) or not topics:
        raise ValueError("topics must be a topic name or a non-empty list of them")
    return list(dict.fromkeys(topics))


def _check_message(message: bytes, max_size: int) -> None:
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise TypeError(f"message must be bytes, not {type(message).__name__}")
    _check_message_size(len(message), max_size)


def _check_message_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise ValueError(
            f"message of {size} bytes exceeds max_message_size "
            f"({max_size} bytes); RabbitMQ would close the channel. Raise the "
            "server's max_message_size and this publisher's, or send the "
            "object through a store.",
        )


def _check_count(value: int, parameter: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{parameter} must be an int >= 0, not {value!r}")
    return value


def _parameters(
    parameters: Any,
    url: str | None,
    host: str | None,
    port: int | None,
) -> Any:
    """Build the pika connection parameters from one of the three ways to give them."""
    if parameters is not None and url is not None:
        raise ValueError("pass either parameters or url, not both")
    if (host is not None or port is not None) and (parameters or url) is not None:
        raise ValueError("host and port are only used without parameters or url")
    if parameters is not None:
        if not isinstance(parameters, pika.connection.Parameters):
            raise TypeError(
                f"parameters must be a pika.ConnectionParameters, not {type(parameters).__name__}",
            )
        return parameters  # the caller owns every setting, timeouts included
    if url is not None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        params = pika.URLParameters(url)
        given = parse_qs(urlsplit(url).query)
        for key, value in _CONNECT_DEFAULTS.items():
            if key not in given:
                setattr(params, key, value)
        return params
    return pika.ConnectionParameters(
        host=host if host is not None else "localhost",
        port=port if port is not None else 5672,
        **_CONNECT_DEFAULTS,
    )


def _describe(params: Any) -> str:
    scheme = "amqps" if params.ssl_options is not None else "amqp"
    return f"{scheme}://{params.host}:{params.port}/{quote(params.virtual_host, '')}"


def _queue_arguments(arguments: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if arguments is not None and not isinstance(arguments, Mapping):
        raise TypeError(
            f"queue_arguments must be a mapping, not {type(arguments).__name__}",
        )
    return dict(arguments) if arguments else None


def _unwrap_pika(exc: BaseException) -> BaseException:
    """Return the error of the last attempt inside a failed pika connection workflow.

    pika's async adapters report a failed connect as a workflow error holding
    one error per attempt; its BlockingConnection unwraps it the same way.
    """
    workflow = pika.adapters.utils.connection_workflow
    if isinstance(exc, workflow.AMQPConnectionWorkflowFailed) and exc.exceptions:
        exc = exc.exceptions[-1]
    if isinstance(exc, workflow.AMQPConnectorSocketConnectError):
        unwrapped: BaseException = pika.exceptions.AMQPConnectionError(exc)
        return unwrapped
    if isinstance(exc, workflow.AMQPConnectorPhaseErrorBase):
        unwrapped = exc.exception
        return unwrapped
    return exc


def _pika_lost(exc: BaseException) -> bool:
    """Whether a pika error means "the connection went away" (reconnecting may help)."""
    if isinstance(exc, (StreamError, *_PIKA_FATAL)):
        return False
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return exc.reply_code not in _FATAL_CODES
    return isinstance(
        exc,
        pika.exceptions.AMQPConnectionError
        | OSError
        | pika.adapters.utils.connection_workflow.AMQPConnectorException,
    )


class _LinkLost(Exception):
    """Internal: an attempt to reconnect failed in a way worth retrying."""


def _why(exc: BaseException) -> str:
    # pika's str() of a connection error is often empty; its repr is not.
    return f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)


def _lost_error(cause: BaseException | None, broker: str) -> BrokerConnectionError:
    detail = "" if cause is None else f": {_why(cause)}"
    return BrokerConnectionError(f"Connection to RabbitMQ was lost{detail}", broker=broker)


DETACH_THRESHOLD = 64 * 1024
"""Objects of at least this many bytes travel as the body, their envelope as a header."""

ENVELOPE_HEADER = "pss-envelope"
"""AMQP header carrying the envelope of a detached message (the body is the object)."""


class _Detached(NamedTuple):
    """An outgoing detached message: the object's data as the body, the envelope as a header."""

    body: bytes
    envelope: bytes


_Outgoing: TypeAlias = "bytes | _Detached"


def _size(outgoing: _Outgoing) -> int:
    if type(outgoing) is bytes:
        return len(outgoing)
    return len(outgoing.body) + len(outgoing.envelope)  # type: ignore[union-attr]


def _publish_on(channel: Any, mode: str, name: str, outgoing: _Outgoing, properties: Any) -> None:
    """basic_publish of a message or a detached one, in fan-out or work-queue mode."""
    if type(outgoing) is _Detached:
        headers = {ENVELOPE_HEADER: outgoing.envelope}
        persistent = 2 if mode == "queue" else None
        properties = pika.BasicProperties(delivery_mode=persistent, headers=headers)
        outgoing = outgoing.body
    if mode == "fanout":
        channel.basic_publish(name, "", outgoing, properties)
    else:
        channel.basic_publish("", name, outgoing, properties)


def _incoming(properties: Any, body: bytes) -> bytes | DetachedMessage:
    """A delivered body, or a `DetachedMessage` when the envelope came as a header."""
    headers = properties.headers
    if headers and ENVELOPE_HEADER in headers:
        return DetachedMessage(headers[ENVELOPE_HEADER], [body])
    return body


class _Unconfirmed:
    """Published messages the broker has not confirmed yet, by publish number.

    AMQP numbers the publishes of a channel in confirm mode 1, 2, 3, ...; the
    broker's Basic.Ack/Nack name a number and whether it covers every lower
    one too. `take_all()` hands back what must be published again on a new
    channel, whose numbering starts over.
    """

    __slots__ = ("_items", "_seq", "nacked", "size")

    def __init__(self) -> None:
        self._items: collections.OrderedDict[int, tuple[str, _Outgoing]] = collections.OrderedDict()
        self._seq = 0
        self.size = 0
        self.nacked: list[tuple[str, _Outgoing]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, name: str, body: _Outgoing) -> None:
        """Record the next publish on the channel."""
        self._seq += 1
        self._items[self._seq] = (name, body)
        self.size += _size(body)

    def settle(self, tag: int, *, multiple: bool, ok: bool) -> int:
        """Apply a Basic.Ack (`ok`) or Basic.Nack; return how many it settled."""
        items = self._items
        settled: list[tuple[str, _Outgoing]] = []
        if multiple:
            while items:
                first = next(iter(items))
                if first > tag:
                    break
                settled.append(items.pop(first))
        else:
            entry = items.pop(tag, None)
            if entry is not None:
                settled.append(entry)
        for entry in settled:
            self.size -= _size(entry[1])
        if not ok:
            self.nacked.extend(settled)
        return len(settled)

    def over(self, count: int, size: int) -> bool:
        """Whether more than `count` messages or `size` bytes wait (or any was nacked)."""
        return len(self._items) > count or self.size > size or bool(self.nacked)

    def take_nacked(self) -> list[tuple[str, _Outgoing]]:
        """Remove and return the nacked messages, to publish again."""
        nacked, self.nacked = self.nacked, []
        return nacked

    def put_back(self, entries: list[tuple[str, _Outgoing]]) -> None:
        """Keep `entries` (taken, but not published again) for the next `take_all`."""
        self.nacked.extend(entries)

    def take_all(self) -> list[tuple[str, _Outgoing]]:
        """Remove and return every unsettled message; numbering starts over.

        Unconfirmed ones come first, in publish order, then nacked ones.
        """
        entries = list(self._items.values()) + self.take_nacked()
        self._items.clear()
        self._seq = 0
        self.size = 0
        return entries


class _NackBackoff:
    """Delays between re-sends of nacked messages, and when to give up."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._since: float | None = None
        self._delays: Iterator[float] = iter(())

    def reset(self) -> None:
        """The broker accepted messages again: start afresh next time."""
        self._since = None

    def next_delay(self, count: int, now: float) -> float:
        """Return the delay before sending `count` nacked messages again.

        Raises:
            BufferFullError: If the broker has refused them past the deadline.
        """
        if self._since is None:
            self._since = now
            self._delays = self._policy.delays()
        elif now - self._since >= self._policy.deadline:
            since, self._since = self._since, None  # the next call starts afresh
            raise BufferFullError(
                f"RabbitMQ refused (nacked) {count} message(s) for "
                f"{now - since:.1f} s: a queue with x-overflow=reject-publish "
                "is full, or the broker could not store them. They are kept "
                "and sent again on the next send or flush.",
            )
        return next(self._delays)


# ------------------------------------------------------------------ sync twins


def _connect(params: Any) -> Any:
    """Open a BlockingConnection, translating failure (the first connect: no retry)."""
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerConnectionError(
            f"Cannot connect to RabbitMQ: {_why(exc)}",
            broker=_describe(params),
        ) from exc


# pika reads a socket 4 KiB per recv() and at most 100 KiB per readable event,
# so a 1 MiB message costs 256 recv calls, each with its frame-buffer work.
# 64 KiB reads moved 1 MiB messages 1.5 to 1.9 times faster here (sync and
# async), with no change at 100 B. The limits are private attributes of
# pika 1.x's transport: set per connection, and skipped if pika renames them.
_RECV_BYTES = 64 * 1024
_CONSUME_BYTES = 256 * 1024


def _tune_reads(connection: Any) -> None:
    """Read larger chunks on the socket of a pika (non-blocking) connection."""
    transport: Any = getattr(connection, "_transport", None)
    if hasattr(transport, "_MAX_RECV_BYTES") and hasattr(transport, "_MAX_CONSUME_BYTES"):
        transport._MAX_RECV_BYTES = _RECV_BYTES
        transport._MAX_CONSUME_BYTES = _CONSUME_BYTES


# pika writes each frame of a message (method, header, body) as its own chunk,
# one send() each, and BlockingConnection then runs a poll cycle per publish
# or ack (set writer, poll, send, remove writer): six system calls for one
# 100 B message, and as many GIL hand-overs to a receiving thread. Per
# connection, `_tune_writes` joins the frames of a message of at most
# _JOIN_BYTES into one chunk and, on plain TCP, sends a chunk at once when
# nothing waits ahead of it (what asyncio's own transports do); whatever the
# socket does not take goes to pika's buffer and writer as before, so order
# and back-pressure are pika's.
_JOIN_BYTES = 64 * 1024
# Chunks per sendmsg() from the async twins (Linux takes at most 1024).
_GATHER_MAX = 512
# A sync publisher reads what the broker sent (confirms, heartbeats, a channel
# close) once per this many sends, and in flush() and while waiting for room.
_READ_EVERY = 64


def _tune_writes(
    connection: Any,
    *,
    direct: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Join small frames and write them at once on a pika (non-blocking) connection.

    With ``direct=False`` only the joining is done: the sync subscriber keeps
    pika's poll cycle per ack, which is how it notices a lost connection
    before it hands over messages buffered from it. With `loop` (an
    `AsyncioConnection`), what is written during one turn of the loop is
    joined and sent once, when the loop next runs its ready callbacks. Skipped
    (pika's own writes stay) if the private names it relies on are missing
    from this pika version.
    """
    transport: Any = getattr(connection, "_transport", None)
    output = getattr(connection, "_output_marshaled_frames", None)
    if transport is None or output is None or not hasattr(connection, "frames_sent"):
        return

    def joined_output(frames: Sequence[bytes]) -> None:
        if len(frames) > 1:
            size = 0
            for chunk in frames:
                size += len(chunk)
            if size <= _JOIN_BYTES:
                # pika counts one per chunk it writes; keep its tally per frame.
                connection.frames_sent += len(frames) - 1
                output([b"".join(frames)])
                return
        output(frames)

    connection._output_marshaled_frames = joined_output
    if (
        not direct
        or type(transport).__name__ != "_AsyncPlaintextTransport"
        or not all(
            hasattr(transport, name) for name in ("_sock", "_tx_buffers", "_state", "_STATE_ACTIVE")
        )
    ):
        return  # TLS writes go through pika's SSL state machine
    write = transport.write
    sock, pending, active = transport._sock, transport._tx_buffers, transport._STATE_ACTIVE

    def direct_write(data: bytes) -> None:
        if not pending and transport._state == active:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # pika's writer meets the error again and closes
            if sent == len(data):
                return
            data = data[sent:]
        write(data)

    if loop is None:
        transport.write = direct_write
        return
    # Held while nothing waits in pika's buffer (so order is kept: a write
    # goes here or to pika, never both at once).
    corked: list[bytes] = []

    def uncork() -> None:
        chunks = corked[:]
        corked.clear()
        sent = 0
        if not pending and transport._state == active:
            # Gathered, not joined: a 1 MiB message is not copied again.
            try:
                sent = sock.sendmsg(chunks[:_GATHER_MAX])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # pika's writer meets the error again and closes
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            write(chunk[sent:] if sent else chunk)
            sent = 0

    def corked_write(data: bytes) -> None:
        if corked:
            corked.append(data)
        elif pending or transport._state != active:
            write(data)
        else:
            corked.append(data)
            loop.call_soon(uncork)

    transport.write = corked_write


def _close_quietly(connection: Any) -> None:
    if connection is not None and connection.is_open:
        # A lost connection is already gone; closing must not raise.
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


class RabbitMQPublisher(ClosingContext):
    """Publisher to RabbitMQ exchanges (fan-out) or durable queues (work queue).

    Args:
        parameters: `pika.ConnectionParameters` (credentials, TLS, vhost,
            heartbeat, timeouts pass through unchanged).
        url: AMQP URL instead, e.g. ``amqps://user:pass@host:5671/%2F``
            (pika's URL query options apply).
        host: Broker host when neither `parameters` nor `url` is given.
        port: Broker port likewise (default 5672).
        mode: ``"fanout"`` or ``"queue"``; must match the subscribers'.
        prefix: Prepended to topics to name exchanges/queues.
        confirm: Use publisher confirms: keep each message until the broker
            confirms it, send unconfirmed ones again after a reconnect, and
            make `flush()` wait for all confirms. Default: on in work-queue
            mode, off in fan-out mode.
        max_message_size: Larger messages raise `ValueError` (set it to the
            server's `max_message_size` if that was changed).
        queue_arguments: Extra `x-` arguments of work queues (e.g.
            ``{"x-expires": 60000}``); subscribers must pass the same.
        retry: How long and how often to reconnect after the connection is
            lost (default `RetryPolicy()`; `NO_RETRY` fails at once).

    Raises:
        BrokerConnectionError: If the broker cannot be reached.
        ValueError: If an argument is invalid (the message names it).
    """

    connection_errors: tuple[type[Exception], ...] = (
        pika.exceptions.AMQPConnectionError,
        ConnectionError,
    )

    detach_threshold: int = DETACH_THRESHOLD
    """A stream producer sends objects this large or larger detached (`send_detached`)."""

    def __init__(
        self,
        parameters: pika.ConnectionParameters | None = None,
        *,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        mode: Mode = "fanout",
        prefix: str = DEFAULT_PREFIX,
        confirm: bool | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        queue_arguments: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._mode = _check_mode(mode)
        self._prefix = _check_prefix(prefix)
        self._confirm = _check_confirm(confirm, self._mode)
        self._max_size = _check_count(max_message_size, "max_message_size")
        self._arguments = _queue_arguments(queue_arguments)
        self._retry = _check_retry(retry)
        self._params = _parameters(parameters, url, host, port)
        self._broker = _describe(self._params)
        self._properties = pika.BasicProperties(delivery_mode=2) if self._mode == "queue" else None
        # Insertion-ordered set of the names declared so far, to declare again
        # on a new connection.
        self._declared: dict[str, None] = {}
        self._unconfirmed = _Unconfirmed()
        self._nacks = _NackBackoff(self._retry)
        self._confirm_timeout = max(self._retry.deadline, _CONFIRM_TIMEOUT)
        self._sends = 0
        self._closed = False
        self._connection: Any = None
        self._channel: Any = None
        try:
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                self._open(_connect(self._params))
        except BaseException:
            _close_quietly(self._connection)
            raise

    def _open(self, connection: Any) -> None:
        """Take `connection`, open the channel and declare the known names (pika errors pass)."""
        self._connection = connection
        _tune_reads(getattr(connection, "_impl", None))
        _tune_writes(getattr(connection, "_impl", None))
        self._channel = channel = connection.channel()
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        if self._confirm:
            # BlockingChannel.confirm_delivery() would make basic_publish wait
            # for each message's confirm: a round trip per message. The
            # underlying channel takes a callback instead, which pika runs
            # while it does I/O (in basic_publish and process_data_events), so
            # confirms are pipelined. Select goes out without waiting for
            # Select-Ok: the channel keeps the order of what follows.
            channel._impl.confirm_delivery(
                ack_nack_callback=functools.partial(self._on_confirm, channel),
            )
        for name in self._declared:
            self._declare(name)

    def _declare(self, name: str) -> None:
        if self._mode == "fanout":
            self._channel.exchange_declare(name, exchange_type="fanout")
        else:
            self._channel.queue_declare(name, durable=True, arguments=self._arguments)
        self._declared[name] = None

    def _on_confirm(self, channel: Any, frame: Any) -> None:
        if channel is not self._channel:  # pragma: no cover - a dead channel's late frame
            return
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        self._unconfirmed.settle(method.delivery_tag, multiple=method.multiple, ok=ok)
        if ok and not self._unconfirmed.nacked:
            self._nacks.reset()

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        logger.warning(
            "%s blocked this publisher (%s): sends wait until it unblocks, "
            "or fail after blocked_connection_timeout",
            self._broker,
            getattr(frame.method, "reason", "resource alarm"),
        )

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        logger.info("%s unblocked this publisher", self._broker)

    def _publish(self, name: str, body: _Outgoing) -> None:
        # Recorded first: if anything below fails, the channel is gone, and
        # the message is sent again on the next one (numbering starts over).
        if self._confirm:
            self._unconfirmed.add(name, body)
        if name not in self._declared:
            self._declare(name)
        _publish_on(self._channel, self._mode, name, body, self._properties)

    def send(self, topic: str, message: bytes) -> None:
        """Publish `message` to `topic`.

        The exchange or queue of a topic is declared on its first send. With
        confirms, `send` returns once the message is written (the confirm
        comes later) and waits only when too many are unconfirmed.

        Raises:
            ValueError: If the topic name or message size is invalid.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If the connection is lost and cannot be
                restored within the retry deadline, or the broker closed
                the channel (the message names its reason).
            BufferFullError: If the broker keeps refusing (nacking) messages
                past the retry deadline; they are kept and sent again later.
        """
        name = _name(self._prefix, topic)
        _check_message(message, self._max_size)
        if self._closed:
            raise PublisherClosedError("RabbitMQPublisher is closed")
        self._send(name, bytes(message))

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Publish a `DetachedMessage`: the object's data as the body, the envelope as a header.

        Raises as `send`.
        """
        name = _name(self._prefix, topic)
        body = joined(frames)
        _check_message_size(len(body) + len(message), self._max_size)
        if self._closed:
            raise PublisherClosedError("RabbitMQPublisher is closed")
        self._send(name, _Detached(body, message))

    def _send(self, name: str, body: _Outgoing) -> None:
        self._ensure_link()
        try:
            self._sends += 1
            if self._sends >= _READ_EVERY:
                # Publishing writes without a poll cycle (see _tune_writes):
                # read confirms, heartbeats and a channel close every so often.
                self._sends = 0
                self._connection.process_data_events(time_limit=0)
            self._check_channel()
        except Exception as exc:
            self._recover_or_raise(exc)
        try:
            self._publish(name, body)
        except Exception as exc:
            self._recover_or_raise(exc)
            if not self._confirm:
                # Nothing else remembers it: send it on the new connection.
                with map_errors(_PIKA_ERRORS, broker=self._broker):
                    self._publish(name, body)
        if self._confirm and self._unconfirmed.over(_CONFIRM_WINDOW, _CONFIRM_WINDOW_BYTES):
            self._wait_confirms(_CONFIRM_WINDOW // 2, _CONFIRM_WINDOW_BYTES // 2)

    def flush(self) -> None:
        """Service the connection and wait for every outstanding confirm.

        Without confirms, messages are written to the socket inside `send`,
        so this only processes pending events (heartbeats, a channel closed
        by the broker).

        Raises:
            BrokerConnectionError: If the connection is lost and cannot be
                restored within the retry deadline, the broker closed the
                channel, or it confirmed nothing for 30 s (or the deadline).
            BufferFullError: See `send`.
        """
        if self._closed:
            return
        self._ensure_link()
        try:
            self._connection.process_data_events(time_limit=0)
            self._check_channel()
        except Exception as exc:
            self._recover_or_raise(exc)
        if self._confirm:
            self._wait_confirms(0, 0)

    def _wait_confirms(self, count: int, size: int) -> None:
        """Process events until at most `count` messages and `size` bytes are unconfirmed."""
        unconfirmed = self._unconfirmed
        waiting = len(unconfirmed)
        give_up = time.monotonic() + self._confirm_timeout
        while unconfirmed.over(count, size):
            if unconfirmed.nacked:
                self._resend_nacked()
            if len(unconfirmed) < waiting:
                waiting = len(unconfirmed)
                give_up = time.monotonic() + self._confirm_timeout
            elif time.monotonic() >= give_up:
                raise BrokerConnectionError(
                    f"RabbitMQ confirmed none of {waiting} message(s) in "
                    f"{self._confirm_timeout:.0f} s (blocked by a memory or disk "
                    "alarm?); they are kept and sent again after a reconnect",
                    broker=self._broker,
                )
            try:
                self._connection.process_data_events(time_limit=SLICE_SECONDS)
                self._check_channel()
            except Exception as exc:
                self._recover_or_raise(exc)
                give_up = time.monotonic() + self._confirm_timeout

    def _resend_nacked(self) -> None:
        time.sleep(self._nacks.next_delay(len(self._unconfirmed.nacked), time.monotonic()))
        self._publish_again(self._unconfirmed.take_nacked())

    def _publish_again(self, entries: list[tuple[str, _Outgoing]]) -> None:
        """Publish `entries`; on failure keep the rest for the next channel."""
        for index, (name, body) in enumerate(entries):
            try:
                self._publish(name, body)
            except Exception as exc:
                self._unconfirmed.put_back(entries[index + 1 :])
                self._recover_or_raise(exc)
                return

    def _check_channel(self) -> None:
        # The broker closes the channel asynchronously (e.g. a message over its
        # max_message_size); pika then only says "Channel is closed", so name
        # the broker's reason, which pika keeps on the channel.
        if self._channel.is_closed and self._connection.is_open:
            reason = getattr(self._channel, "_closing_reason", None)
            raise BrokerConnectionError(
                f"RabbitMQ closed the channel: {reason!r}",
                broker=self._broker,
            )
        if not self._connection.is_open:
            raise pika.exceptions.StreamLostError("connection closed")

    def _ensure_link(self) -> None:
        # None after a reconnect that gave up: try again now.
        if self._connection is None:
            self._recover(None)

    def _recover_or_raise(self, exc: Exception) -> None:
        if not _pika_lost(exc):
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise exc
        self._recover(exc)

    def _recover(self, cause: BaseException | None) -> None:
        """Reconnect, declare again and re-send the unconfirmed messages.

        Raises:
            BrokerConnectionError: If the broker stays away past the deadline.
        """
        _close_quietly(self._connection)
        self._connection = self._channel = None
        if self._retry.deadline <= 0:
            raise _lost_error(cause, self._broker) from cause
        if cause is not None:
            logger.warning("%s: connection lost (%s); reconnecting", self._broker, _why(cause))
        resent = self._retry.call(self._reconnect, retry_on=(_LinkLost,), broker=self._broker)
        logger.warning(
            "%s: publisher reconnected; sent %d unconfirmed message(s) again",
            self._broker,
            resent,
        )

    def _reconnect(self) -> int:
        if self._closed:
            raise PublisherClosedError("RabbitMQPublisher is closed")
        _close_quietly(self._connection)
        self._connection = self._channel = None
        entries: list[tuple[str, _Outgoing]] = []
        done = 0
        try:
            self._open(pika.BlockingConnection(self._params))
            entries = self._unconfirmed.take_all()
            for name, body in entries:
                self._publish(name, body)
                done += 1
        except Exception as exc:
            # _publish recorded those it got to; keep the others too.
            self._unconfirmed.put_back(entries[done + 1 :] if self._confirm else [])
            if _pika_lost(exc):
                raise _LinkLost(_why(exc)) from exc
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise
        return len(entries)

    def open(self) -> None:
        """Do nothing: the constructor already connected (parity with the async twin)."""

    def close(self) -> None:
        """Flush (wait for confirms) and close the connection (idempotent).

        Raises:
            BrokerConnectionError: If the flush failed; the connection is
                closed anyway and unconfirmed messages may be lost.
        """
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            _close_quietly(self._connection)


class RabbitMQSubscriber(ClosingContext):
    """Subscriber to one or more topics of RabbitMQ.

    Args:
        topics: A topic or a list of topics to receive from.
        parameters: `pika.ConnectionParameters` (see `RabbitMQPublisher`).
        url: AMQP URL instead of `parameters`.
        host: Broker host when neither `parameters` nor `url` is given.
        port: Broker port likewise (default 5672).
        mode: ``"fanout"`` or ``"queue"``; must match the publisher's.
        prefix: Prepended to topics to name exchanges/queues.
        prefetch: Work-queue mode: unacked messages the broker may push to
            this subscriber per topic (0: no limit). Unused in fan-out mode,
            whose messages are auto-acked.
        queue_arguments: Extra `x-` arguments of work queues, as given to
            the publisher.
        retry: How long and how often to reconnect after the connection is
            lost (default `RetryPolicy()`; `NO_RETRY` fails at once).

    Raises:
        BrokerConnectionError: If the broker cannot be reached.
        ValueError: If an argument is invalid (the message names it).
    """

    connection_errors = RabbitMQPublisher.connection_errors

    def __init__(
        self,
        topics: str | Sequence[str],
        parameters: pika.ConnectionParameters | None = None,
        *,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        mode: Mode = "fanout",
        prefix: str = DEFAULT_PREFIX,
        prefetch: int = DEFAULT_PREFETCH,
        queue_arguments: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._mode = _check_mode(mode)
        prefix = _check_prefix(prefix)
        self._names = [_name(prefix, t, "topics") for t in _check_topics(topics)]
        self._prefetch = _check_count(prefetch, "prefetch")
        self._arguments = _queue_arguments(queue_arguments)
        self._retry = _check_retry(retry)
        self._params = _parameters(parameters, url, host, port)
        self._broker = _describe(self._params)
        self._buffer: collections.deque[tuple[int, bytes | DetachedMessage]] = collections.deque()
        self._last_tag: int | None = None
        self._closed = False
        self._torn_down = False
        # Held by the thread inside receive(); close() from another thread
        # then leaves the connection to that thread (pika is not thread-safe).
        self._busy = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None
        try:
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                self._open(_connect(self._params))
        except BaseException:
            self._teardown()
            raise

    def _open(self, connection: Any) -> None:
        """Take `connection`, open a channel and subscribe (pika errors pass)."""
        self._connection = connection
        _tune_reads(getattr(connection, "_impl", None))
        _tune_writes(getattr(connection, "_impl", None), direct=False)
        self._channel = channel = connection.channel()
        if self._mode == "fanout":
            queue = channel.queue_declare("", exclusive=True, auto_delete=True)
            queue_name = queue.method.queue
            for name in self._names:
                channel.exchange_declare(name, exchange_type="fanout")
                channel.queue_bind(queue_name, name)
            channel.basic_consume(queue_name, self._on_message, auto_ack=True)
            return
        channel.basic_qos(prefetch_count=self._prefetch)
        for name in self._names:
            channel.queue_declare(name, durable=True, arguments=self._arguments)
            channel.basic_consume(name, self._on_message, auto_ack=False)

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self._buffer.append((method.delivery_tag, _incoming(props, body)))

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message, acking the previous one (work queue).

        A lost connection is restored (see the module docstring) while
        receive waits; the wait may then exceed `timeout` by the time the
        reconnect takes.

        Args:
            timeout: Seconds to wait at most; None waits until a message
                arrives or the subscriber is closed.

        Raises:
            StreamTimeoutError: If no message arrived within `timeout`.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            BrokerConnectionError: If the connection was lost and could not
                be restored within the retry deadline.
        """
        return as_envelope(self.receive_detached(timeout), topic=", ".join(self._names))

    def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """Return the next message as it came: bytes, or a `DetachedMessage`.

        The stream consumer uses this, so a detached object's body becomes
        its data without a copy. Raises as `receive`.
        """
        with self._busy:
            try:
                return self._receive(timeout)
            finally:
                if self._closed:
                    self._teardown()

    def _receive(self, timeout: float | None) -> bytes | DetachedMessage:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            try:
                if self._connection is None:
                    self._recover(None)
                self._ack_handed()
                if self._buffer:
                    tag, body = self._buffer.popleft()
                    if self._mode == "queue":
                        self._last_tag = tag
                    return body
                wait = SLICE_SECONDS
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.monotonic()))
                # Returns early once a message arrived; also services heartbeats.
                self._connection.process_data_events(time_limit=wait)
            except Exception as exc:
                if not _pika_lost(exc):
                    with map_errors(_PIKA_ERRORS, broker=self._broker):
                        raise
                self._recover(exc)
                continue
            if not self._buffer and deadline is not None and time.monotonic() >= deadline:
                raise StreamTimeoutError(f"No message within {timeout} s")
        raise SubscriberClosedError("RabbitMQSubscriber is closed")

    def _ack_handed(self) -> None:
        if self._last_tag is not None:
            tag, self._last_tag = self._last_tag, None
            # Tags grow in arrival order and the buffer is FIFO, so
            # "multiple" covers exactly the messages handed over.
            self._channel.basic_ack(delivery_tag=tag, multiple=True)

    def _drop(self) -> None:
        """Forget the connection; the broker redelivers its unacked messages."""
        _close_quietly(self._connection)
        self._connection = self._channel = None
        self._buffer.clear()
        self._last_tag = None

    def _recover(self, cause: BaseException | None) -> None:
        """Reconnect and subscribe again.

        Raises:
            BrokerConnectionError: If the broker stays away past the deadline.
            SubscriberClosedError: If the subscriber is closed meanwhile.
        """
        self._drop()
        if self._retry.deadline <= 0:
            raise _lost_error(cause, self._broker) from cause
        if cause is not None:
            logger.warning("%s: connection lost (%s); reconnecting", self._broker, _why(cause))
        self._retry.call(self._reconnect, retry_on=(_LinkLost,), broker=self._broker)
        if self._mode == "fanout":
            logger.warning(
                "%s: fan-out subscriber reconnected; messages published to %s "
                "while it was disconnected were missed (its queue was deleted "
                "with the connection)",
                self._broker,
                ", ".join(self._names),
            )
        else:
            logger.warning("%s: subscriber reconnected", self._broker)

    def _reconnect(self) -> None:
        if self._closed:
            raise SubscriberClosedError("RabbitMQSubscriber is closed")
        self._drop()
        try:
            self._open(pika.BlockingConnection(self._params))
        except Exception as exc:
            if _pika_lost(exc):
                raise _LinkLost(_why(exc)) from exc
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise

    def ack(self) -> None:
        """Acknowledge every message handed over so far (work queue; no-op in fan-out).

        If the connection was lost, there is nothing to ack on: the broker
        redelivers those messages, and the next receive reconnects.

        Raises:
            SubscriberClosedError: If the subscriber is closed.
        """
        with self._busy:
            if self._closed:
                raise SubscriberClosedError("RabbitMQSubscriber is closed")
            if self._connection is None:
                return
            try:
                self._ack_handed()
            except Exception as exc:
                if not _pika_lost(exc):
                    with map_errors(_PIKA_ERRORS, broker=self._broker):
                        raise
                self._drop()

    def open(self) -> None:
        """Do nothing: the constructor already subscribed (parity with the async twin)."""

    def close(self) -> None:
        """Close the subscriber (idempotent, callable from any thread).

        The last message handed over is not acked: in work-queue mode it is
        redelivered, like every prefetched message not handed over yet. A
        receive blocked in another thread raises `SubscriberClosedError`
        (iteration ends) within 0.1 s (within the current backoff delay, at
        most the policy's `maximum`, while reconnecting) and closes the
        connection itself.
        """
        self._closed = True
        if self._busy.acquire(blocking=False):
            try:
                self._teardown()
            finally:
                self._busy.release()

    def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self._buffer.clear()
        _close_quietly(self._connection)


# ----------------------------------------------------------------- async twins


class _AsyncLink:
    """One pika `AsyncioConnection` and channel, with awaitable RPCs.

    pika's asyncio adapter is callback based: each RPC takes a completion
    callback. `call` turns one into an awaitable that also ends, with the
    error, if the connection or channel is lost first (else it would wait
    forever).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.connection: Any = None
        self.channel: Any = None
        # Holds the error (as its result) once the connection or channel is gone.
        self.lost: asyncio.Future[BaseException] = loop.create_future()

    def lose(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def call(self, start: Callable[..., object]) -> Any:
        """Run ``start(callback=...)`` and return what pika passes the callback."""
        done: asyncio.Future[Any] = self.loop.create_future()

        def finish(result: Any) -> None:
            if not done.done():
                done.set_result(result)

        start(callback=finish)
        await asyncio.wait(
            (done, self.lost), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if done.done():
            return done.result()
        if self.lost.done():
            raise self.lost.result()
        raise TimeoutError(f"RabbitMQ did not answer within {self.timeout} s")

    async def close(self) -> None:
        """Close the connection (quietly) and wait, bounded, until pika reports it closed."""
        connection = self.connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
        if connection is not None and not connection.is_closed:
            await asyncio.wait((self.lost,), timeout=self.timeout)

    @classmethod
    async def open(cls, params: Any, on_lost: Callable[[BaseException], None]) -> Self:
        """Connect and open a channel; `on_lost(error)` runs once either is gone.

        Raises the pika error (unwrapped) if connecting fails; pika bounds
        the connect itself (socket_timeout, stack_timeout).
        """
        loop = asyncio.get_running_loop()
        link = cls(loop, float(params.stack_timeout or 10.0))
        opened: asyncio.Future[None] = loop.create_future()

        def on_open(connection: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_open_error(connection: Any, exc: BaseException) -> None:
            link.lose(exc)
            if not opened.done():
                opened.set_exception(_unwrap_pika(exc))

        def on_close(connection_or_channel: Any, exc: BaseException) -> None:
            if not link.lost.done():
                link.lose(exc)
                on_lost(exc)

        link.connection = connection = pika.adapters.asyncio_connection.AsyncioConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            await opened
            _tune_reads(connection)
            _tune_writes(connection, loop=loop)
            link.channel = await link.call(
                lambda callback: connection.channel(on_open_callback=callback),
            )
            link.channel.add_on_close_callback(on_close)
        except BaseException:
            await link.close()
            raise
        return link


class AsyncRabbitMQPublisher(AsyncOpeningContext):
    """Async twin of `RabbitMQPublisher`; same arguments.

    Built on pika's asyncio adapter (`AsyncioConnection`), whose publish
    writes a frame and takes confirms as callbacks: confirms pipeline with no
    future or task per message. (aio-pika awaits each publish's socket drain
    or confirm; see docs/shims/rabbitmq.md for the measurements.) Confirms
    are always on, also in fan-out mode where `confirm=False` only means
    "keep nothing to send again": they bound the data in flight, because
    pika's asyncio writes are otherwise unbounded.

    Construct it, then ``await publisher.open()`` (or ``async with``) to
    connect; a first `send` opens it otherwise.
    """

    connection_errors = RabbitMQPublisher.connection_errors

    detach_threshold: int = DETACH_THRESHOLD
    """A stream producer sends objects this large or larger detached (`send_detached`)."""

    def __init__(
        self,
        parameters: pika.ConnectionParameters | None = None,
        *,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        mode: Mode = "fanout",
        prefix: str = DEFAULT_PREFIX,
        confirm: bool | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        queue_arguments: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._mode = _check_mode(mode)
        self._prefix = _check_prefix(prefix)
        self._confirm = _check_confirm(confirm, self._mode)
        self._max_size = _check_count(max_message_size, "max_message_size")
        self._arguments = _queue_arguments(queue_arguments)
        self._retry = _check_retry(retry)
        self._params = _parameters(parameters, url, host, port)
        self._broker = _describe(self._params)
        self._properties = pika.BasicProperties(delivery_mode=2) if self._mode == "queue" else None
        self._declared: dict[str, None] = {}
        self._unconfirmed = _Unconfirmed()
        self._nacks = _NackBackoff(self._retry)
        self._confirm_timeout = max(self._retry.deadline, _CONFIRM_TIMEOUT)
        self._link: _AsyncLink | None = None
        # Resolved by _on_confirm once the unconfirmed messages fit the target.
        self._room: asyncio.Future[None] | None = None
        self._room_target = (0, 0)
        self._recovering: asyncio.Lock | None = None
        self._unyielded = 0
        self._opened = False
        self._closed = False

    async def open(self) -> None:
        """Connect to the broker (idempotent; the first connect is not retried).

        Raises:
            BrokerConnectionError: If the broker cannot be reached.
            PublisherClosedError: If the publisher is closed.
        """
        if self._closed:
            raise PublisherClosedError("AsyncRabbitMQPublisher is closed")
        if self._link is not None:
            return
        try:
            self._link = await self._connect()
        except Exception as exc:
            raise BrokerConnectionError(
                f"Cannot connect to RabbitMQ: {_why(exc)}",
                broker=self._broker,
            ) from exc
        self._opened = True

    async def _connect(self) -> _AsyncLink:
        """Open a connection and channel in confirm mode; declare the known names."""
        link = await _AsyncLink.open(self._params, lambda exc: self._wake())
        try:
            link.connection.add_on_connection_blocked_callback(self._on_blocked)
            link.connection.add_on_connection_unblocked_callback(self._on_unblocked)
            channel = link.channel
            await link.call(
                lambda callback: channel.confirm_delivery(
                    functools.partial(self._on_confirm, link),
                    callback=callback,
                ),
            )
            for name in self._declared:
                await self._declare(link, name)
        except BaseException:
            await link.close()
            raise
        return link

    async def _declare(self, link: _AsyncLink, name: str) -> None:
        channel = link.channel
        if self._mode == "fanout":
            await link.call(
                lambda callback: channel.exchange_declare(name, "fanout", callback=callback),
            )
        else:
            await link.call(
                lambda callback: channel.queue_declare(
                    name,
                    durable=True,
                    arguments=self._arguments,
                    callback=callback,
                ),
            )
        self._declared[name] = None

    def _on_confirm(self, link: _AsyncLink, frame: Any) -> None:
        if link is not self._link:  # pragma: no cover - a dead channel's late frame
            return
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        self._unconfirmed.settle(method.delivery_tag, multiple=method.multiple, ok=ok)
        if ok and not self._unconfirmed.nacked:
            self._nacks.reset()
        if not self._unconfirmed.over(*self._room_target) or not ok:
            self._wake()

    def _wake(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        logger.warning(
            "%s blocked this publisher (%s): sends wait until it unblocks",
            self._broker,
            getattr(frame.method, "reason", "resource alarm"),
        )

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        logger.info("%s unblocked this publisher", self._broker)

    def _publish(self, link: _AsyncLink, name: str, body: _Outgoing) -> None:
        # Recorded first (see RabbitMQPublisher._publish). In fan-out mode
        # without `confirm` the record only counts what is in flight.
        self._unconfirmed.add(name, body)
        _publish_on(link.channel, self._mode, name, body, self._properties)

    async def send(self, topic: str, message: bytes) -> None:
        """Publish `message` to `topic` (see `RabbitMQPublisher.send`).

        pika writes while the event loop runs: `send` lets it run every 64
        messages or 256 KiB, and waits when 8192 messages or 64 MiB are
        unconfirmed.

        Raises:
            ValueError: If the topic name or message size is invalid.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: See `RabbitMQPublisher.send`.
            BufferFullError: See `RabbitMQPublisher.send`.
        """
        name = _name(self._prefix, topic)
        _check_message(message, self._max_size)
        if self._closed:
            raise PublisherClosedError("AsyncRabbitMQPublisher is closed")
        await self._send(name, bytes(message))

    async def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Publish a `DetachedMessage` (see `RabbitMQPublisher.send_detached`)."""
        name = _name(self._prefix, topic)
        body = joined(frames)
        _check_message_size(len(body) + len(message), self._max_size)
        if self._closed:
            raise PublisherClosedError("AsyncRabbitMQPublisher is closed")
        await self._send(name, _Detached(body, message))

    async def _send(self, name: str, body: _Outgoing) -> None:
        link = self._link
        if link is None or link.lost.done() or name not in self._declared:
            link = await self._ready(name)
        try:
            self._publish(link, name, body)
        except Exception as exc:
            link = await self._recover_or_raise(exc, link)
            if not self._confirm:
                with map_errors(_PIKA_ERRORS, broker=self._broker):
                    self._publish(link, name, body)
        unconfirmed = self._unconfirmed
        if unconfirmed.over(_CONFIRM_WINDOW, _CONFIRM_WINDOW_BYTES):
            await self._wait_confirms(_CONFIRM_WINDOW // 2, _CONFIRM_WINDOW_BYTES // 2)
            self._unyielded = 0
            return
        self._unyielded += _size(body) + _YIELD_BYTES // _YIELD_MESSAGES
        if self._unyielded >= _YIELD_BYTES:
            self._unyielded = 0
            await asyncio.sleep(0)

    async def _ready(self, name: str) -> _AsyncLink:
        """Return a live link on which `name` is declared (connect or reconnect first)."""
        if not self._opened:
            await self.open()
        link = self._link
        if link is None:
            link = await self._recover(None, None)
        elif link.lost.done():
            link = await self._recover_or_raise(link.lost.result(), link)
        if name not in self._declared:
            try:
                await self._declare(link, name)
            except Exception as exc:
                link = await self._recover_or_raise(exc, link)
                if name not in self._declared:
                    with map_errors(_PIKA_ERRORS, broker=self._broker):
                        await self._declare(link, name)
        return link

    async def flush(self) -> None:
        """Wait for every outstanding confirm (the broker has every message sent).

        Raises:
            BrokerConnectionError: See `RabbitMQPublisher.flush`.
            BufferFullError: See `RabbitMQPublisher.send`.
        """
        if self._closed or not self._opened:
            return
        await self._wait_confirms(0, 0)

    async def _wait_confirms(self, count: int, size: int) -> None:
        """Wait until at most `count` messages and `size` bytes are unconfirmed."""
        unconfirmed = self._unconfirmed
        loop = asyncio.get_running_loop()
        waiting = len(unconfirmed)
        give_up = loop.time() + self._confirm_timeout
        while unconfirmed.over(count, size):
            link = self._link
            if link is None:
                await self._recover(None, None)
                give_up = loop.time() + self._confirm_timeout
                continue
            if link.lost.done():
                await self._recover_or_raise(link.lost.result(), link)
                give_up = loop.time() + self._confirm_timeout
                continue
            if unconfirmed.nacked:
                await self._resend_nacked(link)
                continue
            if len(unconfirmed) < waiting:
                waiting = len(unconfirmed)
                give_up = loop.time() + self._confirm_timeout
            elif loop.time() >= give_up:
                raise BrokerConnectionError(
                    f"RabbitMQ confirmed none of {waiting} message(s) in "
                    f"{self._confirm_timeout:.0f} s (blocked by a memory or disk "
                    "alarm?); they are kept and sent again after a reconnect",
                    broker=self._broker,
                )
            self._room = room = loop.create_future()
            self._room_target = (count, size)
            try:
                await asyncio.wait(
                    (room,),
                    timeout=max(0.0, give_up - loop.time()),
                )
            finally:
                self._room = None
                self._room_target = (0, 0)

    async def _resend_nacked(self, link: _AsyncLink) -> None:
        nacked = self._unconfirmed.nacked
        await asyncio.sleep(self._nacks.next_delay(len(nacked), time.monotonic()))
        if not self._confirm:
            # Fan-out without confirm keeps nothing to send again.
            self._unconfirmed.take_nacked()
            return
        entries = self._unconfirmed.take_nacked()
        for index, (name, body) in enumerate(entries):
            try:
                self._publish(link, name, body)
            except Exception as exc:
                self._unconfirmed.put_back(entries[index + 1 :])
                await self._recover_or_raise(exc, link)
                return

    async def _recover_or_raise(self, exc: BaseException, link: _AsyncLink) -> _AsyncLink:
        """Reconnect if `exc` means a lost connection; else raise it, translated.

        A channel the broker closed (PRECONDITION_FAILED, a message over its
        size limit, ...) is not lost: reconnecting and sending the same
        messages again would only repeat it.
        """
        if not _pika_lost(exc):
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise exc
        return await self._recover(exc, link)

    async def _recover(self, cause: BaseException | None, failed: _AsyncLink | None) -> _AsyncLink:
        """Reconnect (once for all tasks that saw `failed` die) and re-send.

        Raises:
            BrokerConnectionError: If the broker stays away past the deadline.
        """
        if self._recovering is None:
            self._recovering = asyncio.Lock()
        async with self._recovering:
            link = self._link
            if link is not None and link is not failed and not link.lost.done():
                return link  # another task reconnected meanwhile
            self._link = None
            if failed is not None:
                await failed.close()
            if self._retry.deadline <= 0:
                self._drop_unconfirmed()
                raise _lost_error(cause, self._broker) from cause
            if cause is not None:
                logger.warning(
                    "%s: connection lost (%s); reconnecting",
                    self._broker,
                    _why(cause),
                )
            new, resent = await self._retry.call_async(
                self._reconnect,
                retry_on=(_LinkLost,),
                broker=self._broker,
            )
            logger.warning(
                "%s: publisher reconnected; sent %d unconfirmed message(s) again",
                self._broker,
                resent,
            )
            return new

    def _drop_unconfirmed(self) -> None:
        if not self._confirm:
            self._unconfirmed.take_all()

    async def _reconnect(self) -> tuple[_AsyncLink, int]:
        if self._closed:
            raise PublisherClosedError("AsyncRabbitMQPublisher is closed")
        try:
            link = await self._connect()
        except Exception as exc:
            if _pika_lost(exc):
                raise _LinkLost(_why(exc)) from exc
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise
        entries = self._unconfirmed.take_all()
        if not self._confirm:
            entries = []  # only counted for flow control: gone with the connection
        self._link = link
        for index, (name, body) in enumerate(entries):
            try:
                self._publish(link, name, body)
            except Exception as exc:
                self._unconfirmed.put_back(entries[index + 1 :])
                self._link = None
                await link.close()
                if _pika_lost(exc):
                    raise _LinkLost(_why(exc)) from exc
                with map_errors(_PIKA_ERRORS, broker=self._broker):
                    raise
        return link, len(entries)

    async def close(self) -> None:
        """Flush (wait for confirms) and close the connection (idempotent).

        Raises:
            BrokerConnectionError: If the flush failed; the connection is
                closed anyway and unconfirmed messages may be lost.
        """
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            link, self._link = self._link, None
            if link is not None:
                await link.close()


class AsyncRabbitMQSubscriber(AsyncOpeningContext):
    """Async twin of `RabbitMQSubscriber`; same arguments.

    Built on pika's asyncio adapter, like `AsyncRabbitMQPublisher`: each
    delivery is a plain callback that puts the message in an `asyncio.Queue`
    (no task or message object per delivery), which `receive` takes from, so
    a cancelled receive loses no message. Acks (ack-on-next) are written
    without waiting; `ack()` waits for the broker to have them.

    Construct it, then ``await subscriber.open()`` (or ``async with``) so the
    subscription exists before anything is sent (a first `receive` opens it
    otherwise).
    """

    connection_errors = RabbitMQPublisher.connection_errors

    def __init__(
        self,
        topics: str | Sequence[str],
        parameters: pika.ConnectionParameters | None = None,
        *,
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        mode: Mode = "fanout",
        prefix: str = DEFAULT_PREFIX,
        prefetch: int = DEFAULT_PREFETCH,
        queue_arguments: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._mode = _check_mode(mode)
        prefix = _check_prefix(prefix)
        self._names = [_name(prefix, t, "topics") for t in _check_topics(topics)]
        self._prefetch = _check_count(prefetch, "prefetch")
        self._arguments = _queue_arguments(queue_arguments)
        self._retry = _check_retry(retry)
        self._params = _parameters(parameters, url, host, port)
        self._broker = _describe(self._params)
        # (generation, delivery tag, body); a None body marks "closed or
        # connection lost" and wakes a waiting receive. Items of an older
        # generation came through a lost channel and are dropped: the broker
        # redelivers them.
        self._inbox: asyncio.Queue[tuple[int, int, bytes | DetachedMessage | None]] = (
            asyncio.Queue()
        )
        self._generation = 0
        self._last_tag: int | None = None
        self._link: _AsyncLink | None = None
        # True once the connection is known lost: the next receive reconnects.
        self._broken = False
        self._lost: BaseException | None = None
        self._recovering: asyncio.Lock | None = None
        self._opened = False
        self._closed = False

    async def open(self) -> None:
        """Connect and subscribe (idempotent); returns once subscribed.

        The first connect is not retried.

        Raises:
            BrokerConnectionError: If the broker cannot be reached.
        """
        if self._opened or self._closed:
            return
        try:
            await self._connect()
        except Exception as exc:
            if isinstance(exc, StreamError):
                raise
            if isinstance(exc, pika.exceptions.AMQPConnectionError | OSError):
                raise BrokerConnectionError(
                    f"Cannot connect to RabbitMQ: {_why(exc)}",
                    broker=self._broker,
                ) from exc
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise
        self._opened = True

    async def _connect(self) -> None:
        """Connect, subscribe and become the current generation (pika errors pass)."""
        generation = self._generation + 1
        link = await _AsyncLink.open(
            self._params,
            functools.partial(self._on_lost, generation),
        )
        try:
            await self._subscribe(link, generation)
        except BaseException:
            await link.close()
            raise
        self._link, self._generation = link, generation
        self._broken = False

    async def _subscribe(self, link: _AsyncLink, generation: int) -> None:
        channel = link.channel
        on_message = functools.partial(self._on_message, generation)
        if self._mode == "fanout":
            declared = await link.call(
                lambda callback: channel.queue_declare(
                    "",
                    exclusive=True,
                    auto_delete=True,
                    callback=callback,
                ),
            )
            queue = declared.method.queue
            for name in self._names:
                await link.call(functools.partial(channel.exchange_declare, name, "fanout"))
                await link.call(functools.partial(channel.queue_bind, queue, name))
            await link.call(
                lambda callback: channel.basic_consume(
                    queue,
                    on_message,
                    auto_ack=True,
                    callback=callback,
                ),
            )
            return
        await link.call(
            lambda callback: channel.basic_qos(prefetch_count=self._prefetch, callback=callback),
        )
        for name in self._names:
            await link.call(
                functools.partial(
                    channel.queue_declare,
                    name,
                    durable=True,
                    arguments=self._arguments,
                ),
            )
            await link.call(
                functools.partial(channel.basic_consume, name, on_message, auto_ack=False),
            )

    def _on_message(
        self,
        generation: int,
        channel: Any,
        method: Any,
        properties: Any,
        body: bytes,
    ) -> None:
        self._inbox.put_nowait((generation, method.delivery_tag, _incoming(properties, body)))

    def _on_lost(self, generation: int, exc: BaseException) -> None:
        if generation == self._generation:
            self._lost = exc
        self._inbox.put_nowait((generation, 0, None))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive()
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `RabbitMQSubscriber.receive`)."""
        return as_envelope(await self.receive_detached(timeout), topic=", ".join(self._names))

    async def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """Return the next message as it came (see `RabbitMQSubscriber.receive_detached`)."""
        if self._closed:
            raise SubscriberClosedError("AsyncRabbitMQSubscriber is closed")
        await self.open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        inbox = self._inbox
        while True:
            if self._broken:
                await self._recover()
            self._ack_handed()
            if inbox.empty():
                try:
                    async with asyncio.timeout_at(deadline):
                        # Queue.get removes an item only when it returns, so a
                        # cancellation (or the timeout) leaves it for the next call.
                        generation, tag, body = await inbox.get()
                except TimeoutError:
                    raise StreamTimeoutError(f"No message within {timeout} s") from None
            else:
                generation, tag, body = inbox.get_nowait()
            if self._closed:
                inbox.put_nowait((generation, 0, None))  # wake the next waiter too
                raise SubscriberClosedError("AsyncRabbitMQSubscriber is closed")
            message = self._hand(generation, tag, body)
            if message is not None:
                return message

    def receive_ready(self) -> bytes | DetachedMessage | None:
        """Return a message already in the inbox, as it came, or None (never waits).

        Acknowledges the message handed over before, as `receive` does.
        """
        if self._closed or self._broken:
            return None
        self._ack_handed()
        inbox = self._inbox
        while not self._broken and not inbox.empty():  # bounded by the inbox
            message = self._hand(*inbox.get_nowait())
            if message is not None:
                return message
        return None

    def _hand(
        self, generation: int, tag: int, body: bytes | DetachedMessage | None
    ) -> bytes | DetachedMessage | None:
        """Hand over an inbox item; None for one to skip (or a lost connection's mark)."""
        if generation != self._generation:
            return None  # from a lost connection: the broker redelivers it
        if body is None:
            self._broken = True  # the next receive reconnects
            return None
        if self._mode == "queue":
            self._last_tag = tag
        return body

    def _ack_handed(self) -> None:
        """Ack what was handed over (ack-on-next): written, not waited for."""
        if self._last_tag is None:
            return
        tag, self._last_tag = self._last_tag, None
        link = self._link
        try:
            if link is None or link.lost.done():
                raise link.lost.result() if link is not None else _LinkLost("not connected")
            # Tags grow in arrival order and the inbox is FIFO, so "multiple"
            # covers exactly the messages handed over.
            link.channel.basic_ack(delivery_tag=tag, multiple=True)
        except Exception as exc:
            if not (_pika_lost(exc) or isinstance(exc, _LinkLost)):
                with map_errors(_PIKA_ERRORS, broker=self._broker):
                    raise
            # Nothing to ack on: the broker redelivers; receive reconnects.
            self._broken = True

    async def _recover(self) -> None:
        """Reconnect and subscribe again (once, however many tasks wait).

        Raises:
            BrokerConnectionError: If the broker stays away past the deadline,
                or closed the channel for a reason a reconnect cannot cure.
        """
        if self._recovering is None:
            self._recovering = asyncio.Lock()
        async with self._recovering:
            if not self._broken:
                return  # another task reconnected meanwhile
            cause, self._lost = self._lost, None
            self._last_tag = None
            link, self._link = self._link, None
            # Deliveries still queued from the lost channel are dropped by
            # generation: the broker redelivers them.
            self._generation += 1
            if link is not None:
                await link.close()
            if cause is not None and not _pika_lost(cause):
                with map_errors(_PIKA_ERRORS, broker=self._broker):
                    raise cause
            if self._retry.deadline <= 0:
                raise _lost_error(cause, self._broker) from cause
            logger.warning(
                "%s: connection lost%s; reconnecting",
                self._broker,
                "" if cause is None else f" ({_why(cause)})",
            )
            await self._retry.call_async(
                self._reconnect,
                retry_on=(_LinkLost,),
                broker=self._broker,
            )
            if self._mode == "fanout":
                logger.warning(
                    "%s: fan-out subscriber reconnected; messages published to %s "
                    "while it was disconnected were missed (its queue was deleted "
                    "with the connection)",
                    self._broker,
                    ", ".join(self._names),
                )
            else:
                logger.warning("%s: subscriber reconnected", self._broker)

    async def _reconnect(self) -> None:
        if self._closed:
            raise SubscriberClosedError("AsyncRabbitMQSubscriber is closed")
        try:
            await self._connect()
        except Exception as exc:
            if _pika_lost(exc):
                raise _LinkLost(_why(exc)) from exc
            with map_errors(_PIKA_ERRORS, broker=self._broker):
                raise

    async def ack(self) -> None:
        """Acknowledge every message handed over so far (see `RabbitMQSubscriber.ack`).

        Returns once the broker has processed the ack (a Basic.Qos round
        trip behind it on the same channel).

        Raises:
            SubscriberClosedError: If the subscriber is closed.
        """
        if self._closed:
            raise SubscriberClosedError("AsyncRabbitMQSubscriber is closed")
        if self._last_tag is None:
            return
        self._ack_handed()
        link = self._link
        if self._broken or link is None:
            return
        with contextlib.suppress(Exception):
            # The broker handles a channel's frames in order: once Qos-Ok is
            # back, the ack before it was applied. A loss meanwhile means the
            # messages are redelivered, as for any unacked message.
            await link.call(
                lambda callback: link.channel.basic_qos(
                    prefetch_count=self._prefetch if self._mode == "queue" else 0,
                    callback=callback,
                ),
            )

    async def close(self) -> None:
        """Close the subscriber (idempotent); the last message is not acked.

        Acks already written go out before the connection closes (frames
        leave in order).
        """
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait((self._generation, 0, None))
        link, self._link = self._link, None
        if link is not None:
            await link.close()
