r"""Shim over ZeroMQ PUB/SUB sockets (pyzmq); no broker process.

| property | behaviour |
| --- | --- |
| semantics | fan-out: every subscriber of a topic gets every message |
| persistence | none: messages live only in socket queues |
| ordering | FIFO per publisher; no order between several publishers |
| no subscriber | dropped at once by the publisher (nothing is kept) |
| acknowledgement | none |
| max message size | memory (no ZeroMQ limit unless `maxmsgsize` is set) |
| queue full (HWM) | the publisher DROPS messages silently for that subscriber |

Topics are framed exactly: each message starts with ``topic + b"\x00"``,
and a subscriber subscribes to ``topic + b"\x00"``. A payload of at most
`SINGLE_FRAME_LIMIT` bytes follows in the same frame, a larger one in a
second frame. (A large object from a stream producer travels beside its
envelope, in frames of its own: see `send_detached` and
`receive_detached`.) Subscribers accept every form. ZeroMQ
matches subscriptions by prefix, so without the terminator a subscriber of
``"a"`` would also get ``"ab"``. Topics therefore may not contain NUL.

Topologies:

- 1:N (default): the publisher binds, subscribers connect.
- N:1: the subscriber binds (``bind=True``) and publishers connect
  (``bind=False``). ZeroMQ completes a new connection, and so sends the
  subscriptions to a new publisher, only while the binding subscriber is in
  use: start receiving (e.g. in a thread) before waiting for subscribers on
  the publishers.
- N:N: a `ZeroMQForwarder` binds an XSUB frontend for publishers and an
  XPUB backend for subscribers; every endpoint connects to it.

Endpoints are given as ``address, port`` (TCP) or as one full endpoint URL
in ``address`` with no port: ``"tcp://127.0.0.1:5555"``,
``"ipc:///tmp/feed.sock"``. Port 0 when binding picks a free port; read the
actual one from ``.endpoint``.

High-water mark (HWM): every socket option is set BEFORE bind/connect, so it
reaches every peer, including peers that connect later. The default HWM is
`DEFAULT_HWM` messages per peer (ZeroMQ's own default is 1,000, which loses
messages under bursts). A PUB socket whose queue to a subscriber is full
drops further messages to that subscriber silently; memory per peer is
bounded by ``hwm x message size``. ``sndhwm=0``/``rcvhwm=0`` means no limit
(no drops, unbounded memory).

Slow joiner: a subscriber that just connected misses messages until its
subscription reaches the publisher. The publisher uses an XPUB socket and
counts live subscriptions, so `ZeroMQPublisher.wait_for_subscribers` blocks
until a subscriber is ready. ZeroMQ connects lazily: a publisher or
subscriber aimed at an absent peer is created without error and simply
sends to nobody / receives nothing until the peer appears.

Example:
    ```python
    with ZeroMQPublisher("127.0.0.1", 5555) as pub, ZeroMQSubscriber(
        "127.0.0.1", 5555, topic="frames"
    ) as sub:
        pub.wait_for_subscribers("frames")
        pub.send("frames", b"...")
        message = sub.receive(timeout=5)
    ```
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from typing import Self

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._core.detached import as_envelope
from proxystore_stream._core.envelope import frames_size
from proxystore_stream._fair import FairShare
from proxystore_stream._offload import SLICE_SECONDS
from proxystore_stream._readable import wait_readable
from proxystore_stream.exceptions import BrokerConnectionError
from proxystore_stream.exceptions import MalformedMessageError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.exceptions import require
from proxystore_stream.protocols import DetachedMessage
from proxystore_stream.shims._errors import ErrorMap
from proxystore_stream.shims._errors import map_errors

try:
    import zmq
    import zmq.asyncio
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    require(__name__, "zmq", "zmq", e)

__all__ = [
    "DEFAULT_ASYNC_ZERO_COPY_THRESHOLD",
    "DEFAULT_HWM",
    "DEFAULT_LINGER",
    "DEFAULT_ZERO_COPY_THRESHOLD",
    "DETACH_THRESHOLD",
    "SINGLE_FRAME_LIMIT",
    "AsyncZeroMQPublisher",
    "AsyncZeroMQSubscriber",
    "ZeroMQForwarder",
    "ZeroMQPublisher",
    "ZeroMQSubscriber",
]

DEFAULT_HWM = 100_000
"""Default send/receive high-water mark, in messages per peer."""

DEFAULT_LINGER = 1.0
"""Default seconds a closing publisher keeps trying to deliver queued messages."""

DEFAULT_ZERO_COPY_THRESHOLD = 2 * 1024 * 1024
"""Payloads of at least this many bytes are sent without copying.

The send call itself is far cheaper without the copy (1 MiB: 3 us vs
600 us), but the buffer then stays alive until libzmq's I/O thread sent it
and pyzmq's garbage-collector thread (which needs the GIL) released it, so
a new payload per message cannot reuse the memory of the last one. Measured
end to end here (sender thread, receiver thread, a new payload per message,
CPU per message): 64 KiB 87 us copied vs 107 us zero-copy, 2 MiB 2.0 vs
2.0 ms, 8 MiB 7.1 vs 6.9 ms, 32 MiB 77 vs 60 ms; 1 MiB with publisher and
subscriber on one context 417-441 vs 555-596 us. (Sending one payload
object over and over, zero-copy wins from 64 KiB.)
"""

DEFAULT_ASYNC_ZERO_COPY_THRESHOLD = 256 * 1024
"""`AsyncZeroMQPublisher`'s default: payloads this large go without a copy.

