"""Adapters between the sync and async protocols, so any shim works in both worlds.

- `ThreadedAsyncPublisher` / `ThreadedAsyncSubscriber`: a sync shim used from
  asyncio. Blocking calls run in one worker thread per endpoint (order kept).
- `BlockingPublisher` / `BlockingSubscriber`: an async shim used from sync
  code. Calls run on a private event loop in a background thread (the way
  anyio's BlockingPortal works).

Our own shims have native twins; use these for third-party shims.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator
from collections.abc import Coroutine
from collections.abc import Iterator
from typing import Any
from typing import TypeVar

from proxystore_stream._offload import OffloadedReceive
from proxystore_stream.exceptions import SubscriberClosedError
from proxystore_stream.protocols import AsyncPublisher
from proxystore_stream.protocols import AsyncSubscriber
from proxystore_stream.protocols import Publisher
from proxystore_stream.protocols import Subscriber

__all__ = [
    "BlockingPublisher",
    "BlockingSubscriber",
    "ThreadedAsyncPublisher",
    "ThreadedAsyncSubscriber",
]

R = TypeVar("R")


class ThreadedAsyncPublisher:
    """Use a sync `Publisher` through the async protocol.

    Args:
        publisher: The sync publisher; it is only ever called from one
            worker thread, in order.
    """

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="pss-publisher",
        )

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def send(self, topic: str, message: bytes) -> None:
        """Send through the sync publisher in the worker thread."""
        await self._call(self.publisher.send, topic, message)

    async def flush(self) -> None:
        """Flush the sync publisher, if it can."""
        flush = getattr(self.publisher, "flush", None)
        if flush is not None:
            await self._call(flush)

    async def close(self) -> None:
        """Close the sync publisher and the worker thread (idempotent)."""
        await self._call(self.publisher.close)
        self._worker.shutdown(wait=False)


class ThreadedAsyncSubscriber:
    """Use a sync `Subscriber` through the async protocol.

    The subscriber needs `receive(timeout)` (every shim here has it); the
    wait runs in a worker thread in short slices, and a cancelled receive
    loses no message.
    """

    def __init__(self, subscriber: Subscriber) -> None:
        receive = getattr(subscriber, "receive", None)
        if receive is None:
            raise TypeError("ThreadedAsyncSubscriber needs a subscriber with receive(timeout)")
        self.subscriber = subscriber
        self._receive: OffloadedReceive[bytes] = OffloadedReceive(receive)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield await self.receive()
            except SubscriberClosedError:
                return

    async def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `ReceivingSubscriber.receive`)."""
        return await self._receive(timeout)

    async def ack(self) -> None:
        """Acknowledge handed-over messages, if the subscriber can."""
        ack = getattr(self.subscriber, "ack", None)
        if ack is not None:
            await asyncio.to_thread(ack)

    async def close(self) -> None:
        """Close the sync subscriber."""
        self.subscriber.close()


class _LoopThread:
    """A private event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever,
            name="pss-blocking-portal",
            daemon=True,
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class BlockingPublisher:
    """Use an async publisher through the sync protocol.

    Args:
        factory: Builds the async publisher; called on the private loop, so
            clients that bind to the running loop at construction work.
    """

    def __init__(self, factory: Any) -> None:
        self._portal = _LoopThread()
        self.publisher: AsyncPublisher = self._portal.run(_build(factory))
        self._closed = False

    def send(self, topic: str, message: bytes) -> None:
        """Send and wait until the async publisher has taken the message."""
        self._portal.run(self.publisher.send(topic, message))

    def flush(self) -> None:
        """Flush the async publisher, if it can."""
        flush = getattr(self.publisher, "flush", None)
        if flush is not None:
            self._portal.run(flush())

    def close(self) -> None:
        """Close the async publisher and stop the private loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._portal.run(self.publisher.close())
        self._portal.stop()


class BlockingSubscriber:
    """Use an async subscriber through the sync protocol.

    Args:
        factory: Builds the async subscriber (called on the private loop).
    """

    def __init__(self, factory: Any) -> None:
        self._portal = _LoopThread()
        self.subscriber: AsyncSubscriber = self._portal.run(_build(factory))
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        """Yield messages until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except SubscriberClosedError:
                return

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the next message (see `ReceivingSubscriber.receive`)."""
        if self._closed:
            raise SubscriberClosedError("BlockingSubscriber is closed")
        receive = getattr(self.subscriber, "receive", None)
        if receive is None:
            raise TypeError("BlockingSubscriber needs an async subscriber with receive()")
        return self._portal.run(receive(timeout))  # type: ignore[no-any-return]

    def ack(self) -> None:
        """Acknowledge handed-over messages, if the subscriber can."""
        ack = getattr(self.subscriber, "ack", None)
        if ack is not None:
            self._portal.run(ack())

    def close(self) -> None:
        """Close the async subscriber and stop the private loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._portal.run(self.subscriber.close())
        self._portal.stop()


async def _build(factory: Any) -> Any:
    made = factory()
    if asyncio.iscoroutine(made):
        made = await made
    return made
