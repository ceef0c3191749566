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
import errno
import math
import multiprocessing.queues
import os
import queue as queue_module
import select
import struct
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from multiprocessing.reduction import ForkingPickler
from typing import Any
from typing import Literal
from typing import TypeAlias

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

from proxystore_stream._fair import FairShare
from proxystore_stream._offload import SLICE_SECONDS
from proxystore_stream._offload import OffloadedReceive
from proxystore_stream._readable import wait_readable
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


_NOTHING: Any = object()
"""What `_PipeReader.take` returns when no message came in time."""


class _PipeReader:
    """Reads a `multiprocessing.Queue`'s pipe directly, with the queue's own framing.

    The queue's own `get(timeout=...)` and `get_nowait()` build a selector
    per call (`multiprocessing.connection.wait`): about 7 us, 1.6x a plain
    `get()`. A timed `get` is what a subscriber needs (to notice `close()`),
    so this does what `Queue.get` does, without the selector:

    - The 4-byte length header is read with `RWF_NOWAIT` (Linux 5.8+), which
      returns at once when the pipe is empty: one system call both asks "is
      a message there?" and starts reading it. Where the kernel or platform
      lacks it, a `select.poll` object made once answers the question.
    - Only then does it wait, for at most `wait` seconds (`poll`).
    - The body is read straight into its own buffer (the queue's reader
      copies it through a `BytesIO` first).

    Like `Queue.get` it holds the queue's read lock while it reads, so
    several readers (threads or processes, ours or plain `get`) each get
    whole messages. It relies on the queue's private `_rlock`, `_reader`
    and `_sem` and on the connection's framing (a signed 4-byte big-endian
    length, -1 followed by an 8-byte length for 2 GiB and more), unchanged
    since Python 3.8; `for_queue` declines (False) where they are missing.
    """

    def __init__(self, q: Any) -> None:
        self._lock = q._rlock
        self._sem = q._sem
        self.fileno: int = q._reader.fileno()
        """The pipe's file descriptor (readable when a message is there)."""
        self._poller = select.poll()
        self._poller.register(self.fileno, select.POLLIN)
        self._header = bytearray(4)
        self._header_view = [memoryview(self._header)]
        self._nowait = _NOWAIT_READS
        self._grown = False

    @classmethod
    def for_queue(cls, q: Any) -> _PipeReader | Literal[False]:
        try:
            return cls(q)
        except (AttributeError, OSError, TypeError, ValueError):
            return False

    def take(self, wait: float = 0.0) -> Any:
        """Return the next message, or `_NOTHING` if none came within `wait` seconds."""
        if wait <= 0:
            if not self._lock.acquire(False):
                return _NOTHING
        else:
            deadline = time.monotonic() + wait
            if not self._lock.acquire(True, wait):
                return _NOTHING
        try:
            if not self._header_ready():
                if wait <= 0:
                    return _NOTHING
                milliseconds = max(0, math.ceil((deadline - time.monotonic()) * 1000))
                if not self._poller.poll(milliseconds):
                    return _NOTHING
                self._read_into(memoryview(self._header))
            data = self._read_body()
            self._sem.release()
        finally:
            self._lock.release()
        return ForkingPickler.loads(data)

    def _header_ready(self) -> bool:
        """Read the length header if it is there now; False if the pipe is empty."""
        if self._nowait:
            try:
                got = os.preadv(self.fileno, self._header_view, -1, _RWF_NOWAIT)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                self._nowait = False  # an older kernel: poll first from now on
            else:
                if got == 0:
                    raise EOFError("the queue's pipe was closed")
                if got < 4:
                    self._read_into(memoryview(self._header)[got:])
                return True
        if not self._poller.poll(0):
            return False
        self._read_into(memoryview(self._header))
        return True

    def _read_body(self) -> bytes | bytearray:
        (size,) = _LENGTH.unpack(self._header)
        if size == -1:
            wide = bytearray(8)
            self._read_into(memoryview(wide))
            (size,) = _WIDE_LENGTH.unpack(wide)
        if size > GROW_FROM and not self._grown:
            self._grown = True
            grow_pipe(self.fileno)
        if size <= _SMALL_BODY:
            data = os.read(self.fileno, size)
            if len(data) == size:
                return data
            body = bytearray(size)
            body[: len(data)] = data
            self._read_into(memoryview(body)[len(data) :])
            return body
        body = bytearray(size)
        self._read_into(memoryview(body))
        return body

    def _read_into(self, view: memoryview) -> None:
        """Fill `view` from the pipe (blocking: the writer sends whole frames)."""
        while view.nbytes:
            got = os.readv(self.fileno, [view])
            if got == 0:
                raise EOFError("the queue's pipe was closed")
            view = view[got:]


_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_NOWAIT_READS = bool(_RWF_NOWAIT) and hasattr(os, "preadv")
_LENGTH = struct.Struct("!i")
_WIDE_LENGTH = struct.Struct("!Q")
_SMALL_BODY = 64 * 1024
"""Bodies up to this size are read with one `os.read` (one allocation)."""

PIPE_CAPACITY = 1 << 20
"""What a subscriber asks its queue's pipe to hold once a larger message came."""

GROW_FROM = 4 * 1024
"""A body larger than this makes the subscriber grow its queue's pipe (once).

The default 64 KiB pipe holds fewer than 16 such messages, so the feeder
thread stalls every few messages until the reader catches up: at 10 KiB an
async subscriber (one event loop) then ran at 0.63-0.76 of the sync one's
rate, and at 0.94-0.96 with the larger pipe.
"""