Lower than the sync default because an async publisher copies on the event
loop, which is the bottleneck when one loop both sends and receives; a
zero-copy send leaves the work to libzmq's I/O thread. Producer and
consumer on one loop, one shared context, fresh payload per message, two
alternating runs each: 128 KiB 16,032-17,020 msg/s copied vs
12,420-13,950 zero-copy; 256 KiB 8,048-8,073 vs 9,242-9,771; 1 MiB
1,960-1,976 vs 2,287-2,738 (64 KiB: 27,460-29,157 vs 19,438-19,932).
"""

DETACH_THRESHOLD = 16 * 1024
"""Objects this large or larger travel as frames beside their envelope (`send_detached`)."""

SINGLE_FRAME_LIMIT = 1024
"""Messages of at most this many bytes travel in one frame behind their topic.

One frame ``topic + NUL + message`` instead of two saves a send, a receive
and a frame check: about 1 us of the 4 us bare pyzmq spends on a 100 B
message here, and nothing measurable from 2 KiB on (the copy into the
frame then costs what the second send saved).
"""

_ERRORS: ErrorMap = {zmq.ZMQError: BrokerConnectionError}
_TERMINATOR = b"\x00"
_MAX_CACHED_TOPICS = 4096
# How often the publisher reads pending subscription notices while sending
# (XPUB keeps them in an unbounded in-memory queue until read).
_DRAIN_EVERY = 1024
_forwarder_ids = itertools.count()
# A send on an XPUB socket never suspends, so an async publisher would hold
# the event loop for a whole burst; it yields once per 1 MiB or this many
# messages (FairShare: before the next send, so a cancelled yield has sent
# nothing). More messages than the in-process shims' 64: measured faster here.
_YIELD_MESSAGES = 1024
# Plain ints: combining pyzmq's flag enums costs more than the send itself.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_RCVTIMEO = int(zmq.RCVTIMEO)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# pyzmq keeps the copy threshold in a C int.
_MAX_COPY_THRESHOLD = 2**31 - 1


# Module-private pure helpers shared by the sync and async twins.


def _endpoint(address: str, port: int | None, *, bind: bool) -> str:
    """Build the endpoint URL from ``address, port`` or a full URL."""
    if not isinstance(address, str) or not address:
        raise TypeError(f"address must be a non-empty str, not {address!r}")
    if "://" in address:
        if port is not None:
            raise ValueError(
                f"port must be omitted with a full endpoint URL: {address!r}",
            )
        return address
    if port is None:
        raise ValueError(
            f"port is required with a host address ({address!r}); or pass a "
            "full endpoint such as 'tcp://127.0.0.1:5555' or 'ipc:///tmp/x.sock'",
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    if port == 0:
        if not bind:
            raise ValueError("port 0 (pick a free port) only makes sense with bind=True")
        return f"tcp://{address}:*"
    return f"tcp://{address}:{port}"


def _topic_frame(topic: str) -> bytes:
    """Return the exact first frame for `topic`: UTF-8 plus a NUL terminator."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, not {type(topic).__name__}")
    if "\x00" in topic:
        raise ValueError(f"topic may not contain NUL characters: {topic!r}")
    return topic.encode() + _TERMINATOR


def _subscriptions(topic: str | Sequence[str]) -> list[bytes]:
    """Return the ZeroMQ subscriptions for `topic` ('' means every topic)."""
    topics = [topic] if isinstance(topic, str) else list(topic)
    if not topics:
        raise ValueError("topic must name at least one topic ('' for every topic)")
    if "" in topics:
        return [b""]
    return [_topic_frame(t) for t in topics]


def _hwm(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0: no limit), not {value!r}")
    return value


def _options(options: Mapping[str, Any]) -> list[tuple[int, Any]]:
    """Resolve pass-through keyword arguments to ZeroMQ socket options."""
    resolved = []
    for name, value in options.items():
        try:
            option = zmq.SocketOption[name.upper()]
        except KeyError:
            raise TypeError(
                f"unexpected keyword argument {name!r}: not a ZeroMQ socket option",
            ) from None
        resolved.append((int(option), value))
    return resolved


def _open(
    socket: zmq.Socket[Any],
    endpoint: str,
    *,
    bind: bool,
    options: Sequence[tuple[int, Any]],
) -> str:
    """Set options, then bind or connect; return the actual endpoint.

    Options come first so they apply to every pipe, including pipes to
    peers that connect later. The socket is closed if anything fails.
    """
    try:
        for option, value in options:
            socket.set(option, value)
        with map_errors(_ERRORS, broker=endpoint):
            if bind:
                socket.bind(endpoint)
                return str(socket.get_string(zmq.LAST_ENDPOINT))
            socket.connect(endpoint)
            return endpoint
    except BaseException:
        socket.close(linger=0)
        raise


