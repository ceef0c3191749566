"""In-process broker with N:N fan-out, for threads and event loops of one process.

| property | behaviour |
| --- | --- |
| semantics | fan-out: every subscriber of a topic gets every message sent to it |
| persistence | none; messages live in the subscribers' buffers until received |
| ordering | per publisher and subscriber: one publisher's messages arrive in send order |
| no subscriber | a message sent to a topic with no subscriber attached is dropped |
| acknowledgement | none; a message is gone once received |
| max message size | memory (messages are passed by reference, never copied) |
| buffer full | per subscriber: `"block"` makes the sender wait, `"leaky"` drops the oldest |

Modelled on ezmsg's low-level pub/sub: a `LocalBroker` routes messages between
publishers and subscribers; a topic comes into being when the first
subscriber listens to it and goes away with its last subscriber. Publishers
and subscribers are given the broker explicitly (there is no process-wide
state), and sync and async endpoints can share one broker: a publisher in a
thread can feed an async subscriber in an event loop, and the other way round.

Each subscriber owns a bounded buffer (`maxsize` messages). When it is full:

- `policy="block"` (default): the sender waits for room, for at most the
  publisher's `timeout` seconds, then raises `BufferFullError`. The other
  subscribers of the topic still get the message.
- `policy="leaky"`: the oldest buffered message is dropped to make room (the
  newest `maxsize` messages are kept) and the subscriber's `dropped` count
  grows. The sender never waits for a leaky subscriber.

Example:
    ```python
    broker = LocalBroker()
    subscriber = LocalSubscriber(broker, ["frames", "events"], maxsize=256)
    publisher = LocalPublisher(broker, timeout=5.0)
    publisher.send("frames", b"...")
    subscriber.receive(timeout=1.0)
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Literal
from typing import TypeVar

from proxystore_stream._context import AsyncClosingContext
from proxystore_stream._context import ClosingContext
from proxystore_stream._fair import FairShare
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError

__all__ = [
    "AsyncLocalPublisher",
    "AsyncLocalSubscriber",
    "LocalBroker",
    "LocalPublisher",
    "LocalSubscriber",
    "Policy",
]

Policy = Literal["block", "leaky"]
"""What a subscriber's buffer does when full: make the sender wait, or drop the oldest."""

T = TypeVar("T")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Waiters:
    """Threads and tasks waiting on one side (readers or writers) of a buffer.

    Every method runs with the buffer's lock held.
    """

    __slots__ = ("asleep", "cond", "tasks")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        # Counted by hand so the hot path skips Condition.notify when nobody waits.
        self.asleep = 0
        self.tasks: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def wake_one(self) -> None:
        if self.asleep:
            self.cond.notify()
        if self.tasks:
            _wake_task(*self.tasks.popleft())

    def wake_all(self) -> None:
        self.cond.notify_all()
        while self.tasks:
            _wake_task(*self.tasks.popleft())


