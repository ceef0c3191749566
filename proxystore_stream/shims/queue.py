"""Shim over `queue.Queue` and `multiprocessing.Queue` (no broker needed).

| property | behaviour |
| --- | --- |
| semantics | work queue: each message goes to one subscriber of its queue |
| persistence | in memory, for the life of the queue |
| ordering | FIFO per queue |
| no subscriber | messages wait in the queue (up to its `maxsize`) |
| acknowledgement | none; a message is gone once received |
| max message size | memory (multiprocessing: the pipe's pickled bytes) |
| queue full | `send` waits for room, or raises `BufferFullError` (see below) |

The publisher maps each topic to one queue; a subscriber reads one queue.
A `multiprocessing.Queue` works across processes (pass it to the child).

Backpressure: give the queue a `maxsize` to bound its memory. When it is
full, `send` waits for room (`block=True`, at most `timeout` seconds) or
raises `BufferFullError` (`block=False`, or the timeout expired); a slow
consumer then slows the producer down instead of growing the queue.

Example:
    ```python
    q = multiprocessing.Queue()
    publisher = QueuePublisher({"frames": q})
    subscriber = QueueSubscriber(q)
    ```
"""

from __future__ import annotations

import asyncio
import multiprocessing.queues
import queue as queue_module
import select
import time
from collections.abc import AsyncIterator
from collections.abc import Iterator
from collections.abc import Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any
from typing import Literal
from typing import TypeAlias

from proxystore_stream._offload import SLICE_SECONDS
from proxystore_stream._offload import OffloadedReceive
from proxystore_stream.exceptions import BufferFullError
from proxystore_stream.exceptions import PublisherClosedError
from proxystore_stream.exceptions import StreamTimeoutError
from proxystore_stream.exceptions import SubscriberClosedError

__all__ = [
    "AsyncQueuePublisher",
    "AsyncQueueSubscriber",
    "QueuePublisher",
    "QueueSubscriber",
]

AnyQueue: TypeAlias = "queue_module.Queue[Any] | multiprocessing.queues.Queue[Any]"


def _queue_for(queues: Mapping[str, AnyQueue], topic: str) -> AnyQueue:
    try:
        return queues[topic]
    except KeyError:
        raise ValueError(
            f"No queue for topic {topic!r}; this publisher has queues for {sorted(queues)}.",
        ) from None


def _check_send(topic: str, message: bytes) -> bytes:
    if type(topic) is not str:
        raise TypeError(f"topic must be a str, not {type(topic).__name__}")
    if type(message) is bytes:
        return message
    if isinstance(message, bytearray | memoryview):
        # Copied: a queue.Queue passes objects by reference, so a caller
        # reusing its buffer would otherwise change a queued message.
        return bytes(message)
    raise TypeError(f"message must be bytes, not {type(message).__name__}")


def _check_queues(queues: Mapping[str, AnyQueue]) -> Mapping[str, AnyQueue]:
    # Kept by reference, so topics added to the caller's mapping later work.
    if not isinstance(queues, Mapping):
        raise TypeError(
            f"queues must map topic names to queues, not {type(queues).__name__}",
        )
    return queues


