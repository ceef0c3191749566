"""Conformance cases for the in-process queue shim."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from proxystore_stream.shims.queue import AsyncQueuePublisher
from proxystore_stream.shims.queue import AsyncQueueSubscriber
from proxystore_stream.shims.queue import QueuePublisher
from proxystore_stream.shims.queue import QueueSubscriber
from tests.shims.cases import ShimCase


class OnDemandQueues(Mapping[str, Any]):
    """Topic -> queue, creating a queue the first time a topic is used."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._queues: dict[str, Any] = {}

    def __getitem__(self, topic: str) -> Any:
        if topic not in self._queues:
            self._queues[topic] = self._make()
        return self._queues[topic]

    def bind(self, topics: Sequence[str]) -> Any:
        """Route every topic in `topics` to one queue and return it."""
        shared = self[topics[0]]
        for topic in topics[1:]:
            self._queues[topic] = shared
        return shared

    def __iter__(self) -> Iterator[str]:
        return iter(self._queues)

    def __len__(self) -> int:
        return len(self._queues)


class QueueFactory:
    def __init__(self, make: Callable[[], Any]) -> None:
        self.queues = OnDemandQueues(make)

    def publisher(self) -> QueuePublisher:
        return QueuePublisher(self.queues)

    def subscriber(self, topics: Sequence[str]) -> QueueSubscriber:
        return QueueSubscriber(self.queues.bind(topics))

    async def async_publisher(self) -> AsyncQueuePublisher:
        return AsyncQueuePublisher(self.queues)

    async def async_subscriber(self, topics: Sequence[str]) -> AsyncQueueSubscriber:
        return AsyncQueueSubscriber(self.queues.bind(topics))

    def close(self) -> None:
        for q in self.queues._queues.values():
            if hasattr(q, "cancel_join_thread"):
                q.close()
                q.cancel_join_thread()


CASES = [
    ShimCase(
        name="queue",
        make=lambda: QueueFactory(queue.Queue),
        fanout=False,
        persistent=True,
    ),
    ShimCase(
        name="mp-queue",
        make=lambda: QueueFactory(multiprocessing.Queue),
        fanout=False,
        persistent=True,
    ),
]