def _wake_task(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    # On the waiter's own loop thread the future can be resolved directly; from
    # any other thread only call_soon_threadsafe may touch it.
    if asyncio.events._get_running_loop() is loop:
        _resolve(future)
        return
    with contextlib.suppress(RuntimeError):  # A closed loop has nobody left to wake.
        loop.call_soon_threadsafe(_resolve, future)


class _Buffer:
    """One subscriber's bounded buffer: the non-blocking operations, written once.

    `_offer` and `_take` run with `lock` held and never wait; the endpoint
    classes wait around them with `_wait_sync` or `_wait_async`.
    """

    __slots__ = ("closed", "dropped", "items", "leaky", "lock", "maxsize", "readers", "writers")

    def __init__(self, maxsize: int, leaky: bool) -> None:
        self.lock = threading.Lock()
        self.items: deque[bytes] = deque()
        self.maxsize = maxsize
        self.leaky = leaky
        self.dropped = 0
        self.closed = False
        self.readers = _Waiters(self.lock)
        self.writers = _Waiters(self.lock)

    def _offer(self, message: bytes) -> bool:
        """Store a message; False if full (block policy). A closed buffer drops it."""
        if self.closed:
            return True
        items = self.items
        if len(items) >= self.maxsize:
            if not self.leaky:
                return False
            items.popleft()
            self.dropped += 1
        items.append(message)
        readers = self.readers
        if readers.asleep or readers.tasks:
            readers.wake_one()
        return True

    def _take(self) -> bytes | None:
        """Return the oldest message, or None if there is none.

        Raises:
            SubscriberClosedError: If the buffer is closed.
        """
        if self.closed:
            raise SubscriberClosedError("LocalSubscriber is closed")
        if not self.items:
            return None
        message = self.items.popleft()
        writers = self.writers
        if writers.asleep or writers.tasks:
            writers.wake_one()
        return message

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.items.clear()
            self.readers.wake_all()
            self.writers.wake_all()


def _wait_sync(
    waiters: _Waiters,
    attempt: Callable[[], T | None],
    deadline: float | None,
) -> T | None:
    """Retry `attempt` under the buffer's lock until it succeeds or `deadline` passes."""
    with waiters.cond:
        while True:
            result = attempt()
            if result is not None:
                return result
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
            waiters.asleep += 1
            try:
                waiters.cond.wait(remaining)
            finally:
                waiters.asleep -= 1


async def _wait_async(
    waiters: _Waiters,
    attempt: Callable[[], T | None],
    deadline: float | None,
) -> T | None:
    """Async twin of `_wait_sync`: park a future that other threads wake thread-safely.

    The attempt runs only after the wait, in the same step as the return, so a
    cancelled wait has taken (or stored) nothing. A wake-up consumed by a
    cancelled waiter is passed on to the next one.
    """
    loop = asyncio.get_running_loop()
    while True:
        with waiters.cond:
            result = attempt()
            if result is not None:
                return result
            if deadline is not None and deadline <= time.monotonic():
                return None
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            waiters.tasks.append(entry)
        timer = None
        if deadline is not None:
            timer = loop.call_later(deadline - time.monotonic(), _resolve, future)
        try:
            await future
        except BaseException:
            with waiters.cond:
                try:
                    waiters.tasks.remove(entry)
                except ValueError:
                    waiters.wake_one()  # We were woken (popped): hand the wake-up on.
            raise
        finally:
            if timer is not None:
                timer.cancel()
        # Woken by the deadline timer: leave the queue of waiters before retrying.
        with waiters.cond, contextlib.suppress(ValueError):
            waiters.tasks.remove(entry)


def _check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError(f"{name} must be >= 0, not {timeout!r}")
    return float(timeout)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _check_broker(broker: LocalBroker) -> LocalBroker:
    if not isinstance(broker, LocalBroker):
        raise TypeError(f"broker must be a LocalBroker, not {type(broker).__name__}")
    return broker


def _check_send(topic: str, message: bytes) -> bytes:
    if type(topic) is not str:
        raise TypeError(f"topic must be a str, not {type(topic).__name__}")
    if type(message) is bytes:
        return message
    if isinstance(message, bytearray | memoryview):
        # Copied, so a caller reusing its buffer cannot change delivered messages.
        return bytes(message)
    raise TypeError(f"message must be bytes, not {type(message).__name__}")


def _offer_all(subscribers: tuple[_Buffer, ...], message: bytes) -> list[_Buffer] | None:
    """Offer a message to every subscriber and return the full (block policy) ones."""
    full = None
    for buffer in subscribers:
        with buffer.lock:
            if buffer._offer(message):
                continue
        if full is None:
            full = []
        full.append(buffer)
    return full


def _storer(buffer: _Buffer, message: bytes) -> Callable[[], bool | None]:
    """Adapt `_offer` to the waits' convention: None means "not yet"."""
    return lambda: True if buffer._offer(message) else None


def _raise_missed(topic: str, missed: int, total: int, timeout: float | None) -> None:
    if missed:
        raise BufferFullError(
            f"{missed} of {total} subscribers of topic {topic!r} stayed full for "
            f"{timeout} s and did not get the message; the others did",
        )


class LocalBroker:
    """Routes messages from publishers to the subscribers of each topic.

    An explicit object: give the same broker to every publisher and
    subscriber that should see each other. Thread-safe; sync and async
    endpoints, in any threads and event loops, can share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Tuples are replaced, never mutated, so send() reads them without a lock.
        self._topics: dict[str, tuple[_Buffer, ...]] = {}

    def subscriber_count(self, topic: str) -> int:
        """Return how many subscribers listen to `topic` right now.

        Args:
            topic: The topic to look up.

        Returns:
            The number of attached subscribers (0 for an unknown topic).
        """
        return len(self._topics.get(topic, ()))

    def topics(self) -> list[str]:
        """Return the topics that have at least one subscriber, sorted."""
        with self._lock:
            return sorted(self._topics)

    def _attach(self, topics: tuple[str, ...], buffer: _Buffer) -> None:
        with self._lock:
            for topic in topics:
                self._topics[topic] = (*self._topics.get(topic, ()), buffer)

    def _detach(self, topics: tuple[str, ...], buffer: _Buffer) -> None:
        with self._lock:
            for topic in topics:
                remaining = tuple(b for b in self._topics.get(topic, ()) if b is not buffer)
                if remaining:
                    self._topics[topic] = remaining
                else:
                    self._topics.pop(topic, None)


def _subscribe(
    broker: LocalBroker,
    topics: str | Iterable[str],
    maxsize: int,
    policy: str,
) -> tuple[tuple[str, ...], _Buffer]:
    """Validate subscriber arguments, attach a new buffer and return it with its topics."""
    _check_broker(broker)
    names = (topics,) if isinstance(topics, str) else tuple(topics)
    if not names:
        raise ValueError("topics must name at least one topic")
    for name in names:
        if type(name) is not str:
            raise TypeError(f"topics must be str, not {type(name).__name__}")
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
    if maxsize < 1:
        raise ValueError(f"maxsize must be >= 1, not {maxsize}")
    if policy not in ("block", "leaky"):
        raise ValueError(f"policy must be 'block' or 'leaky', not {policy!r}")
    names = tuple(dict.fromkeys(names))  # A topic listed twice is still heard once.
    buffer = _Buffer(maxsize, leaky=policy == "leaky")
    broker._attach(names, buffer)
    return names, buffer


class LocalPublisher(ClosingContext):
    """Publisher sending to the subscribers of a `LocalBroker`.

    Args:
        broker: The broker to publish through.
        timeout: Seconds `send` waits at most for room in the buffers of
            full `"block"` subscribers (None: as long as it takes; 0: never).

    Raises:
        TypeError: If `broker` is not a LocalBroker or `timeout` not a number.
        ValueError: If `timeout` is negative.
    """

    def __init__(self, broker: LocalBroker, *, timeout: float | None = None) -> None:
        self._broker = _check_broker(broker)
        self._timeout = _check_timeout(timeout)
        self._closed = False

    def send(self, topic: str, message: bytes) -> None:
        """Deliver a message to every subscriber of `topic` attached now.

        A topic without subscribers drops the message. Returns once every
        subscriber has the message in its buffer.

        Args:
            topic: Topic to send to.
            message: The message (bytearray and memoryview are copied).

        Raises:
            BufferFullError: If a `"block"` subscriber stayed full for
                `timeout` seconds (the other subscribers got the message).
            TypeError: If `topic` is not a str or `message` not bytes.
            PublisherClosedError: If the publisher is closed.
        """
        if self._closed:
            raise PublisherClosedError("LocalPublisher is closed")
        if type(message) is not bytes or type(topic) is not str:
            message = _check_send(topic, message)
        subscribers = self._broker._topics.get(topic)
        if not subscribers:
            return
        full = _offer_all(subscribers, message)
        if not full:
            return
        deadline = _deadline(self._timeout)
        missed = 0
        for buffer in full:
            stored = _wait_sync(buffer.writers, _storer(buffer, message), deadline)
            missed += stored is None
        _raise_missed(topic, missed, len(subscribers), self._timeout)

    def close(self) -> None:
        """Close this publisher (idempotent); its messages stay buffered for subscribers."""
        self._closed = True


class LocalSubscriber(ClosingContext):
    """Subscriber to one or more topics of a `LocalBroker`.

    Attached (and receiving) from the moment it is constructed.

    Args:
        broker: The broker to subscribe through.
        topics: A topic, or topics, to listen to.
        maxsize: Messages the buffer holds at most.
        policy: When the buffer is full, `"block"` makes senders wait for
            room; `"leaky"` drops the oldest message and counts it in
            `dropped`.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `topics` is empty, `maxsize` < 1 or `policy` unknown.
    """

    def __init__(
        self,
        broker: LocalBroker,
        topics: str | Iterable[str],
        *,
        maxsize: int = 1024,
        policy: Policy = "block",
    ) -> None:
        self._broker = broker
        self._topics, self._buffer = _subscribe(broker, topics, maxsize, policy)

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics this subscriber listens to."""
        return self._topics

    @property
    def dropped(self) -> int:
        """How many messages the `"leaky"` policy dropped from this subscriber's buffer."""
        return self._buffer.dropped

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message, waiting `timeout` seconds at most.

        Args:
            timeout: Seconds to wait (None: until a message or close; 0: poll).

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is (or gets) closed.
        """
        buffer = self._buffer
        with buffer.lock:
            message = buffer._take()
        if message is not None:
            return message
        timeout = _check_timeout(timeout)
        message = _wait_sync(buffer.readers, buffer._take, _deadline(timeout))
        if message is None:
            raise StreamTimeoutError(f"No message within {timeout} s")
        return message

    def close(self) -> None:
        """Detach from the broker and drop buffered messages (idempotent).

        A receive blocked in another thread raises `SubscriberClosedError`
        at once; a publisher waiting for room in this buffer is released.
        """
        self._broker._detach(self._topics, self._buffer)
        self._buffer.close()


class AsyncLocalPublisher(AsyncClosingContext):
    """Async twin of `LocalPublisher`: waits for room without blocking the event loop.

    Sends that find room yield to the event loop now and then (`FairShare`),
    so a sending task does not starve the tasks that read.
    """

    def __init__(self, broker: LocalBroker, *, timeout: float | None = None) -> None:
        self._broker = _check_broker(broker)
        self._timeout = _check_timeout(timeout)
        self._closed = False
        self._fair = FairShare()

    async def send(self, topic: str, message: bytes) -> None:
        """Deliver a message to every subscriber of `topic` (see `LocalPublisher.send`).

        If cancelled while waiting for room, the subscribers that had room
        keep the message and the full ones do not get it.
        """
        if self._closed:
            raise PublisherClosedError("AsyncLocalPublisher is closed")
        if type(message) is not bytes or type(topic) is not str:
            message = _check_send(topic, message)
        if self._fair.due(len(message)):
            await asyncio.sleep(0)
            if self._closed:
                raise PublisherClosedError("AsyncLocalPublisher is closed")
        subscribers = self._broker._topics.get(topic)
        if not subscribers:
            return
        full = _offer_all(subscribers, message)
        if not full:
            return
        deadline = _deadline(self._timeout)
        missed = 0
        for buffer in full:
            stored = await _wait_async(buffer.writers, _storer(buffer, message), deadline)
            missed += stored is None
        _raise_missed(topic, missed, len(subscribers), self._timeout)

    async def close(self) -> None:
        """Close this publisher (idempotent)."""
        self._closed = True


class AsyncLocalSubscriber(AsyncClosingContext):
    """Async twin of `LocalSubscriber`.

    Waiting parks a future that publishers in any thread resolve through
    `loop.call_soon_threadsafe`, so a sync publisher in a thread can feed it.
    A cancelled `receive()` takes nothing from the buffer.
    """

    def __init__(
        self,
        broker: LocalBroker,
        topics: str | Iterable[str],
        *,
        maxsize: int = 1024,
        policy: Policy = "block",
    ) -> None:
        self._broker = broker
        self._topics, self._buffer = _subscribe(broker, topics, maxsize, policy)

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics this subscriber listens to."""
        return self._topics

    @property
    def dropped(self) -> int:
        """How many messages the `"leaky"` policy dropped from this subscriber's buffer."""
        return self._buffer.dropped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive()
            except SubscriberClosedError:
                return

    def receive_ready(self) -> bytes | None:
        """Return a message that is already buffered, or None (never waits)."""
        buffer = self._buffer
        with buffer.lock:
            return None if buffer.closed else buffer._take()

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `LocalSubscriber.receive`)."""
        buffer = self._buffer
        with buffer.lock:
            message = buffer._take()
        if message is not None:
            return message
        timeout = _check_timeout(timeout)
        message = await _wait_async(buffer.readers, buffer._take, _deadline(timeout))
        if message is None:
            raise StreamTimeoutError(f"No message within {timeout} s")
        return message

    async def close(self) -> None:
        """Detach from the broker and drop buffered messages (see `LocalSubscriber.close`)."""
        self._broker._detach(self._topics, self._buffer)
        self._buffer.close()