class QueuePublisher:
    """Publisher over queues, one queue per topic.

    Args:
        queues: Mapping of topic name to the queue its messages go to.
        block: Wait for room when a bounded queue is full.
        timeout: Seconds to wait for room at most (None: forever).
    """

    def __init__(
        self,
        queues: Mapping[str, AnyQueue],
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        self._queues = _check_queues(queues)
        self._block = block
        self._timeout = timeout
        self._closed = False

    def send(self, topic: str, message: bytes) -> None:
        """Put a message on the topic's queue.

        Args:
            topic: Topic to send to.
            message: The message (bytearray and memoryview are copied).

        Raises:
            TypeError: If `topic` is not a str or `message` not bytes.
            ValueError: If the topic has no queue.
            BufferFullError: If the queue stayed full (or `block` is False).
            PublisherClosedError: If the publisher is closed.
        """
        if self._closed:
            raise PublisherClosedError("QueuePublisher is closed")
        if type(message) is not bytes or type(topic) is not str:
            message = _check_send(topic, message)
        try:
            _queue_for(self._queues, topic).put(
                message,
                block=self._block,
                timeout=self._timeout,
            )
        except queue_module.Full:
            raise BufferFullError(f"Queue of topic {topic!r} is full") from None

    def close(self) -> None:
        """Close this publisher (idempotent; the queues stay usable by others)."""
        self._closed = True


class _ReadyReader:
    """Takes a message a `multiprocessing.Queue` already holds, never waiting.

    The queue's own `get(timeout=...)` and `get_nowait()` build a selector
    per call (`multiprocessing.connection.wait`): about 7 us, 1.6x a plain
    `get()`. This does what `Queue.get` does with one `poll(2)` on the
    queue's pipe instead. It gives up at once (None) when another reader
    holds the queue's read lock or the pipe is empty, so a caller's timeout
    and `close()` keep working with several readers (a plain `get()` after
    `qsize() > 0` could lose that race and wait forever). It relies on the
    queue's private `_rlock`, `_reader` and `_sem`, unchanged since Python 3.4;
    `for_queue` declines (False) where they or `select.poll` are missing.
    """

    def __init__(self, q: Any) -> None:
        self._lock = q._rlock
        self._reader = q._reader
        self._sem = q._sem
        self._poller = select.poll()
        self._poller.register(q._reader.fileno(), select.POLLIN)

    @classmethod
    def for_queue(cls, q: Any) -> _ReadyReader | Literal[False]:
        try:
            return cls(q)
        except (AttributeError, OSError, TypeError, ValueError):
            return False

    def take(self) -> Any:
        if not self._lock.acquire(False):
            return None
        try:
            if not self._poller.poll(0):
                return None
            data = self._reader.recv_bytes()
            self._sem.release()
        finally:
            self._lock.release()
        return ForkingPickler.loads(data)


class QueueSubscriber:
    """Subscriber reading messages from one queue.

    Args:
        queue: The queue to read.
        block: Wait for a message when the queue is empty.
        timeout: Seconds iteration waits for a message at most (None:
            forever); expiry raises `StreamTimeoutError`.
    """

    def __init__(
        self,
        queue: AnyQueue,
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        self._queue = queue
        self._block = block
        self._timeout = timeout
        self._closed = False
        self._is_process_queue = isinstance(queue, multiprocessing.queues.Queue)
        self._ready_reader: _ReadyReader | Literal[False] | None = None

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive(self._timeout if self._block else 0)
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message, waiting `timeout` seconds at most.

        Raises:
            StreamTimeoutError: If no message arrived in time.
            SubscriberClosedError: If the subscriber is closed.
        """
        if not self._closed:
            ready = self._take_ready()
            if ready is not None:
                return ready
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            wait = SLICE_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            try:
                if wait <= 0:
                    return self._queue.get_nowait()  # type: ignore[no-any-return]
                return self._queue.get(timeout=wait)  # type: ignore[no-any-return]
            except queue_module.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise StreamTimeoutError(
                        f"No message within {timeout} s",
                    ) from None
        raise SubscriberClosedError("QueueSubscriber is closed")

    def _take_ready(self) -> bytes | None:
        if self._is_process_queue:
            if self._ready_reader is None:
                self._ready_reader = _ReadyReader.for_queue(self._queue)
            return self._ready_reader.take() if self._ready_reader else None
        try:
            return self._queue.get_nowait()  # type: ignore[no-any-return]
        except queue_module.Empty:
            return None

    def close(self) -> None:
        """Close this subscriber; a blocked receive ends within 0.1 s."""
        self._closed = True

    def __getstate__(self) -> dict[str, Any]:
        # The ready reader polls this process's pipe; a copy sent to another
        # process makes its own.
        state = self.__dict__.copy()
        state["_ready_reader"] = None
        return state


class AsyncQueuePublisher:
    """Async twin of `QueuePublisher`.

    A put that must wait for room runs in a worker thread.
    """

    def __init__(
        self,
        queues: Mapping[str, AnyQueue],
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        self._sync = QueuePublisher(queues, block=block, timeout=timeout)
        self._queues = self._sync._queues

    async def send(self, topic: str, message: bytes) -> None:
        """Put a message on the topic's queue (see `QueuePublisher.send`)."""
        if self._sync._closed:
            raise PublisherClosedError("AsyncQueuePublisher is closed")
        if type(message) is not bytes or type(topic) is not str:
            message = _check_send(topic, message)
        try:
            _queue_for(self._queues, topic).put_nowait(message)
        except queue_module.Full:
            await asyncio.to_thread(self._sync.send, topic, message)

    async def close(self) -> None:
        """Close this publisher (idempotent)."""
        self._sync.close()


class AsyncQueueSubscriber:
    """Async twin of `QueueSubscriber`.

    A ready message is taken without leaving the event loop; waiting for one
    happens in a worker thread (the queues have no async API).
    """

    def __init__(
        self,
        queue: AnyQueue,
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        self._sync = QueueSubscriber(queue, block=block, timeout=timeout)
        self._offloaded: OffloadedReceive[bytes] = OffloadedReceive(self._sync.receive)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        timeout = self._sync._timeout if self._sync._block else 0
        while True:
            try:
                yield await self.receive(timeout)
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `QueueSubscriber.receive`)."""
        if self._sync._closed:
            raise SubscriberClosedError("AsyncQueueSubscriber is closed")
        if not self._offloaded.busy:
            try:
                return self._sync._queue.get_nowait()  # type: ignore[no-any-return]
            except queue_module.Empty:
                pass
        return await self._offloaded(timeout)

    async def close(self) -> None:
        """Close this subscriber."""
        self._sync.close()