class _Reader:
    """Reads the next queued message of a SUB socket.

    Calling it returns the payload of a ``[topic + NUL + payload]`` or
    ``[topic + NUL, payload]`` message, a `DetachedMessage` for
    ``[topic + NUL, envelope, *frames]`` (a large object sent beside its
    envelope), or None when nothing is queued. It
    raises `MalformedMessageError` for any other shape (read whole, so the
    next message starts clean) and `BrokerConnectionError` (naming `broker`)
    for any other ZeroMQ error. It calls the socket's own recv and
    getsockopt, not pyzmq's Python-level recv_multipart: about 1.6 us less
    per message.
    """

    def __init__(self, socket: zmq.Socket[Any], broker: str) -> None:
        base: Any = super(zmq.Socket, socket)
        self._recv, self._get, self._set = base.recv, base.get, base.set
        self._broker = broker
        self._wait_ms = -1  # the socket's RCVTIMEO (-1: ZeroMQ's default, forever)
        self.topic: str | None = None
        """The topic of the last detached message (for error messages)."""

    def pending(self) -> bool:
        """Whether ZeroMQ says a message is queued (``EVENTS`` has ``POLLIN``); never waits."""
        try:
            return bool(self._get(_EVENTS) & _POLLIN)
        except zmq.ZMQError as exc:
            raise BrokerConnectionError(f"receive failed: {exc}", broker=self._broker) from exc

    def __call__(self, wait_ms: int = 0) -> bytes | DetachedMessage | None:
        """Read the next message; with `wait_ms`, wait that long for one to come.

        Waiting is a blocking receive under ``RCVTIMEO`` (set only when it
        changes), not a poll followed by a receive: one wake-up less per
        message when the reader keeps up with the sender.
        """
        recv, get = self._recv, self._get
        try:
            if wait_ms > 0:
                if wait_ms != self._wait_ms:
                    self._set(_RCVTIMEO, wait_ms)
                    self._wait_ms = wait_ms
                first = recv(0)
            else:
                first = recv(_NOBLOCK)
            if get(_RCVMORE):
                # A multipart message is delivered whole: its parts are queued.
                payload = recv(_NOBLOCK)
                if not get(_RCVMORE):
                    if first[-1:] == _TERMINATOR:
                        return payload  # type: ignore[no-any-return]
                    frames = 2
                else:
                    parts = [recv(_NOBLOCK)]
                    while get(_RCVMORE):
                        parts.append(recv(_NOBLOCK))
                    if first[-1:] == _TERMINATOR:
                        self.topic = _topic_name(first)
                        return DetachedMessage(payload, parts)
                    frames = 2 + len(parts)
            else:
                # One frame: topic + NUL + message (a small message).
                end = first.find(_TERMINATOR)
                if end >= 0:
                    return first[end + 1 :]  # type: ignore[no-any-return]
                frames = 1
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            raise BrokerConnectionError(f"receive failed: {exc}", broker=self._broker) from exc
        raise MalformedMessageError(
            "expected [topic + NUL + payload], [topic + NUL, payload] or more frames "
            f"(a detached object); got {frames} frame(s) with no NUL-terminated topic",
            topic=_topic_name(first) if frames > 1 else None,
        )


def _send_parts(
    socket: zmq.Socket[Any],
    frame: bytes,
    message: bytes,
    parts: list[Any],
    flags: int,
) -> None:
    """Send ``[frame, message, *parts]`` as one message; raises zmq.Again only before the first.

    Raises:
        ValueError: If `parts` is empty (the message would be left open).
    """
    if not parts:
        raise ValueError("a detached message needs at least one frame")
    socket.send(frame, flags | _SNDMORE)
    socket.send(message, flags | _SNDMORE)
    last = len(parts) - 1
    for index, part in enumerate(parts):
        socket.send(part, flags | (0 if index == last else _SNDMORE), copy=type(part) is not bytes)


def _topic_name(frame: bytes) -> str:
    return frame[:-1].decode(errors="replace")


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def _slice_ms(deadline: float | None) -> int:
    """Milliseconds to wait for the next slice; <= 0 when the deadline passed."""
    if deadline is None:
        return int(SLICE_SECONDS * 1000)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return 0
    return max(1, int(min(SLICE_SECONDS, remaining) * 1000))


class _SubscriptionCounts:
    r"""Live subscriptions a publisher knows of, from XPUB_VERBOSER notices.

    Each notice is ``b"\x01" + prefix`` (subscribe) or ``b"\x00" + prefix``
    (unsubscribe, also sent when a subscriber disconnects).
    """

    def __init__(self) -> None:
        self.counts: Counter[bytes] = Counter()

    def apply(self, notice: bytes) -> None:
        if not notice:
            return
        prefix = notice[1:]
        if notice[0] == 1:
            self.counts[prefix] += 1
        elif notice[0] == 0 and self.counts[prefix] > 0:
            self.counts[prefix] -= 1

    def covering(self, frame: bytes) -> int:
        return sum(n for prefix, n in self.counts.items() if frame.startswith(prefix))


class _TopicFrames(dict[str, bytes]):
    """Cache of encoded topic frames: ``frames[topic]``, encoded on a miss.

    A dict subclass, so a hit is one lookup in C with no Python call.
    """

    def __missing__(self, topic: str) -> bytes:
        frame = _topic_frame(topic)
        if len(self) >= _MAX_CACHED_TOPICS:
            self.clear()
        self[topic] = frame
        return frame

    def __call__(self, topic: Any) -> bytes:
        if type(topic) is not str:
            _topic_frame(topic)  # raises the TypeError naming the topic
        return self[topic]


