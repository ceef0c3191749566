"""Bench targets that need no broker: ``queue`` and ``local``.

- ``queue``: our `QueuePublisher`/`QueueSubscriber` over a
  `multiprocessing.Queue`; the bare client is the same kind of queue used
  directly (`put`/`get`).
- ``local``: our `LocalBroker` shim (in-process fan-out); the bare client is a
  `queue.Queue` between threads.

Both also provide `open_async_endpoints` with the shims' async twins.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from typing import Any

from proxystore_stream.cli.targets import BareClient
from proxystore_stream.shims.queue import AsyncQueuePublisher
from proxystore_stream.shims.queue import AsyncQueueSubscriber
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber

__all__ = ["BARE_LABELS", "open_async_endpoints", "open_bare", "open_endpoints"]

NAMES = ("queue", "local")
BARE_LABELS = {
    "queue": "bare mp.Queue",
    "local": "bare queue.Queue",
}
"""How the bench table names each bare client."""


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"name must be one of {list(NAMES)}, not {name!r}")


def _release(q: Any) -> None:
    # A multiprocessing queue owns a pipe and a feeder thread; let the
    # process exit without waiting for unread messages.
    q.cancel_join_thread()
    q.close()


class _OwningQueueSubscriber(QueueSubscriber):
    """QueueSubscriber that also releases the queue the target made."""

    def close(self) -> None:
        """Close the subscriber and its queue."""
        super().close()
        _release(self._queue)


class _OwningAsyncQueueSubscriber(AsyncQueueSubscriber):
    """AsyncQueueSubscriber that also releases the queue the target made."""

    async def close(self) -> None:
        """Close the subscriber and its queue."""
        await super().close()
        _release(self._sync._queue)


def _local_module() -> Any:
    # Imported only when chosen: the local shim is optional for `queue` users.
    from proxystore_stream.shims import local

    return local


def open_endpoints(name: str, topic: str) -> tuple[Any, Any]:
    """Return our publisher and a subscriber ready to receive `topic`.

    Args:
        name: ``"queue"`` or ``"local"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not served here.
    """
    _check(name)
    if name == "queue":
        q: Any = multiprocessing.Queue()
        return QueuePublisher({topic: q}), _OwningQueueSubscriber(q)
    local = _local_module()
    broker = local.LocalBroker()
    return local.LocalPublisher(broker), local.LocalSubscriber(broker, [topic])


def open_async_endpoints(name: str, topic: str) -> tuple[Any, Any]:
    """Return the async twins of `open_endpoints`.

    Args:
        name: ``"queue"`` or ``"local"``.
        topic: Topic to send and receive on.

    Raises:
        ValueError: If `name` is not served here.
        NotImplementedError: If the local shim has no async twins.
    """
    _check(name)
    if name == "queue":
        q: Any = multiprocessing.Queue()
        return AsyncQueuePublisher({topic: q}), _OwningAsyncQueueSubscriber(q)
    local = _local_module()
    publisher_cls = getattr(local, "AsyncLocalPublisher", None)
    subscriber_cls = getattr(local, "AsyncLocalSubscriber", None)
    if publisher_cls is None or subscriber_cls is None:
        raise NotImplementedError(
            "proxystore_stream.shims.local has no AsyncLocalPublisher/"
            "AsyncLocalSubscriber, so `bench --async --shim local` cannot run",
        )
    broker = local.LocalBroker()
    return publisher_cls(broker), subscriber_cls(broker, [topic])


class _BareMultiprocessingQueue:
    """A raw `multiprocessing.Queue`: `put` and blocking `get`."""

    def __init__(self) -> None:
        self._queue: Any = multiprocessing.Queue()

    def send(self, message: bytes) -> None:
        self._queue.put(message)

    def flush(self) -> None:
        """Nothing to flush: the feeder thread writes on its own."""

    def receive(self) -> bytes:
        return self._queue.get()  # type: ignore[no-any-return]

    def close(self) -> None:
        _release(self._queue)


class _BareThreadQueue:
    """A raw `queue.Queue` between threads."""

    def __init__(self) -> None:
        self._queue: queue_module.Queue[bytes] = queue_module.Queue()

    def send(self, message: bytes) -> None:
        self._queue.put(message)

    def flush(self) -> None:
        """Nothing to flush."""

    def receive(self) -> bytes:
        return self._queue.get()

    def close(self) -> None:
        """Nothing to release."""


def open_bare(name: str, topic: str) -> BareClient:
    """Return the bare transport for `name`, ready to receive.

    Args:
        name: ``"queue"`` (a `multiprocessing.Queue`) or ``"local"`` (a
            `queue.Queue`).
        topic: Unused; each bare client is its own channel.

    Raises:
        ValueError: If `name` is not served here.
    """
    _check(name)
    if name == "queue":
        return _BareMultiprocessingQueue()
    return _BareThreadQueue()