def grow_pipe(fd: int) -> None:
    """Ask the kernel to let the pipe `fd` hold `PIPE_CAPACITY` bytes (Linux only).

    A message larger than the pipe crosses it in pipe-sized pieces, each one
    more wake-up of the writer (the queue's feeder thread) and the reader:
    Linux's default of 64 KiB took a 1 MiB message across in 17, and held
    only six 10 KiB messages before the feeder had to wait. 1 MiB is the
    most an unprivileged process may ask for (``pipe-max-size``). Only a
    queue that carries a message over `GROW_FROM` asks, once: the pages count against
    the user's pipe quota (``pipe-user-pages-soft``, 64 MiB), though the
    kernel fills them only as data arrives. Where the kernel refuses (the
    quota is spent) or cannot (not Linux), the pipe keeps its size.
    """
    if _SET_PIPE_SIZE is None:
        return
    try:
        if fcntl.fcntl(fd, _GET_PIPE_SIZE) < PIPE_CAPACITY:
            fcntl.fcntl(fd, _SET_PIPE_SIZE, PIPE_CAPACITY)
    except OSError:
        pass


_SET_PIPE_SIZE: int | None = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl else None
_GET_PIPE_SIZE: int = getattr(fcntl, "F_GETPIPE_SZ", 0) if fcntl else 0


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
        self._taker: Callable[[float], Any] | None = None
        self._pipe_fd: int | None = None

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
        if self._closed:
            raise SubscriberClosedError("QueueSubscriber is closed")
        take = self._taker or self._make_taker()
        message = take(0.0)
        if message is not _NOTHING:
            return message  # type: ignore[no-any-return]
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            wait = SLICE_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise StreamTimeoutError(f"No message within {timeout} s")
            message = take(wait)
            if message is not _NOTHING:
                return message  # type: ignore[no-any-return]
        raise SubscriberClosedError("QueueSubscriber is closed")

    def _make_taker(self) -> Callable[[float], Any]:
        """Make `take(wait)` for this subscriber's queue (on first use, in this process)."""
        reader = _PipeReader.for_queue(self._queue) if self._is_process_queue else False
        self._pipe_fd = reader.fileno if reader else None
        self._taker = reader.take if reader else self._take_from_queue
        return self._taker

    def _take_from_queue(self, wait: float) -> Any:
        try:
            if wait <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=wait)
        except queue_module.Empty:
            return _NOTHING

    def close(self) -> None:
        """Close this subscriber; a blocked receive ends within 0.1 s."""
        self._closed = True

    def __getstate__(self) -> dict[str, Any]:
        # The pipe reader polls this process's pipe; a copy sent to another
        # process makes its own.
        state = self.__dict__.copy()
        state["_taker"] = None
        state["_pipe_fd"] = None
        return state


class AsyncQueuePublisher:
    """Async twin of `QueuePublisher`.

    A put that must wait for room runs in a worker thread. Puts that do not
    wait yield to the event loop now and then (`FairShare`), so a sending
    task does not starve the tasks that read.
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
        self._fair = FairShare()

    async def send(self, topic: str, message: bytes) -> None:
        """Put a message on the topic's queue (see `QueuePublisher.send`)."""
        if self._sync._closed:
            raise PublisherClosedError("AsyncQueuePublisher is closed")
        if type(message) is not bytes or type(topic) is not str:
            message = _check_send(topic, message)
        queue = _queue_for(self._queues, topic)
        if self._fair.due(len(message)):
            await asyncio.sleep(0)
            if self._sync._closed:
                raise PublisherClosedError("AsyncQueuePublisher is closed")
        try:
            queue.put_nowait(message)
        except queue_module.Full:
            await asyncio.to_thread(self._sync.send, topic, message)

    async def close(self) -> None:
        """Close this publisher (idempotent)."""
        self._sync.close()


class AsyncQueueSubscriber:
    """Async twin of `QueueSubscriber`.

    A ready message is taken without leaving the event loop. Waiting for one
    on a `multiprocessing.Queue` waits for its pipe to become readable on
    the event loop (`loop.add_reader`; the subscribers of one queue on one
    loop share that registration, so each wakes when a message comes); a
    `queue.Queue` (no file to wait on) is waited for in a worker thread.
    Either way a cancelled `receive` loses no message: a message is only
    taken off the queue by code that runs without awaiting.
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

    def receive_ready(self) -> bytes | None:
        """Return a message that is already queued, or None (never waits)."""
        sync = self._sync
        if sync._closed or self._offloaded.busy:
            return None  # a cancelled call's message comes first, through receive
        take = sync._taker or sync._make_taker()
        message = take(0.0)
        return None if message is _NOTHING else message

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `QueueSubscriber.receive`)."""
        sync = self._sync
        if sync._closed:
            raise SubscriberClosedError("AsyncQueueSubscriber is closed")
        message = self.receive_ready()
        if message is not None:
            return message
        if not self._offloaded.busy and sync._pipe_fd is not None and sync._taker:
            return await self._wait_on_pipe(sync._pipe_fd, sync._taker, timeout)
        return await self._offloaded(timeout)

    async def _wait_on_pipe(
        self,
        fd: int,
        take: Callable[[float], Any],
        timeout: float | None,
    ) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._sync._closed:
            wait = SLICE_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    raise StreamTimeoutError(f"No message within {timeout} s")
            try:
                await wait_readable(fd, wait)
            except NotImplementedError:  # an event loop without add_reader
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                return await self._offloaded(remaining)
            # Another reader may have taken it first: then wait again.
            message = take(0.0)
            if message is not _NOTHING:
                return message  # type: ignore[no-any-return]
        raise SubscriberClosedError("AsyncQueueSubscriber is closed")

    async def close(self) -> None:
        """Close this subscriber."""
        self._sync.close()