def _timeout_message(topic: str, count: int, seen: int, timeout: float) -> str:
    return f"Only {seen} of {count} subscriber(s) of topic {topic!r} were ready within {timeout} s"


class ZeroMQPublisher(ClosingContext):
    """Publisher over a ZeroMQ XPUB socket (PUB plus subscription notices).

    Not thread-safe: use a publisher from one thread at a time.

    Args:
        address: Host to bind/connect (with `port`), or a full endpoint URL
            (``tcp://host:port``, ``ipc:///path``) with `port` omitted.
        port: TCP port; 0 with ``bind=True`` picks a free port.
        bind: Bind the endpoint (default; subscribers connect) or connect to
            it (False: N:1 with a binding subscriber, or to a forwarder).
        sndhwm: Messages queued per subscriber at most (0: no limit). When
            reached, further messages to that subscriber are DROPPED silently.
        linger: Seconds `close()` keeps delivering queued messages at most.
        zero_copy_threshold: Payloads (of type bytes) this large or larger
            are sent without copying.
        context: ZeroMQ context to use. By default the publisher owns one so
            that `close()` can wait (up to `linger`) for queued messages; with
            a shared context `close()` returns at once and delivery continues
            in the background.
        **options: Further ZeroMQ socket options by name, set before
            bind/connect (e.g. ``curve_server=True, curve_secretkey=...``,
            ``sndbuf=...``, ``maxmsgsize=...``).

    Raises:
        TypeError: If an argument has the wrong type or an option is unknown.
        ValueError: If the endpoint or a number is invalid.
        BrokerConnectionError: If the endpoint cannot be bound/connected.
    """

    connection_errors: tuple[type[Exception], ...] = (zmq.ZMQError,)

    def __init__(
        self,
        address: str,
        port: int | None = None,
        *,
        bind: bool = True,
        sndhwm: int = DEFAULT_HWM,
        linger: float = DEFAULT_LINGER,
        zero_copy_threshold: int = DEFAULT_ZERO_COPY_THRESHOLD,
        context: zmq.Context[Any] | None = None,
        **options: Any,
    ) -> None:
        endpoint = _endpoint(address, port, bind=bind)
        settings = _publisher_options(sndhwm, linger, zero_copy_threshold, options)
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        try:
            self._socket: zmq.Socket[Any] = self._context.socket(zmq.XPUB)
            self._socket.copy_threshold = zero_copy_threshold
            self.endpoint = _open(self._socket, endpoint, bind=bind, options=settings)
        except BaseException:
            # A socket left open would make term() wait for it forever.
            socket = getattr(self, "_socket", None)
            if socket is not None and not socket.closed:
                socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise
        self.detach_threshold = DETACH_THRESHOLD
        """Objects this large or larger travel beside their envelope (`send_detached`)."""
        self._frames = _TopicFrames()
        self._counts = _SubscriptionCounts()
        self._sent = 0
        self._closed = False

    def send(self, topic: str, message: bytes) -> None:
        """Publish `message` to `topic` (never blocks; see HWM in the module doc).

        Raises:
            TypeError: If topic is not a str.
            ValueError: If topic contains NUL.
            PublisherClosedError: If the publisher is closed.
            BrokerConnectionError: If ZeroMQ refuses the send.
        """
        frame = self._frames[topic] if type(topic) is str else self._frames(topic)
        if self._closed:
            raise PublisherClosedError("ZeroMQPublisher is closed")
        # Inline try/except rather than map_errors: this is the hot path.
        try:
            if type(message) is bytes and len(message) <= SINGLE_FRAME_LIMIT:
                self._socket.send(frame + message)
            else:
                self._socket.send(frame, _SNDMORE)
                self._socket.send(message, 0, copy=type(message) is not bytes)
        except zmq.ZMQError as exc:
            raise BrokerConnectionError(f"send failed: {exc}", broker=self.endpoint) from exc
        self._sent += 1
        if self._sent % _DRAIN_EVERY == 0:
            self._drain()

    def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Publish a `DetachedMessage`: ``[topic, message, *frames]`` in one message.

        `bytes` frames of `zero_copy_threshold` bytes or more are sent without
        copying; other buffers are copied, so the caller may reuse them at once.
        Raises as `send`, and ValueError if `frames` is empty.
        """
        frame = self._frames[topic] if type(topic) is str else self._frames(topic)
        if self._closed:
            raise PublisherClosedError("ZeroMQPublisher is closed")
        try:
            _send_parts(self._socket, frame, message, frames, 0)
        except zmq.ZMQError as exc:
            raise BrokerConnectionError(f"send failed: {exc}", broker=self.endpoint) from exc
        self._sent += 1
        if self._sent % _DRAIN_EVERY == 0:
            self._drain()

    def subscriber_count(self, topic: str) -> int:
        """Return how many live subscriptions cover `topic` right now."""
        self._drain()
        return self._counts.covering(self._frames(topic))

    def wait_for_subscribers(
        self,
        topic: str,
        count: int = 1,
        *,
        timeout: float = 10.0,
    ) -> int:
        """Block until at least `count` subscribers of `topic` are ready.

        A subscriber is ready once its subscription has reached this
        publisher: messages sent afterwards are delivered to it (up to the
        HWM). Through a forwarder, counts are per forwarder, not per final
        subscriber.

        Args:
            topic: The topic about to be sent to.
            count: Subscriptions (of this topic, or of every topic) to await.
            timeout: Seconds to wait at most.

        Returns:
            The number of subscriptions covering `topic`.

        Raises:
            StreamTimeoutError: If fewer than `count` are ready in time.
        """
        frame = self._frames(topic)
        deadline = _deadline(timeout)
        while True:
            self._drain()
            seen = self._counts.covering(frame)
            if seen >= count:
                return seen
            wait = _slice_ms(deadline)
            if wait <= 0 or self._closed:
                raise StreamTimeoutError(_timeout_message(topic, count, seen, timeout))
            self._socket.poll(wait, zmq.POLLIN)

    def _drain(self) -> None:
        if self._closed:
            return
        with map_errors(_ERRORS, broker=self.endpoint):
            while True:
                try:
                    notice = self._socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                self._counts.apply(notice)

    def close(self) -> None:
        """Close the socket, delivering queued messages for up to `linger` s.

        Idempotent; never waits longer than `linger` (with a shared context
        it does not wait at all).
        """
        if self._closed:
            return
        self._closed = True
        self._socket.close()
        if self._own_context:
            self._context.term()


def _publisher_options(
    sndhwm: int,
    linger: float,
    zero_copy_threshold: int,
    options: Mapping[str, Any],
) -> list[tuple[int, Any]]:
    if not isinstance(linger, int | float) or linger < 0:
        raise ValueError(f"linger must be a number of seconds >= 0, not {linger!r}")
    if (
        not isinstance(zero_copy_threshold, int)
        or not 0 <= zero_copy_threshold <= _MAX_COPY_THRESHOLD
    ):
        raise ValueError(
            f"zero_copy_threshold must be an int from 0 to {_MAX_COPY_THRESHOLD}, "
            f"not {zero_copy_threshold!r}",
        )
    return [
        (zmq.SNDHWM, _hwm("sndhwm", sndhwm)),
        (zmq.LINGER, int(linger * 1000)),
        # Pass every subscribe and unsubscribe (also on disconnect), so the
        # publisher can count live subscribers.
        (zmq.XPUB_VERBOSER, 1),
        *_options(options),
    ]


def _subscriber_options(rcvhwm: int, options: Mapping[str, Any]) -> list[tuple[int, Any]]:
    return [(zmq.RCVHWM, _hwm("rcvhwm", rcvhwm)), (zmq.LINGER, 0), *_options(options)]


class ZeroMQSubscriber(ClosingContext):
    """Subscriber over a ZeroMQ SUB socket.

    `close()` may be called from another thread: a blocked receive notices
    within 0.1 s and the socket is then closed by whichever thread holds it.

    Args:
        address: Host to connect/bind (with `port`), or a full endpoint URL
            with `port` omitted.
        port: TCP port; 0 with ``bind=True`` picks a free port.
        topic: Topic or topics to receive, matched exactly; ``''`` (the
            default) receives every topic.
        bind: Connect to the endpoint (default) or bind it (True: N:1, many
            publishers connect with ``bind=False``; new publishers only get
            the subscriptions while a receive is running).
        rcvhwm: Messages queued in this subscriber at most (0: no limit).
            When reached, the publisher queues up to its own HWM, then drops.
        timeout: Seconds iteration waits for a message at most (None:
            forever); expiry raises `StreamTimeoutError`.
        context: ZeroMQ context; default: the process-wide shared one.
        **options: Further ZeroMQ socket options by name, set before
            bind/connect (e.g. ``curve_serverkey=...``, ``rcvbuf=...``).

    Raises:
        TypeError: If an argument has the wrong type or an option is unknown.
        ValueError: If the endpoint, topic or a number is invalid.
        BrokerConnectionError: If the endpoint cannot be bound/connected.
    """

    connection_errors: tuple[type[Exception], ...] = (zmq.ZMQError,)

    def __init__(
        self,
        address: str,
        port: int | None = None,
        *,
        topic: str | Sequence[str] = "",
        bind: bool = False,
        rcvhwm: int = DEFAULT_HWM,
        timeout: float | None = None,
        context: zmq.Context[Any] | None = None,
        **options: Any,
    ) -> None:
        endpoint = _endpoint(address, port, bind=bind)
        prefixes = _subscriptions(topic)
        settings = _subscriber_options(rcvhwm, options)
        ctx = zmq.Context.instance() if context is None else context
        self._socket: zmq.Socket[Any] = ctx.socket(zmq.SUB)
        for prefix in prefixes:
            self._socket.setsockopt(zmq.SUBSCRIBE, prefix)
        self.endpoint = _open(self._socket, endpoint, bind=bind, options=settings)
        self._read = _Reader(self._socket, self.endpoint)
        self._timeout = timeout
        self._closed = False
        # Held while the socket is in use, so close() from another thread
        # never touches the socket under a running receive.
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive(self._timeout)
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message, waiting `timeout` seconds at most.

        A detached message (a large object sent beside its envelope) is
        returned as one envelope, its frames attached (a copy).

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is (or gets) closed.
            MalformedMessageError: If a message is not ``[topic, payload]``
                or a valid detached message.
        """
        return as_envelope(self.receive_detached(timeout), topic=self._read.topic)

    def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """Return the next message as it came: bytes, or a `DetachedMessage`.

        The stream consumer uses this, so a detached object's frame becomes
        its data without a copy. Raises as `receive`.
        """
        with self._lock:
            if not self._closed and (timeout is None or timeout >= 0):
                # A message already queued is returned without a deadline.
                message = self._read()
                if message is not None:
                    return message
            deadline = _deadline(timeout)
            while not self._closed:
                wait = _slice_ms(deadline)
                message = self._read(wait)
                if message is not None:
                    return message
                if wait <= 0:
                    raise StreamTimeoutError(f"No message within {timeout} s")
            self._socket.close()
        raise SubscriberClosedError("ZeroMQSubscriber is closed")

    def close(self) -> None:
        """Close this subscriber (idempotent, callable from any thread)."""
        self._closed = True
        # A receive under way holds the lock for at most one slice and closes
        # the socket itself on its way out if this wait gives up.
        if self._lock.acquire(timeout=1.0):
            try:
                self._socket.close()
            finally:
                self._lock.release()


class AsyncZeroMQPublisher(AsyncClosingContext):
    """Async twin of `ZeroMQPublisher` (zmq.asyncio); same arguments.

    Only the default `zero_copy_threshold` differs:
    `DEFAULT_ASYNC_ZERO_COPY_THRESHOLD` (256 KiB), because copying runs on
    the event loop.
    """

    connection_errors: tuple[type[Exception], ...] = (zmq.ZMQError,)

    def __init__(
        self,
        address: str,
        port: int | None = None,
        *,
        bind: bool = True,
        sndhwm: int = DEFAULT_HWM,
        linger: float = DEFAULT_LINGER,
        zero_copy_threshold: int = DEFAULT_ASYNC_ZERO_COPY_THRESHOLD,
        context: zmq.asyncio.Context | None = None,
        **options: Any,
    ) -> None:
        endpoint = _endpoint(address, port, bind=bind)
        settings = _publisher_options(sndhwm, linger, zero_copy_threshold, options)
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        try:
            self._socket: zmq.asyncio.Socket = self._context.socket(zmq.XPUB)
            self._socket.copy_threshold = zero_copy_threshold
            self.endpoint = _open(self._socket, endpoint, bind=bind, options=settings)
        except BaseException:
            # A socket left open would make term() wait for it forever.
            socket = getattr(self, "_socket", None)
            if socket is not None and not socket.closed:
                socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise
        # The same socket through the plain API: a send that cannot block
        # is made directly, without a pyzmq Future per call.
        self._direct: zmq.Socket[Any] = zmq.Socket.shadow(self._socket.underlying)
        self._direct.copy_threshold = zero_copy_threshold  # pyzmq keeps it per object
        self.detach_threshold = DETACH_THRESHOLD
        """Objects this large or larger travel beside their envelope (`send_detached`)."""
        self._frames = _TopicFrames()
        self._counts = _SubscriptionCounts()
        self._sent = 0
        self._waiting = 0
        self._room = asyncio.Lock()
        self._fair = FairShare(messages=_YIELD_MESSAGES)
        self._closed = False

    async def send(self, topic: str, message: bytes) -> None:
        """Publish `message` to `topic` (see `ZeroMQPublisher.send`).

        Every 1 MiB or 1,024 messages it first yields to the event loop once,
        so other tasks run during a burst; if cancelled there, nothing is sent.
        """
        frame = self._frames[topic] if type(topic) is str else self._frames(topic)
        if self._closed:
            raise PublisherClosedError("AsyncZeroMQPublisher is closed")
        if self._fair.due(len(message)):
            await asyncio.sleep(0)
            if self._closed:
                raise PublisherClosedError("AsyncZeroMQPublisher is closed")
        copy = type(message) is not bytes
        try:
            if not self._waiting:
                try:
                    # An XPUB socket drops at its HWM instead of blocking, so
                    # this is the path every send takes unless the caller
                    # set xpub_nodrop; a refused first frame sends nothing.
                    if not copy and len(message) <= SINGLE_FRAME_LIMIT:
                        self._direct.send(frame + message, _NOBLOCK)
                        self._after_send()
                        return
                    self._direct.send(frame, _SNDMORE_NOBLOCK)
                except zmq.Again:
                    pass
                else:
                    self._direct.send(message, _NOBLOCK, copy=copy)
                    self._after_send()
                    return
            # Queue full under xpub_nodrop: wait for room, in send order.
            self._waiting += 1
            try:
                async with self._room:
                    await self._send_when_room(frame, message, copy)
            finally:
                self._waiting -= 1
        except zmq.ZMQError as exc:
            raise BrokerConnectionError(f"send failed: {exc}", broker=self.endpoint) from exc
        self._after_send()

    async def send_detached(self, topic: str, message: bytes, frames: list[Any]) -> None:
        """Publish a `DetachedMessage` (see `ZeroMQPublisher.send_detached`)."""
        frame = self._frames[topic] if type(topic) is str else self._frames(topic)
        if self._closed:
            raise PublisherClosedError("AsyncZeroMQPublisher is closed")
        if self._fair.due(len(message) + frames_size(frames)):
            await asyncio.sleep(0)
            if self._closed:
                raise PublisherClosedError("AsyncZeroMQPublisher is closed")
        try:
            if not self._waiting:
                try:
                    _send_parts(self._direct, frame, message, frames, _NOBLOCK)
                except zmq.Again:
                    pass
                else:
                    self._after_send()
                    return
            self._waiting += 1
            try:
                async with self._room:
                    await self._send_when_room(frame, message, True, frames)
            finally:
                self._waiting -= 1
        except zmq.ZMQError as exc:
            raise BrokerConnectionError(f"send failed: {exc}", broker=self.endpoint) from exc
        self._after_send()

    async def _send_when_room(
        self,
        frame: bytes,
        message: bytes,
        copy: bool,
        parts: list[Any] | None = None,
    ) -> None:
        # XPUB reports POLLOUT even when a nodrop queue is full (pyzmq's
        # awaitable send then fails with EAGAIN), so retry on a short backoff.
        # A cancelled wait has sent nothing.
        delay = 0.001
        while True:
            if self._closed:
                raise PublisherClosedError("AsyncZeroMQPublisher is closed")
            try:
                if parts:
                    _send_parts(self._direct, frame, message, parts, _NOBLOCK)
                    return
                self._direct.send(frame, _SNDMORE_NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(delay)
                delay = min(2 * delay, SLICE_SECONDS / 4)
                continue
            self._direct.send(message, _NOBLOCK, copy=copy)
            return

    def _after_send(self) -> None:
        self._sent += 1
        if self._sent % _DRAIN_EVERY == 0:
            self._drain_now()

    async def subscriber_count(self, topic: str) -> int:
        """Return how many live subscriptions cover `topic` right now."""
        await self._drain()
        return self._counts.covering(self._frames(topic))

    async def wait_for_subscribers(
        self,
        topic: str,
        count: int = 1,
        *,
        timeout: float = 10.0,
    ) -> int:
        """Wait until `count` subscribers of `topic` are ready (see the sync twin)."""
        frame = self._frames(topic)
        deadline = _deadline(timeout)
        while True:
            await self._drain()
            seen = self._counts.covering(frame)
            if seen >= count:
                return seen
            wait = _slice_ms(deadline)
            if wait <= 0 or self._closed:
                raise StreamTimeoutError(_timeout_message(topic, count, seen, timeout))
            await self._socket.poll(wait)

    async def _drain(self) -> None:
        self._drain_now()

    def _drain_now(self) -> None:
        if self._closed:
            return
        with map_errors(_ERRORS, broker=self.endpoint):
            while True:
                try:
                    notice = self._direct.recv(_NOBLOCK)
                except zmq.Again:
                    return
                self._counts.apply(notice)

    async def close(self) -> None:
        """Close the socket, delivering queued messages for up to `linger` s."""
        if self._closed:
            return
        self._closed = True
        self._socket.close()
        if self._own_context:
            await asyncio.to_thread(self._context.term)


class AsyncZeroMQSubscriber(AsyncClosingContext):
    """Async twin of `ZeroMQSubscriber` (zmq.asyncio); same arguments.

    A cancelled `receive()` loses no message: it only ever waits (on the
    socket's descriptor); a message is read with a non-blocking call and
    returned in the same step.
    """

    connection_errors: tuple[type[Exception], ...] = (zmq.ZMQError,)

    def __init__(
        self,
        address: str,
        port: int | None = None,
        *,
        topic: str | Sequence[str] = "",
        bind: bool = False,
        rcvhwm: int = DEFAULT_HWM,
        timeout: float | None = None,
        context: zmq.asyncio.Context | None = None,
        **options: Any,
    ) -> None:
        endpoint = _endpoint(address, port, bind=bind)
        prefixes = _subscriptions(topic)
        settings = _subscriber_options(rcvhwm, options)
        ctx = zmq.asyncio.Context.instance() if context is None else context
        self._socket: zmq.asyncio.Socket = ctx.socket(zmq.SUB)
        for prefix in prefixes:
            self._socket.setsockopt(zmq.SUBSCRIBE, prefix)
        self.endpoint = _open(self._socket, endpoint, bind=bind, options=settings)
        # Reads through the plain API: a message that is already queued is
        # taken without a pyzmq Future; waiting watches the socket's descriptor.
        self._direct: zmq.Socket[Any] = zmq.Socket.shadow(self._socket.underlying)
        self._read = _Reader(self._direct, self.endpoint)
        self._fd = int(self._direct.get(zmq.FD))
        self._timeout = timeout
        self._closed = False
        self._receiving = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive(self._timeout)
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `ZeroMQSubscriber.receive`)."""
        return as_envelope(await self.receive_detached(timeout), topic=self._read.topic)

    def receive_ready(self) -> bytes | DetachedMessage | None:
        """Return a message that is already queued, as it came, or None (never waits)."""
        return None if self._closed else self._read()

    async def receive_detached(self, timeout: float | None = None) -> bytes | DetachedMessage:
        """Return the next message as it came (see `ZeroMQSubscriber.receive_detached`)."""
        if not self._closed and (timeout is None or timeout >= 0):
            # Fast path: a message already queued is returned without a
            # deadline, a counter or a suspension.
            message = self._read()
            if message is not None:
                return message
        deadline = _deadline(timeout)
        self._receiving += 1
        try:
            while not self._closed:
                message = self._read()
                if message is not None:
                    return message
                wait = _slice_ms(deadline)
                if wait <= 0:
                    raise StreamTimeoutError(f"No message within {timeout} s")
                await self._wait(wait)
        finally:
            self._receiving -= 1
            # Closing the socket under a pending wait would leave the event
            # loop watching a closed descriptor: the last receive closes it.
            if self._closed and not self._receiving:
                self._socket.close()
        raise SubscriberClosedError("AsyncZeroMQSubscriber is closed")

    async def _wait(self, wait_ms: int) -> None:
        """Wait up to `wait_ms` for the socket to have a message (or not; the caller reads).

        The socket's descriptor only signals changes, so ZeroMQ's ``EVENTS``
        is asked first. Waiting on the descriptor directly costs 35-75 µs
        less CPU per wait than a pyzmq poll future (docs/shims/zmq.md).
        """
        if self._read.pending():
            return
        try:
            await wait_readable(self._fd, wait_ms / 1000)
        except NotImplementedError:  # an event loop without add_reader
            await self._socket.poll(wait_ms)

    async def close(self) -> None:
        """Close this subscriber (idempotent); a pending receive ends within 0.1 s."""
        self._closed = True
        if not self._receiving:
            self._socket.close()


class ZeroMQForwarder:
    """N:N forwarder: publishers connect to `frontend`, subscribers to `backend`.

    Runs pyzmq's own proxy device (``zmq.proxy_steerable``) between an XSUB
    and an XPUB socket in a daemon thread; subscriptions flow upstream, so
    `ZeroMQPublisher.wait_for_subscribers` works through it. Use it as a
    context manager, or call `start()` and `stop()`.

    Args:
        frontend: Endpoint URL to bind for publishers (``bind=False`` there).
        backend: Endpoint URL to bind for subscribers.
        hwm: High-water mark of both sides (0: no limit); the XPUB side
            drops messages for a subscriber whose queue is full.
        context: ZeroMQ context; default: one owned by the forwarder.

    Raises:
        ValueError: If an endpoint is not a full URL.
    """

    def __init__(
        self,
        frontend: str,
        backend: str,
        *,
        hwm: int = DEFAULT_HWM,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        for name, value in (("frontend", frontend), ("backend", backend)):
            if not isinstance(value, str) or "://" not in value:
                raise ValueError(f"{name} must be an endpoint URL, not {value!r}")
        self._requested = (frontend, backend)
        self._hwm = _hwm("hwm", hwm)
        self._own_context = context is None
        self._context = context
        self._thread: threading.Thread | None = None
        self._control: zmq.Socket[Any] | None = None
        self.frontend = frontend
        self.backend = backend

    def start(self) -> Self:
        """Bind both endpoints and start forwarding in a daemon thread.

        Raises:
            RuntimeError: If already started.
            BrokerConnectionError: If an endpoint cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("ZeroMQForwarder is already started")
        if self._context is None:
            self._context = zmq.Context()
        ctx = self._context
        control_url = f"inproc://pss-forwarder-{id(self)}-{next(_forwarder_ids)}"
        xsub = ctx.socket(zmq.XSUB)
        xpub = ctx.socket(zmq.XPUB)
        proxy_control = ctx.socket(zmq.PAIR)
        try:
            self.frontend = _open(
                xsub,
                self._requested[0],
                bind=True,
                options=[
                    (zmq.RCVHWM, self._hwm),
                    (zmq.SNDHWM, self._hwm),
                    (zmq.LINGER, 0),
                ],
            )
            self.backend = _open(
                xpub,
                self._requested[1],
                bind=True,
                options=[
                    (zmq.SNDHWM, self._hwm),
                    (zmq.RCVHWM, self._hwm),
                    (zmq.LINGER, 0),
                    (zmq.XPUB_VERBOSER, 1),
                ],
            )
            proxy_control.bind(control_url)
            self._control = ctx.socket(zmq.PAIR)
            self._control.connect(control_url)
        except BaseException:
            for sock in (xsub, xpub, proxy_control):
                sock.close(linger=0)
            raise

        def run() -> None:
            try:
                zmq.proxy_steerable(xsub, xpub, None, proxy_control)
            except zmq.ZMQError:
                pass  # context terminated under us: nothing left to forward
            finally:
                for sock in (xsub, xpub, proxy_control):
                    sock.close(linger=0)

        self._thread = threading.Thread(target=run, name="pss-zmq-forwarder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop forwarding and release the sockets (idempotent).

        Args:
            timeout: Seconds to wait for the forwarding thread at most.
        """
        thread, control = self._thread, self._control
        if thread is None or control is None:
            return
        self._control = None
        control.send(b"TERMINATE")
        thread.join(timeout)
        control.close(linger=0)
        if self._own_context and self._context is not None and not thread.is_alive():
            self._context.term()
            self._context = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
